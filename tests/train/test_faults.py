"""Faults a long launch meets: damaged checkpoints, a full disk, a dying data worker, kill -9 at
random points. Each ends with the last good state resumed exactly, or one clear message."""
import errno
import glob
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap

import numpy as np
import orbax.checkpoint as ocp
import psutil
import pytest

from dwm_jax import main as main_lib
from dwm_jax.evaluate import export
from dwm_jax.evaluate.encoder import load_encoder
from dwm_jax.train import checkpoint as ckpt
from dwm_jax.train import loop

from .conftest import REPO, TINY, assert_same_tree, saved_state, tiny_config, truncate_arrays

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("compile_cache")]


def copy_run(reference_run, tmp_path) -> str:
  ref_dir, _ = reference_run
  workdir = str(tmp_path / "run")
  shutil.copytree(ref_dir, workdir)
  return workdir


def steps_of(workdir):
  return sorted(int(os.path.basename(p)) for p in glob.glob(os.path.join(workdir, "checkpoints",
                                                                         "*"))
                if os.path.basename(p).isdigit())


def test_damaged_latest_checkpoint_falls_back_and_resumes_exactly(reference_run, tmp_path,
                                                                  caplog):
  _, reference = reference_run
  workdir = copy_run(reference_run, tmp_path)
  truncate_arrays(workdir, 8)
  truncate_arrays(workdir, 6)
  with caplog.at_level("WARNING"):
    summary = loop.train(tiny_config(), workdir)
  assert summary["resumed_from"] == 4 and summary["step"] == 8
  assert_same_tree(saved_state(workdir)[1], reference)  # same as the undamaged run
  moved = sorted(os.listdir(os.path.join(workdir, ckpt.DAMAGED_DIR)))
  assert [m.split("-")[0] for m in moved] == ["6", "8"]  # renamed aside, not deleted
  lines = [r.getMessage() for r in caplog.records if "does not restore" in r.getMessage()]
  assert len(lines) == 2 and "checkpoint 8 at" in lines[0] and "OUT_OF_RANGE" in lines[0]
  assert "\n" not in lines[0]


def test_no_readable_checkpoint_refuses_to_start(reference_run, tmp_path, capsys):
  workdir = copy_run(reference_run, tmp_path)
  for step in steps_of(workdir):
    truncate_arrays(workdir, step)
  for _ in range(2):  # and keeps refusing: the damaged ones are still there, set aside
    rc = main_lib.main(["--config", TINY, "--workdir", workdir])
    err = capsys.readouterr().err
    assert rc == 1 and "Traceback" not in err and "Event loop is closed" not in err
    last = err.strip().splitlines()[-1]
    assert last.startswith("dwm-jax pretrain: no readable checkpoint in ")
    assert "damaged_checkpoints" in last and "refusing to train over them" in last
    # The three newest names and a count, however many were set aside.
    names = sorted(os.listdir(os.path.join(workdir, ckpt.DAMAGED_DIR)))   # 2-*, 4-*, 6-*, 8-*
    assert all(n in last for n in names[1:]) and names[0] not in last and "and 1 more" in last
  assert steps_of(workdir) == [] and len(os.listdir(os.path.join(workdir, ckpt.DAMAGED_DIR))) == 4


def test_checkpoint_of_another_model_is_not_damage(reference_run, tmp_path, capsys):
  workdir = copy_run(reference_run, tmp_path)
  rc = main_lib.main(["--config", TINY, "--workdir", workdir, "--config.model.width=64"])
  err = capsys.readouterr().err
  assert rc == 2 and "holds another model or optimizer than this config builds" in err
  assert steps_of(workdir) == [2, 4, 6, 8] and not os.path.exists(
      os.path.join(workdir, ckpt.DAMAGED_DIR))


def test_readers_use_the_newest_readable_checkpoint(reference_run, tmp_path, caplog):
  workdir = copy_run(reference_run, tmp_path)
  _, at_6 = saved_state(workdir, 6)
  truncate_arrays(workdir, 8)
  with caplog.at_level("WARNING"):
    encoder = load_encoder(workdir)
  assert_same_tree(encoder.params, at_6["train"]["params"]["encoder"])
  assert any("using checkpoint 6" in r.getMessage() for r in caplog.records)
  out = str(tmp_path / "e.msgpack")
  assert export.main(["--workdir", workdir, "--out", out]) == 0
  assert_same_tree(load_encoder(out).params, at_6["train"]["params"]["encoder"])
  assert steps_of(workdir) == [2, 4, 6, 8]  # readers never move anything


def test_export_of_a_run_with_no_readable_checkpoint_is_one_short_line(reference_run, tmp_path,
                                                                      capsys):
  workdir = copy_run(reference_run, tmp_path)
  for step in steps_of(workdir):
    truncate_arrays(workdir, step)
  assert export.main(["--workdir", workdir, "--out", str(tmp_path / "e.msgpack")]) == 1
  err = capsys.readouterr().err
  last = err.strip().splitlines()[-1]
  assert "Traceback" not in err and "restores (4 tried; the newest, step 8: " in last
  assert "step 6:" not in last and len(last) < 800   # the others are in the log, one line each
  assert steps_of(workdir) == [2, 4, 6, 8]


def _fail_save_at(monkeypatch, step: int):
  real = ocp.CheckpointManager.save

  def save(self, s, *args, **kwargs):
    if s == step:
      raise OSError(errno.ENOSPC, "No space left on device", self.directory)
    return real(self, s, *args, **kwargs)

  monkeypatch.setattr(ocp.CheckpointManager, "save", save)


def test_failed_save_stops_with_a_message_and_keeps_the_last_checkpoint(reference_run, tmp_path,
                                                                        monkeypatch, capsys):
  _, reference = reference_run
  workdir = str(tmp_path / "run")
  _fail_save_at(monkeypatch, 6)
  rc = main_lib.main(["--config", TINY, "--workdir", workdir])
  err = capsys.readouterr().err
  assert rc == 1 and "Traceback" not in err
  last = err.strip().splitlines()[-1]
  assert last.startswith("dwm-jax pretrain: saving checkpoint 6 to ")
  assert "No space left on device" in last and "checkpoint 4 is intact" in last
  assert steps_of(workdir) == [2, 4]
  monkeypatch.undo()
  summary = loop.train(tiny_config(), workdir)
  assert summary["resumed_from"] == 4
  assert_same_tree(saved_state(workdir)[1], reference)


@pytest.fixture
def small_tmpfs(tmp_path):
  """A 1.5 MiB tmpfs (tests run as root); skipped where mounting is not allowed."""
  mount = tmp_path / "run" / "checkpoints"
  mount.mkdir(parents=True)
  proc = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1500k", "tmpfs", str(mount)],
                        capture_output=True, text=True)
  if proc.returncode:
    pytest.skip(f"cannot mount a tmpfs here: {proc.stderr.strip()}")
  yield mount
  subprocess.run(["umount", str(mount)], check=False)


def test_disk_full_on_a_real_small_file_system(reference_run, small_tmpfs, capsys):
  _, reference = reference_run
  workdir = str(small_tmpfs.parent)
  config = tiny_config()  # each checkpoint is about 0.5 MiB: the disk fills on the third save
  rc = main_lib.main(["--config", TINY, "--workdir", workdir])
  err = capsys.readouterr().err
  assert rc == 1 and "Traceback" not in err, err[-2000:]
  last = err.strip().splitlines()[-1]
  assert "No space left on device" in last and "is intact" in last, last
  kept = steps_of(workdir)
  assert kept and max(kept) < 8
  # The previous checkpoint restores; with room again the run resumes and ends exactly.
  subprocess.run(["mount", "-o", "remount,size=20m", str(small_tmpfs)], check=True)
  summary = loop.train(config, workdir)
  assert summary["resumed_from"] == max(kept) and summary["step"] == 8
  assert_same_tree(saved_state(workdir)[1], reference)


def _data_worker_pids() -> list[int]:
  return [p.pid for p in psutil.Process().children(recursive=True) if "python" in p.name()]


def test_dying_data_worker_saves_what_was_trained_and_resumes(reference_run, tmp_path):
  _, reference = reference_run
  config = tiny_config()
  config.data.num_workers = 1  # the same batches as in-process decoding, in a worker process

  def kill_worker(done):
    if done == 3:
      for pid in _data_worker_pids():
        os.kill(pid, signal.SIGKILL)

  workdir = str(tmp_path / "run")
  # grain reports the dead worker as its exit status or as the broken pipe to it.
  with pytest.raises(loop.DataPipelineError, match=r"input pipeline failed after step \d+ "
                     r"\((RuntimeError: Worker process was terminated|BrokenPipeError).*\); "
                     r"saved checkpoint \d+, rerun") as e:
    loop.train(config, workdir, on_step=kill_worker)
  failed_at = int(str(e.value).split("after step ")[1].split()[0])
  saved = max(steps_of(workdir))
  # The batches already buffered are trained on; the state at the failure is saved even off
  # the every-2-steps schedule.
  assert 3 <= failed_at < 8 and saved == failed_at
  summary = loop.train(config, workdir)
  assert summary["resumed_from"] == saved and summary["step"] == 8
  assert_same_tree(saved_state(workdir)[1], reference)


def test_kill_9_at_random_points_then_resume_matches_uninterrupted(reference_run, tmp_path):
  """SIGKILL from a timer at random moments after random steps: inside a step, inside an async
  save, between them. Every restart resumes; the last run ends with the reference state."""
  _, reference = reference_run
  workdir = str(tmp_path / "run")
  script = textwrap.dedent(f"""
      import json, os, signal, sys, threading
      sys.path.insert(0, {os.path.dirname(TINY)!r})
      import tiny
      from dwm_jax.train import loop
      kill_after, delay = int(sys.argv[1]), float(sys.argv[2])
      def hook(done):
        if done == kill_after:
          threading.Timer(delay, os.kill, (os.getpid(), signal.SIGKILL)).start()
      summary = loop.train(tiny.get_config(), {workdir!r}, on_step=hook)
      print("SUMMARY", json.dumps({{"step": summary["step"], "resumed_from": summary["resumed_from"]}}))
      """)
  rng = np.random.default_rng(0)

  def run(kill_after: int, delay: float) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", script, str(kill_after), str(delay)], cwd=REPO,
                          capture_output=True, text=True, timeout=300)

  killed = 0
  for attempt in range(5):
    start = max(steps_of(workdir), default=0)
    if start >= 7:
      break
    # Right after a save is dispatched (the async write in flight), or a random moment later.
    after = 2 if attempt == 0 else int(rng.integers(start + 1, 8))
    proc = run(after, 0.0 if attempt == 0 else float(rng.uniform(0.0, 0.05)))
    assert proc.returncode in (0, -signal.SIGKILL), proc.stderr[-3000:]
    killed += proc.returncode == -signal.SIGKILL
  assert killed >= 3
  proc = run(-1, 0.0)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert json.loads(proc.stdout.split("SUMMARY ")[-1])["step"] == 8
  assert_same_tree(saved_state(workdir)[1], reference)
  assert not glob.glob(os.path.join(workdir, "checkpoints", "*orbax-checkpoint-tmp*"))
