"""Multi-host: flag/env resolution, and a real two-process run on localhost CPUs (gloo)."""
import json
import os
import socket
import subprocess
import sys

import pytest

from dwm_jax import distributed, paths
from tests.train.conftest import (_CACHE_OPTIONS, assert_same_tree, cache_dir,  # noqa: F401
                                  compile_cache, saved_state)

TESTS = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(TESTS)


def test_resolve_flags_env_and_errors():
  assert distributed.resolve(environ={}) == distributed.Setup()
  assert distributed.resolve(auto=True, environ={}).auto
  env = {"JAX_COORDINATOR_ADDRESS": "h:1", "JAX_NUM_PROCESSES": "4", "JAX_PROCESS_ID": "3"}
  assert distributed.resolve(environ=env) == distributed.Setup("h:1", 4, 3)
  assert distributed.resolve("x:2", 2, 0, environ=env) == distributed.Setup("x:2", 2, 0)
  with pytest.raises(ValueError, match="also give --num_processes and --process_id"):
    distributed.resolve("h:1", environ={})
  with pytest.raises(ValueError, match="without a coordinator address"):
    distributed.resolve(num_processes=2, environ={})
  with pytest.raises(ValueError, match="0 <= process_id < num_processes"):
    distributed.resolve("h:1", 2, 2, environ={})


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


def _run_pair(workdir: str, term_at: int = -1) -> list[dict]:
  """Both processes of one run; returns their summaries (process 0 first)."""
  port = _free_port()
  env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=1",
         "PYTHONPATH": REPO + os.pathsep + os.environ.get("PYTHONPATH", "")}
  procs = [subprocess.Popen([sys.executable, os.path.join(TESTS, "distributed_worker.py"),
                             workdir, str(i), str(port), str(term_at)], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
           for i in range(2)]
  outs = [p.communicate(timeout=500)[0] for p in procs]
  for p, out in zip(procs, outs):
    assert p.returncode == 0, out[-3000:]
  return [json.loads(out.split("SUMMARY ")[-1].splitlines()[0]) for out in outs]


@pytest.fixture(scope="module")
def pair_reference(tmp_path_factory, cache_dir):
  """An uninterrupted two-process run on local disk (its workdir)."""
  ref = str(tmp_path_factory.mktemp("pair_reference"))
  with pytest.MonkeyPatch.context() as mp:  # the session's compilation cache, for the workers
    for name, value in {**_CACHE_OPTIONS, "jax_compilation_cache_dir": cache_dir}.items():
      mp.setenv(name.upper(), str(value))
    assert _run_pair(ref) == [{"step": 8, "preempted": False, "resumed_from": None}] * 2
  assert sorted(os.listdir(os.path.join(ref, "checkpoints", "8", "data"))) == [
      "commit_success.txt", "process_0-of-2.json", "process_1-of-2.json"]
  return ref


@pytest.mark.slow
@pytest.mark.usefixtures("compile_cache")
def test_two_processes_preempt_together_and_resume_exactly(pair_reference, tmp_path):
  """2 processes x 1 CPU device: global batch split by process, collective checkpoints, SIGTERM
  on one process stops both at the same step, and the resumed run equals an uninterrupted one."""
  ref, run = pair_reference, str(tmp_path / "run")

  first = _run_pair(run, term_at=3)
  assert first[0] == first[1] and first[0]["preempted"] and 3 < first[0]["step"] < 8
  second = _run_pair(run)
  assert second == [{"step": 8, "preempted": False, "resumed_from": first[0]["step"]}] * 2
  assert_same_tree(saved_state(run)[1], saved_state(ref)[1])


@pytest.mark.slow
@pytest.mark.usefixtures("compile_cache")
def test_two_processes_share_a_bucket_workdir(gcs, pair_reference):
  """Both processes write one collective checkpoint to gs:// (each its data position, process 0
  the arrays), only process 0 writes the logs, and the run ends exactly where the same run on
  local disk does."""
  workdir = f"{gcs.make_bucket('pair-' + str(os.getpid()))}/run"
  assert _run_pair(workdir) == [{"step": 8, "preempted": False, "resumed_from": None}] * 2
  assert paths.listdir(f"{workdir}/checkpoints/8/data") == [
      "commit_success.txt", "process_0-of-2.json", "process_1-of-2.json"]
  rows = [json.loads(r) for r in paths.read_text(f"{workdir}/metrics.jsonl").splitlines()]
  assert [r["step"] for r in rows] == list(range(1, 9))  # one writer: each step once
  assert_same_tree(saved_state(workdir)[1], saved_state(pair_reference)[1])
