"""Multi-host: flag/env resolution, and real two-process runs on localhost CPUs (gloo): SIGTERM,
a bucket workdir, and kill -9 of either process under ``dwm-jax pretrain``'s supervisor."""
import glob
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time

import pytest

from dwm_jax import distributed, paths
from tests.train.conftest import (_CACHE_OPTIONS, TINY, assert_same_tree,  # noqa: F401
                                  cache_dir, compile_cache, saved_state)

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
  setup = distributed.resolve("h:1", 2, 1, environ={}, heartbeat_timeout_seconds=5,
                              collective_timeout_seconds=30)
  assert (setup.heartbeat_timeout_seconds, setup.collective_timeout_seconds) == (5, 30)
  assert distributed.Setup().heartbeat_timeout_seconds == 100  # JAX's default: for real pods
  assert setup.multi_process and distributed.resolve(auto=True, environ={}).multi_process
  assert not distributed.resolve(environ={}).multi_process
  with pytest.raises(ValueError, match="heartbeat_timeout_seconds >= 1"):
    distributed.resolve("h:1", 2, 1, environ={}, heartbeat_timeout_seconds=0)


def test_collective_timeout_goes_to_xla_flags_unless_set(monkeypatch):
  """The CPU collective timeout reaches XLA through XLA_FLAGS (read when the backend starts); a
  value the user put there wins. (tests/test_distributed.py's runs check the rest.)"""
  flag = "--xla_cpu_collective_timeout_seconds"
  monkeypatch.setenv("XLA_FLAGS", "--xla_force_host_platform_device_count=1")
  distributed._set_xla_flag(flag, 30)  # pylint: disable=protected-access
  assert os.environ["XLA_FLAGS"] == f"--xla_force_host_platform_device_count=1 {flag}=30"
  distributed._set_xla_flag(flag, 60)  # pylint: disable=protected-access
  assert os.environ["XLA_FLAGS"].endswith(f"{flag}=30")


def test_collective_failures_are_recognized():
  gloo = ValueError("UNKNOWN: Gloo AllGather failed: [external/gloo/gloo/transport/tcp/"
                    "unbound_buffer.cc:132] Timed out waiting 5000ms for send operation")
  reset = RuntimeError("UNKNOWN: Gloo all-reduce failed: [external/gloo/gloo/transport/tcp/"
                       "pair.cc:538] Read error [127.0.0.1]:34709: Connection reset by peer")
  assert distributed.is_collective_failure(gloo) and distributed.is_collective_failure(reset)
  barrier = RuntimeError("INTERNAL: Barrier failed because: task is set to ERROR: UNAVAILABLE: "
                         "Task 1 heartbeat timeout. This indicates that the remote task has "
                         "failed, got preempted, or crashed unexpectedly.")
  assert distributed.is_collective_failure(barrier)  # a save's or the clock's barrier
  leader_gone = RuntimeError(  # a save's barrier after process 0 (the service's host) was killed
      "UNAVAILABLE: Failed to send RPC to coordination service. Either the leader task was "
      "preempted/died/restarted unexpectedly or this task is experiencing network issues. ... "
      "while calling /xla.coordination.CoordinationService/Barrier: :UNKNOWN:Error received from "
      "peer {grpc_status:14, grpc_message:\"Socket closed\"}")
  assert distributed.is_collective_failure(leader_gone)
  assert not distributed.is_collective_failure(RuntimeError("RESOURCE_EXHAUSTED: Out of memory"))
  assert not distributed.is_collective_failure(KeyError("gloo"))
  try:  # a save that failed on a collective, as the loop reports it
    try:
      raise reset
    except RuntimeError as e:
      raise OSError("saving checkpoint 4 failed") from e
  except OSError as e:
    assert distributed.collective_failure_in(e) is reset
  assert distributed.collective_failure_in(OSError("No space left on device")) is None
  fault = distributed.CollectiveFailure(reset)
  assert fault.exit_status == 75 and "Connection reset by peer" in str(fault)
  assert "\n" not in str(fault)


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


# ---------------------------------------------------------------------------------------------
# A lost peer, through the command a user runs (``dwm-jax pretrain``, so under its supervisor).

HEARTBEAT = 5      # --heartbeat_timeout_seconds of these runs
MARGIN = 15        # what a survivor may take beyond it here (2 shared cores, 2 processes each)
# The coordination service's error and fatal records, its stack trace, a Python traceback.
_RUNTIME_REPORT = re.compile(r"^[EF]\d{4} \d\d:|Check failure|^\s+@\s+0x|Traceback|"
                             r"Terminating process|coordination_service", re.MULTILINE)


def _start_pair(workdir: str) -> list[subprocess.Popen]:
  """``dwm-jax pretrain`` of the tiny config on 2 processes; a synchronous save after every step
  (a run that lasts over a second on any machine, so a kill lands inside it)."""
  port = _free_port()
  env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=1",
         "PYTHONPATH": REPO + os.pathsep + os.environ.get("PYTHONPATH", "")}
  return [subprocess.Popen(
      [sys.executable, "-m", "dwm_jax.main", "--config", TINY, "--workdir", workdir,
       "--coordinator_address", f"localhost:{port}", "--num_processes", "2", "--process_id",
       str(i), "--heartbeat_timeout_seconds", str(HEARTBEAT), "--config.checkpoint.every_steps=1",
       "--config.checkpoint.async_save=False"],
      cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
      for i in range(2)]


def _finished_steps(workdir: str) -> list[int]:
  return sorted(int(n) for n in os.listdir(os.path.join(workdir, "checkpoints")) if n.isdigit())


def _wait_for_checkpoint(workdir: str, step: int, procs: list[subprocess.Popen]) -> None:
  deadline = time.monotonic() + 400
  while not os.path.isdir(os.path.join(workdir, "checkpoints", str(step))):
    for p in procs:
      assert p.poll() is None, p.communicate()[1][-3000:]
    assert time.monotonic() < deadline, "no checkpoint within 400 s"
    time.sleep(0.01)


@pytest.mark.slow
@pytest.mark.usefixtures("compile_cache")
@pytest.mark.parametrize("victim", [1, 0])
def test_kill_9_of_one_process_ends_the_other_in_one_line_and_the_restart_resumes_exactly(
    pair_reference, tmp_path, victim):
  """kill -9 of one process (1, or 0 which hosts the coordination service) right after its third
  checkpoint: the other exits with status 75 within the heartbeat timeout plus a margin, with one
  line naming the lost process, its step and the checkpoint a restart resumes from, and no C++
  report. The same command restarts both; the run resumes there and ends exactly as an
  uninterrupted one, with no unfinished save left behind."""
  run = str(tmp_path / "run")
  os.makedirs(run)  # the reference's normalization statistics: not computed again (25 s here)
  shutil.copy(os.path.join(pair_reference, "stats.json"), run)
  procs = _start_pair(run)
  _wait_for_checkpoint(run, 3, procs)
  procs[victim].kill()
  killed_at = time.monotonic()
  survivor = procs[1 - victim]
  _, err = survivor.communicate(timeout=HEARTBEAT + 120)
  seconds = time.monotonic() - killed_at
  procs[victim].communicate(timeout=60)
  assert survivor.returncode == 75, err[-3000:]
  assert seconds < HEARTBEAT + MARGIN, seconds
  assert not _RUNTIME_REPORT.search(err), err[-3000:]
  lost = ("process 1 of 2 (no heartbeat for 5 s)" if victim == 1 else
          "process 0 (the coordinator; its connection closed)")
  line = re.fullmatch(
      rf"dwm-jax pretrain: lost {re.escape(lost)} at step (\d+); process {1 - victim} stops\. "
      rf"Restart the job with the same command: it resumes from checkpoint (\d+) in "
      rf"{re.escape(os.path.join(run, 'checkpoints'))}", err.strip().splitlines()[-1])
  assert line, err.strip().splitlines()[-1]
  at_step, resume_from = int(line.group(1)), int(line.group(2))
  assert 3 <= resume_from <= at_step < 8, (line.group(0), os.listdir(os.path.join(run, "checkpoints")))
  assert resume_from == _finished_steps(run)[-1]

  _restart_and_compare(run, resume_from, pair_reference)
  assert not glob.glob(os.path.join(run, "checkpoints", "*orbax-checkpoint-tmp*"))


def _restart_and_compare(run: str, resume_from: int, reference: str) -> None:
  """The same command on both processes resumes from ``resume_from`` and ends exactly as the
  uninterrupted run."""
  procs = _start_pair(run)
  for p in procs:
    _, err = p.communicate(timeout=500)
    assert p.returncode == 0, err[-3000:]
  summary = json.loads(paths.read_text(paths.join(run, "summary.json")))
  assert summary["resumed_from"] == resume_from and summary["step"] == 8  # nothing trained over
  assert_same_tree(saved_state(run)[1], saved_state(reference)[1])
