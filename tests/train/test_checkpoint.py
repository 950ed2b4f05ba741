"""Checkpoint contents, retention, torn saves, encoder restore and export."""
import copy
import logging
import os

import grain
import jax
import numpy as np
import pytest

from dwm_jax.config import base_config
from dwm_jax.evaluate.encoder import load_encoder
from dwm_jax.train import checkpoint as ckpt
from dwm_jax.evaluate import export
from dwm_jax.train import setup as setup_lib
from dwm_jax.train.state import create_train_state

from .conftest import assert_same_tree, persistent_cache, tiny_config


@pytest.fixture(scope="module")
def host_state(cache_dir):
  """A real (tiny, M2D) train state on the host, perturbed so no leaf is trivially zero."""
  config = tiny_config()
  with persistent_cache(cache_dir):
    setup = setup_lib.build(config, dataset_size=32)
    state = jax.device_get(jax.jit(lambda k: create_train_state(setup, k))(jax.random.key(0)))
  leaves, tree = jax.tree.flatten(state)
  rng = np.random.default_rng(0)
  leaves = [(x + rng.normal(size=x.shape)).astype(x.dtype) if x.dtype.kind == "f" else x + 3
            for x in leaves]
  return config, jax.tree.unflatten(tree, leaves)


def _iterator():
  return iter(grain.MapDataset.range(1000).shuffle(seed=3).batch(4).to_iter_dataset())


def test_save_restore_roundtrip_state_rng_and_data_position(host_state, tmp_path):
  config, state = host_state
  manager = ckpt.make_manager(str(tmp_path), config.checkpoint)
  it = _iterator()
  for _ in range(5):
    next(it)
  ckpt.save(manager, 5, state=state, rng=jax.random.key(42), data_iter=it, config=config)
  expected_next = [next(it) for _ in range(3)]  # the iterator moves on while the save finishes
  manager.wait_until_finished()
  manager.close()

  manager = ckpt.make_manager(str(tmp_path), config.checkpoint)
  assert manager.latest_step() == 5
  fresh = _iterator()
  template = jax.tree.map(np.zeros_like, state)
  restored, rng = ckpt.restore(manager, 5, state_template=template, data_iter=fresh)
  assert type(restored) is type(state)
  assert_same_tree(restored, state)
  assert np.array_equal(jax.random.key_data(rng), jax.random.key_data(jax.random.key(42)))
  for want in expected_next:
    np.testing.assert_array_equal(next(fresh), want)
  assert ckpt.config_diff(ckpt.saved_config(manager, 5), config) == []
  manager.close()


def test_keeps_last_k_and_every_period(host_state, tmp_path):
  config, state = host_state
  config = copy.deepcopy(config)
  config.checkpoint.keep = 2
  config.checkpoint.keep_period = 4
  manager = ckpt.make_manager(str(tmp_path), config.checkpoint)
  for step in range(1, 10):
    ckpt.save(manager, step, state=state, rng=jax.random.key(0), data_iter=None, config=config)
  manager.wait_until_finished()
  assert list(manager.all_steps()) == [4, 8, 9]
  manager.close()


def test_config_diff_names_changed_fields():
  a, b = base_config(), base_config()
  b.mask.ratio = 0.6
  b.model.input_shape = (80, 208)
  assert ckpt.config_diff(a, b) == ["mask.ratio: 0.7 -> 0.6",
                                    "model.input_shape: [80, 608] -> [80, 208]"]


def test_restore_encoder_and_export(host_state, tmp_path):
  config, state = host_state
  workdir = str(tmp_path / "run")
  manager = ckpt.make_manager(workdir, config.checkpoint)
  ckpt.save(manager, 3, state=state, rng=jax.random.key(0), data_iter=None, config=config)
  manager.wait_until_finished()
  manager.close()

  saved_config, params = ckpt.restore_encoder(workdir)
  assert tuple(saved_config.model.input_shape) == (80, 64)
  assert_same_tree(params, state.params["encoder"])

  out = str(tmp_path / "encoder.msgpack")
  assert export.main(["--workdir", workdir, "--out", out]) == 0
  encoder = load_encoder(out)
  assert_same_tree(jax.tree.map(np.asarray, encoder.params), state.params["encoder"])
  assert (encoder.norm_mean, encoder.norm_std) == (config.data.norm_mean, config.data.norm_std)
  assert tuple(encoder.model_cfg.input_shape) == (80, 64)
  # A workdir loads the same encoder as its export.
  assert_same_tree(jax.tree.map(np.asarray, load_encoder(workdir).params), params)


def test_export_of_a_folder_without_checkpoints_fails_clearly(tmp_path, capsys):
  assert export.main(["--workdir", str(tmp_path), "--out", str(tmp_path / "e.msgpack")]) == 2
  assert "no checkpoints" in capsys.readouterr().err
  os.makedirs(tmp_path / "checkpoints")
  with pytest.raises(FileNotFoundError, match="no finished checkpoint"):
    ckpt.restore_encoder(str(tmp_path))


def test_late_reports_of_reported_failed_reads_are_dropped(tmp_path, caplog):
  # Orbax leaves read tasks behind when a restore fails; asyncio logs each one, with a traceback,
  # whenever the garbage collector finds it (seen in the middle of a later run). Reads of a
  # checkpoint whose failure was already reported are dropped; anything else is kept.
  workdir = str(tmp_path / "run")
  ckpt._quiet_cancelled_reads()
  ckpt._reported(workdir, 8)
  asyncio_log = logging.getLogger("asyncio")

  def late_report(path):
    error = ValueError(f'OUT_OF_RANGE: Error opening "zarr" driver: local file "{path}/state/"')
    asyncio_log.error("Task exception was never retrieved\nfuture: <Task finished exception=%r>",
                      error, exc_info=(ValueError, error, None))

  with caplog.at_level("WARNING"):
    late_report(os.path.join(workdir, "checkpoints", "8"))
    late_report(os.path.join(workdir, "checkpoints", "6"))   # not reported: kept
    asyncio_log.error("something else went wrong")             # kept
  kept = [r.getMessage() for r in caplog.records if r.name == "asyncio"]
  assert len(kept) == 2 and "checkpoints/6" in kept[0] and kept[1] == "something else went wrong"


class _FakeClock:
  def __init__(self):
    self.now = 0.0

  def __call__(self) -> float:
    return self.now


def test_save_clock_is_due_every_minutes_since_the_last_save():
  clock = _FakeClock()
  every = ckpt.SaveClock(2.0, clock=clock)
  clock.now = 119.0
  assert not every.due()
  clock.now = 120.0
  assert every.due()
  every.saved()  # any save restarts the interval
  clock.now = 200.0
  assert not every.due()
  clock.now = 1e6
  assert not ckpt.SaveClock(0.0, clock=clock).due()  # 0: off


@pytest.mark.slow
@pytest.mark.usefixtures("compile_cache")
def test_time_based_checkpoints_resume_exactly(reference_run, tmp_path, monkeypatch):
  """Step-based saves off (every 1000 steps), a save every minute of a clock that advances 25 s
  per step: a save at step 4. Stopped after step 5, the rerun (its clock starting with the
  launch, 40 s per step) resumes from the time-based checkpoint 4, saves 7 (and the end) and
  ends with the uninterrupted run's parameters."""
  from dwm_jax.train import loop  # pylint: disable=import-outside-toplevel
  from .conftest import saved_state  # pylint: disable=import-outside-toplevel
  clock = _FakeClock()
  real = ckpt.SaveClock
  monkeypatch.setattr(ckpt, "SaveClock", lambda minutes: real(minutes, clock=clock))
  config = tiny_config()
  config.checkpoint.every_steps, config.checkpoint.every_minutes = 1000, 1.0

  class Stop(Exception):
    pass

  def hook(done):
    clock.now += 25.0
    if done == 5:
      raise Stop

  workdir = str(tmp_path)
  with pytest.raises(Stop):
    loop.train(config, workdir, on_step=hook)
  assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == ["4"]
  summary = loop.train(config, workdir, on_step=lambda done: setattr(
      clock, "now", clock.now + 40.0))
  assert summary["resumed_from"] == 4 and summary["step"] == 8
  assert summary["launch"]["steps_repeated"] == 1  # step 5 was logged, then lost
  assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == ["4", "7", "8"]
  assert_same_tree(saved_state(workdir)[1], reference_run[1])


_CLOCK_WORKER = """
import sys
from dwm_jax import distributed
pid, port = int(sys.argv[1]), sys.argv[2]
distributed.initialize(distributed.resolve(f"localhost:{port}", 2, pid))
from dwm_jax.train import checkpoint as ckpt
for due_on in (0, 1):  # only this process's clock says a save is due
  now = [0.0]
  clock = ckpt.SaveClock(1.0, clock=lambda: now[0])
  now[0] = 61.0 if pid == due_on else 0.0
  print("DUE", due_on, clock.due(), flush=True)
"""


@pytest.mark.slow
def test_every_process_takes_process_0s_decision():
  import socket  # pylint: disable=import-outside-toplevel
  import subprocess  # pylint: disable=import-outside-toplevel
  import sys  # pylint: disable=import-outside-toplevel
  with socket.socket() as s:
    s.bind(("localhost", 0))
    port = s.getsockname()[1]
  env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=1"}
  procs = [subprocess.Popen([sys.executable, "-c", _CLOCK_WORKER, str(i), str(port)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
           for i in range(2)]
  outs = [p.communicate(timeout=300)[0] for p in procs]
  assert all(p.returncode == 0 for p in procs), outs
  for out in outs:
    assert [line for line in out.splitlines() if line.startswith("DUE ")] == [
        "DUE 0 True", "DUE 1 False"]
