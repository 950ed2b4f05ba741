"""``gs://`` workdirs and data, against a real GCS-protocol server (fake-gcs-server, see
``dwm_jax/testing/gcs_server.py``): a run killed with SIGKILL on a bucket resumes exactly, its
logs and exports land in the bucket, a damaged checkpoint there is set aside, and bad buckets
fail first.

The data are ``.npy`` files that ``dwm-jax prepare`` made of ``dwm-jax synth`` WAVs, uploaded
with gcsfs; the local reference run reads the same files from disk.
"""
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
import uuid

import numpy as np
import pytest

from dwm_jax import main as main_lib
from dwm_jax import paths
from dwm_jax.data import prepare, synthetic
from dwm_jax.evaluate import export, probe_cli
from dwm_jax.evaluate.encoder import load_encoder
from dwm_jax.testing.tcp_proxy import LatencyProxy
from dwm_jax.train import checkpoint as ckpt
from dwm_jax.train import memory

from .conftest import REPO, TINY, assert_same_tree, persistent_cache, saved_state, tiny_config

pytestmark = [pytest.mark.slow]

_EMULATOR_DERIVED = ("TENSORSTORE_GCS_HTTP_URL", "EPATH_USE_TF",
                     "GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT", "NO_GCE_CHECK",
                     "GOOGLE_AUTH_TOKEN_FOR_TESTING")


def _fs():
  import gcsfs
  return gcsfs.GCSFileSystem(token="anon")  # STORAGE_EMULATOR_HOST: the test server


def _bucket(gcs, prefix: str) -> str:
  return gcs.make_bucket(f"{prefix}-{uuid.uuid4().hex[:8]}")


def _run_args(data: dict, workdir: str) -> list[str]:
  """``dwm-jax pretrain`` arguments of the tiny run on the prepared files ``data``."""
  return ["--config", TINY, "--workdir", workdir, "--config.data.source=npy",
          f"--config.data.csv={data['csv']}", f"--config.data.stats={data['stats']}",
          "--config.mask_png_every_steps=4"]


def _config(data: dict):
  """The config :func:`_run_args` makes, plus a profile of step 6, for in-process runs."""
  c = tiny_config()
  c.data.source, c.data.csv, c.data.stats = "npy", data["csv"], data["stats"]
  c.mask_png_every_steps = 4
  c.profile.start_step, c.profile.num_steps = 5, 1  # a trace of step 6 (changes no result)
  return c


@pytest.fixture(scope="module")
def data(gcs, tmp_path_factory):
  """32 synthetic 0.8 s clips as WAVs and as prepared .npy log-mels, on disk and in a bucket."""
  root = tmp_path_factory.mktemp("gcs_data")
  synthetic.write_dataset(root / "synth", 32, seed=0, seconds=0.8)
  report = prepare.prepare(root / "synth", root / "prepared", workers=0, progress=False)
  assert report["converted"] == 32
  bucket = _bucket(gcs, "data")
  fs = _fs()
  for folder in ("synth", "prepared"):
    fs.put(str(root / folder), f"{bucket[5:]}/{folder}", recursive=True)
  assert len(fs.glob(f"{bucket[5:]}/prepared/audio/*.npy")) == 32
  local = {"csv": str(root / "prepared" / "files.csv"),
           "stats": str(root / "prepared" / "stats.json"),
           "task": str(root / "synth" / "timbre.csv")}
  remote = {"csv": f"{bucket}/prepared/files.csv", "stats": f"{bucket}/prepared/stats.json",
            "task": f"{bucket}/synth/timbre.csv"}
  return {"local": local, "remote": remote}


@pytest.fixture(scope="module")
def reference(data, tmp_path_factory, cache_dir):
  """The uninterrupted run on local disk: ``(workdir, final state)``."""
  workdir = str(tmp_path_factory.mktemp("gcs_reference"))
  with persistent_cache(cache_dir):
    main_lib.train_and_evaluate(_config(data["local"]), workdir)
  step, state = saved_state(workdir)
  assert step == 8
  return workdir, state


KILL_SCRIPT = textwrap.dedent("""
    import os, signal, sys
    from dwm_jax.train import loop
    real, kill_after = loop.train, int(sys.argv.pop(1))

    def train(config, workdir, on_step=None, **kwargs):
      def hook(done):  # right after the step's checkpoint save was dispatched (async)
        if on_step is not None:  # the command's own hook (a supervisor's progress report)
          on_step(done)
        if done == kill_after:
          os.kill(os.getpid(), signal.SIGKILL)
      return real(config, workdir, on_step=hook, **kwargs)

    loop.train = train
    from dwm_jax import main
    sys.exit(main.main(sys.argv[1:]))
    """)


STALL_SCRIPT = textwrap.dedent("""
    import os, sys, time
    from dwm_jax.train import loop
    real, marker = loop.train, sys.argv.pop(1)

    def train(config, workdir, on_step=None, **kwargs):
      def hook(done):  # after step 5: tell the test, then wait until the bucket is stalled
        if on_step is not None:
          on_step(done)
        if done == 5:
          open(marker + ".reached", "w").close()
          while not os.path.exists(marker):
            time.sleep(0.05)
      return real(config, workdir, on_step=hook, **kwargs)

    loop.train = train
    from dwm_jax import main
    sys.exit(main.main(sys.argv[1:]))
    """)


def _wait_for(predicate, seconds: float, what: str) -> None:
  deadline = time.monotonic() + seconds
  while not predicate():
    assert time.monotonic() < deadline, f"timed out waiting for {what}"
    time.sleep(0.1)


def _cache_env(cache_dir: str) -> dict:
  return {**os.environ, "JAX_COMPILATION_CACHE_DIR": cache_dir,
          "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
          "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "0"}


def _committed(workdir: str) -> dict[int, bool]:
  """``{step: has commit_success.txt}`` of the step folders in a bucket workdir."""
  folder = ckpt.checkpoint_dir(workdir)
  return {int(n): paths.exists(paths.join(folder, n, "commit_success.txt"))
          for n in paths.listdir(folder) if n.isdigit()}


@pytest.fixture(scope="module")
def bucket_run(gcs, data, reference, cache_dir):
  """The same run with ``--workdir gs://...``: SIGKILLed in a subprocess during the async save
  of step 4, then rerun to the end. Returns ``(workdir, {step: committed} and the metrics.jsonl
  text the kill left)``."""
  workdir = f"{_bucket(gcs, 'runs')}/tiny"
  proc = subprocess.run([sys.executable, "-c", KILL_SCRIPT, "4", *_run_args(data["remote"],
                                                                            workdir)],
                        cwd=REPO, env=_cache_env(cache_dir), capture_output=True, text=True,
                        timeout=300)
  assert proc.returncode == -signal.SIGKILL, proc.stderr[-3000:]
  metrics = f"{workdir}/metrics.jsonl"
  after_kill = _committed(workdir), paths.read_text(metrics) if paths.exists(metrics) else ""
  with persistent_cache(cache_dir):
    main_lib.train_and_evaluate(_config(data["remote"]), workdir)
  return workdir, after_kill


def test_killed_run_on_a_bucket_resumes_exactly(bucket_run, reference):
  workdir, (after_kill, _) = bucket_run
  assert after_kill.get(2) is True  # step 2 had committed; step 4 was in flight (or done)
  step, state = saved_state(workdir)
  assert step == 8
  assert_same_tree(state, reference[1])
  # Every step folder left is a committed save: the torn one was removed, then saved again.
  assert set(_committed(workdir).values()) == {True}
  summary = json.loads(paths.read_text(f"{workdir}/summary.json"))
  assert summary["step"] == 8 and summary["workdir"] == workdir
  assert summary["resumed_from"] in (2, 4) and summary["resumed_from"] == (
      4 if after_kill.get(4) else 2)
  assert json.loads(paths.read_text(f"{workdir}/config.json"))["data"]["csv"].startswith("gs://")


def _losses(text: str) -> dict[int, float]:
  return {r["step"]: r["loss"] for r in map(json.loads, text.splitlines())}


def test_logs_and_mask_pngs_land_in_the_bucket(bucket_run, reference, tmp_path):
  workdir, (_, rows_before) = bucket_run
  local_dir, _ = reference
  text = paths.read_text(f"{workdir}/metrics.jsonl")
  # The resumed invocation appended to the rows the killed one had uploaded (fetched first).
  assert text.startswith(rows_before) and json.loads(text.splitlines()[-1])["step"] == 8
  want = _losses(open(os.path.join(local_dir, "metrics.jsonl")).read())
  got = _losses(paths.read_text(f"{workdir}/metrics.jsonl"))
  assert set(range(5, 9)) <= set(got) and all(got[s] == want[s] for s in got)
  assert paths.listdir(f"{workdir}/masks") == ["step_00000000.png", "step_00000004.png"]
  assert paths.read_bytes(f"{workdir}/masks/step_00000004.png")[:8] == b"\x89PNG\r\n\x1a\n"
  # The profile of step 6 (by the resumed invocation), written locally, then uploaded.
  traced = paths.walk_files(f"{workdir}/profile")
  assert any(p.endswith(".xplane.pb") for p in traced), traced
  assert any(p.endswith("perfetto_trace.json.gz") for p in traced), traced
  # TensorBoard events: written locally, uploaded at each log step; both invocations' files.
  import tensorflow as tf
  events = paths.glob(f"{workdir}/logs/events.out.tfevents.*")
  assert events  # the killed invocation's too, if one of its uploads finished in time
  logged = {}
  for i, path in enumerate(events):
    local = str(tmp_path / f"events{i}")
    paths.copy_file(path, local)
    for event in tf.compat.v1.train.summary_iterator(local):
      for v in event.summary.value:
        if v.tag == "loss":
          logged[event.step] = float(tf.make_ndarray(v.tensor))
  assert 8 in logged and np.isclose(logged[8], want[8])


def test_export_and_probe_from_the_bucket(bucket_run, reference, data, capsys):
  workdir, _ = bucket_run
  local_dir, ref_state = reference
  out = f"{workdir}/export/encoder.msgpack"
  assert export.main(["--workdir", workdir, "--out", out]) == 0
  assert_same_tree(load_encoder(out).params, ref_state["train"]["params"]["encoder"])
  # The probe reads the task CSV and its WAVs from the bucket, caches and writes there too.
  args = ["--task", data["remote"]["task"], "--seeds", "1", "--max-epochs", "20"]
  assert probe_cli.main(["--workdir", workdir, *args, "--out", f"{workdir}/probe"]) == 0
  got = json.loads(paths.read_text(f"{workdir}/probe/probe.json"))
  assert paths.walk_files(f"{workdir}/probe_cache")  # <fingerprint>/timbre-<hash>.npz
  local_args = ["--task", data["local"]["task"], "--seeds", "1", "--max-epochs", "20"]
  capsys.readouterr()
  # The second probe embeds nothing: the bucket cache has the features.
  assert probe_cli.main(["--workdir", workdir, *args, "--out", f"{workdir}/probe2"]) == 0
  assert "features from cache gs://" in capsys.readouterr().err
  assert json.loads(paths.read_text(f"{workdir}/probe2/probe.json")) == got
  # Exactly what the same probe of the local reference run gives on the local files.
  local_out = os.path.join(local_dir, "probe_local")
  assert probe_cli.main(["--workdir", local_dir, *local_args, "--no-cache", "--out",
                         local_out]) == 0
  assert json.loads(open(os.path.join(local_out, "probe.json")).read()) == got
  assert set(got) == {"timbre"} and 0.0 <= got["timbre"]["mean"] <= 1.0


def test_damaged_checkpoint_in_the_bucket_is_moved_aside_and_the_run_resumes_exactly(
    gcs, bucket_run, reference, data, cache_dir, caplog):
  source, _ = bucket_run
  workdir = f"{_bucket(gcs, 'damaged')}/tiny"
  fs = _fs()
  fs.copy(f"{source[5:]}/checkpoints", f"{workdir[5:]}/checkpoints", recursive=True)
  arrays = [p for p in fs.find(f"{workdir[5:]}/checkpoints/8/state") if "/d/" in p]
  assert arrays
  for p in arrays:  # what a failing upload or a bad copy leaves: objects cut in half
    fs.pipe(p, fs.cat(p)[: fs.size(p) // 2])
  with persistent_cache(cache_dir), caplog.at_level("WARNING"):
    main_lib.train_and_evaluate(_config(data["remote"]), workdir)
  lines = [r.getMessage() for r in caplog.records if "does not restore" in r.getMessage()]
  assert len(lines) == 1 and lines[0].startswith(f"checkpoint 8 at {workdir}/checkpoints/8 ")
  summary = json.loads(paths.read_text(f"{workdir}/summary.json"))
  assert summary["resumed_from"] == 6 and summary["step"] == 8
  assert_same_tree(saved_state(workdir)[1], reference[1])
  # Moved aside on the bucket (copied, then deleted): every damaged object is kept.
  moved = paths.listdir(f"{workdir}/{ckpt.DAMAGED_DIR}")
  assert len(moved) == 1 and moved[0].startswith("8-")
  kept = paths.walk_files(f"{workdir}/{ckpt.DAMAGED_DIR}/{moved[0]}")
  assert sorted(f"state/{p.split('/state/', 1)[1]}" for p in arrays) == sorted(
      p for p in kept if p.startswith("state/") and "/d/" in p)
  assert _committed(workdir) == {2: True, 4: True, 6: True, 8: True}


def test_a_stalled_bucket_ends_the_run_in_bounded_time_with_one_line(
    gcs, data, reference, cache_dir, tmp_path):
  """The bucket stops answering (a proxy that holds all traffic) after checkpoint 4 committed:
  the run exits with status 75 within storage.timeout_seconds plus a margin, with one line naming
  what it waited for, where, how long, and checkpoint 4; once the bucket answers again, the
  same command resumes from 4 and ends exactly as the uninterrupted run."""
  bound = 15
  workdir = f"{_bucket(gcs, 'stall')}/tiny"
  marker = str(tmp_path / "stalled")
  with LatencyProxy("127.0.0.1", gcs.port) as proxy:
    env = {k: v for k, v in _cache_env(cache_dir).items() if k not in _EMULATOR_DERIVED}
    env[paths.EMULATOR_ENV] = proxy.url  # the run sees the bucket only through the proxy
    proc = subprocess.Popen(
        [sys.executable, "-c", STALL_SCRIPT, marker, *_run_args(data["remote"], workdir),
         f"--config.storage.timeout_seconds={bound}",
         "--config.storage.request_timeout_seconds=3"],
        cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
      _wait_for(lambda: os.path.exists(marker + ".reached"), 600, "step 5")
      _wait_for(lambda: _committed(workdir).get(4), 120, "checkpoint 4 to commit")
      proxy.pause()
      t0 = time.monotonic()
      open(marker, "w").close()
      _, err = proc.communicate(timeout=bound + 120)
    finally:
      proc.kill()
    waited = time.monotonic() - t0
    proxy.resume()
  last = err.strip().splitlines()[-1]
  assert proc.returncode == 75, err[-3000:]
  assert "Traceback" not in err, err[-3000:]
  assert bound <= waited < bound + 30, (waited, last)  # the watchdog polls; a loaded machine
  assert last.startswith("dwm-jax pretrain: "), last
  assert ("did not finish: the bucket has not answered for " in last
          and f"(storage.timeout_seconds={bound}); checkpoint 4 is the last good one. Rerun "
          "the same command once the bucket answers (it resumes)" in last), last
  assert _committed(workdir)[4] is True
  with persistent_cache(cache_dir):
    summary = main_lib.train_and_evaluate(_config(data["remote"]), workdir)
  assert summary["resumed_from"] == 4 and summary["step"] == 8
  assert summary["restarts"]["steps_repeated"] in (0, 1)  # step 5's row, if it was uploaded


def test_sharded_data_in_a_bucket_resumes_exactly(gcs, data, reference, cache_dir, tmp_path):
  """The same WAVs prepared with --layout shards straight into a bucket: the run stopped by
  SIGTERM after step 3 and resumed ends exactly as the uninterrupted run on the local .npy files
  (the same float16 log-mels, so the same batches)."""
  from dwm_jax.train import loop  # pylint: disable=import-outside-toplevel
  root = os.path.dirname(os.path.dirname(data["local"]["csv"]))
  out = f"{_bucket(gcs, 'shards')}/prepared"
  report = prepare.prepare_shards(os.path.join(root, "synth"), out, workers=0,
                                  clips_per_shard=10, chunk_frames=16, progress=False)
  assert report["converted"] == 32 and report["shards"] == 4
  c = _config(data["remote"])
  c.data.source, c.data.csv = "shards", f"{out}/clips.csv"
  workdir = str(tmp_path / "run")

  def sigterm_after_3(done):
    if done == 3:
      os.kill(os.getpid(), signal.SIGTERM)

  with persistent_cache(cache_dir):
    first = loop.train(c, workdir, on_step=sigterm_after_3)
    assert first["preempted"] and first["step"] == 4
    second = loop.train(c, workdir)
  assert second["resumed_from"] == 4 and second["step"] == 8
  assert_same_tree(saved_state(workdir)[1], reference[1])


@pytest.fixture
def no_compile(monkeypatch):
  def refuse(*args, **kwargs):
    raise AssertionError("compiled despite a bad path")
  monkeypatch.setattr(memory, "compile_step", refuse)


def test_missing_buckets_fail_before_compiling(gcs, data, no_compile, capsys):
  before = gcs.buckets()
  rc = main_lib.main(["--config", TINY, "--workdir", "gs://no-such-bucket-17/run"])
  err = capsys.readouterr().err.strip().splitlines()
  assert rc == 2 and err[-1] == ("dwm-jax pretrain: bucket gs://no-such-bucket-17 does not "
                                 "exist (or these credentials cannot see it): create it, or fix "
                                 "the path")
  good = f"{_bucket(gcs, 'empty')}/run"
  rc = main_lib.main(_run_args({**data["remote"], "csv": "gs://no-such-data-17/files.csv"}, good))
  err = capsys.readouterr().err
  assert rc == 2 and "invalid config:\n  data.csv: bucket gs://no-such-data-17 does not exist" in err
  assert not paths.walk_files(good)  # no partial workdir
  assert export.main(["--workdir", "gs://no-such-bucket-17/run", "--out", "/tmp/x.msgpack"]) == 2
  assert capsys.readouterr().err.strip().splitlines()[-1].startswith(
      "dwm-jax export: bucket gs://no-such-bucket-17 ")
  assert probe_cli.main(["--workdir", "gs://no-such-bucket-17/run", "--synthetic", "10"]) == 2
  assert capsys.readouterr().err.strip().splitlines()[-1].startswith(
      "dwm-jax probe: bucket gs://no-such-bucket-17 ")
  assert gcs.buckets() == sorted(before + [good[5:].split("/")[0]])  # nothing else created


def test_unreachable_endpoint_fails_at_once_with_one_line(tmp_path):
  """A fresh process with only STORAGE_EMULATOR_HOST set, pointing where nothing listens."""
  from dwm_jax.testing.gcs_server import free_port
  dead = f"http://127.0.0.1:{free_port()}"
  env = {k: v for k, v in os.environ.items() if k not in _EMULATOR_DERIVED}
  env[paths.EMULATOR_ENV] = dead
  proc = subprocess.run([sys.executable, "-m", "dwm_jax.cli", "pretrain", "--config", TINY,
                         "--workdir", "gs://bucket/run"], cwd=REPO, env=env,
                        capture_output=True, text=True, timeout=120)
  last = proc.stderr.strip().splitlines()[-1]
  assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
  assert last.startswith(f"dwm-jax pretrain: cannot reach the storage endpoint {dead} (set by "
                         "STORAGE_EMULATOR_HOST or TENSORSTORE_GCS_HTTP_URL): "
                         "ConnectionRefusedError: "), last


def test_grain_workers_read_the_bucket_as_the_main_process_reads_disk(data):
  """Two grain worker processes, each with its own client built from the inherited emulator
  variables, yield the batches the in-process pipeline yields from local files."""
  from dwm_jax.data import pipeline

  def batches(files: dict, workers: int) -> list[np.ndarray]:
    c = _config(files)
    c.data.num_workers = workers
    loader = pipeline.make_pretrain_loader(c.data, input_shape=tuple(c.model.input_shape),
                                           global_batch_size=8, seed=3)
    it = iter(loader)
    return [np.asarray(next(it)["logmel"]) for _ in range(5)]

  local, remote = batches(data["local"], 0), batches(data["remote"], 2)
  for a, b in zip(local, remote):
    np.testing.assert_array_equal(a, b)
