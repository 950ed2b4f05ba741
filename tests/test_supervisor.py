"""The supervisor of a multi-process trainer: how it reads the coordination service's fatal
report, which line and exit status each ending gets, and (with small stand-in trainers, no JAX)
that it drops the runtime's report, forwards signals and takes the trainer down with it.

The texts below are what jaxlib 0.10's coordination service printed in this project's two-process
CPU runs (tests/test_distributed.py runs the real thing), plus the form JAX's fault-tolerance
guide shows (task names instead of numbers)."""
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from dwm_jax import distributed, supervisor

TESTS = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(TESTS)

PEER_1_UNHEALTHY = (
    "E1207 21:14:49.120772    8827 coordination_service.cc:1549] [6108669291839874437] Use error "
    "polling to propagate the following error to all tasks: UNAVAILABLE: The following tasks are "
    "unhealthy (stopped sending heartbeats):\n1\nThe tasks have crashed. Check the task logs for "
    "an earlier error, or scheduler events (e.g. preemption, eviction) to debug further. "
    "[type.googleapis.com/tensorflow.CoordinationServiceError='']\n")
SHUTDOWN_BARRIER = (
    "F1207 21:22:37.262544   14082 client.h:80] Terminating process because the JAX distributed "
    "service detected fatal errors. This most likely indicates that another task died; see the "
    "other task logs for more details. absl::Status: INTERNAL: Shutdown barrier has failed.\n"
    "Barrier result: 'INTERNAL: Barrier failed because: task is set to ERROR: UNAVAILABLE: Task 1 "
    "heartbeat timeout. This indicates that the remote task has failed, got preempted, or crashed "
    "unexpectedly.'\n")
COORDINATOR_GONE = (
    "E1207 21:17:21.837519   12475 coordination_service_agent.cc:289] Polled an error from "
    "coordination service (this can be an error from this or another task).\n"
    "F1207 21:17:21.837567   12475 client.h:80] Terminating process because the JAX distributed "
    "service detected fatal errors. This most likely indicates that another task died; see the "
    "other task logs for more details.\nAdditional GRPC error information from remote target "
    "coordination_service while calling /xla.coordination.CoordinationService/PollForError:\n"
    ":UNKNOWN:Error received from peer  {grpc_message:\"Socket closed\", grpc_status:14}\n")
GUIDE_FORM = (
    "F0926 17:26:32.075587  157988 client.h:77] Terminating process because the JAX distributed "
    "service detected fatal errors. absl::Status: UNAVAILABLE: The following tasks are unhealthy "
    "(stopped sending heartbeats):\n/job:jax_worker/replica:0/task:3\n"
    "/job:jax_worker/replica:0/task:12\nThe tasks have crashed.\n")
STACK = "*** Check failure stack trace: ***\n    @     0x7f2620040634  absl::LogMessage::SendToLog()\n"


def test_lost_processes_from_the_fatal_report():
  assert supervisor.lost_processes(PEER_1_UNHEALTHY) == [1]
  assert supervisor.lost_processes(SHUTDOWN_BARRIER) == [1]
  assert supervisor.lost_processes(COORDINATOR_GONE) == [0]
  assert supervisor.lost_processes(GUIDE_FORM) == [3, 12]
  assert supervisor.lost_processes("F1207 client.h:80] Terminating process because ...") == []


def _verdict(**end):
  return supervisor.verdict("dwm-jax pretrain", supervisor.Ending(**end), resume_from=30,
                            checkpoints="/w/checkpoints", heartbeat_timeout_seconds=5)


def test_each_ending_gets_one_line_and_its_status():
  line, status = _verdict(returncode=-6, step=37, runtime_text=PEER_1_UNHEALTHY + SHUTDOWN_BARRIER,
                          process_id=0, num_processes=2)
  assert status == 75 and line == (
      "dwm-jax pretrain: lost process 1 of 2 (no heartbeat for 5 s) at step 37; process 0 stops. "
      "Restart the job with the same command: it resumes from checkpoint 30 in /w/checkpoints")
  line, status = _verdict(returncode=-6, step=37, runtime_text=COORDINATOR_GONE, process_id=1,
                          num_processes=2)
  assert status == 75 and "lost process 0 (the coordinator; its connection closed) at step 37" in line
  # A collective that failed (75) says less than the coordination service's verdict after it.
  line, status = _verdict(returncode=-6, step=3, runtime_text=COORDINATOR_GONE, process_id=1,
                          line="dwm-jax pretrain: a collective with the other processes failed",
                          status=75)
  assert status == 75 and "lost process 0" in line
  # Its own fault is what a process reports, even if the others' exits end it afterwards.
  line, status = _verdict(returncode=-6, step=3, runtime_text=COORDINATOR_GONE, process_id=1,
                          line="dwm-jax pretrain: loss or gradient norm is NaN/Inf", status=1)
  assert (line, status) == ("dwm-jax pretrain: loss or gradient norm is NaN/Inf", 1)
  assert _verdict(returncode=0, step=8) == (None, 0)
  line, status = _verdict(returncode=-9, step=35, process_id=1, num_processes=2)
  assert status == 75 and line.startswith("dwm-jax pretrain: process 1 of 2 was stopped by "
                                          "SIGKILL at step 35, without saving.")
  line, status = _verdict(returncode=-11, step=35, process_id=1)
  assert status == 1 and "crashed (SIGSEGV) at step 35; see the log above" in line
  # Lost while the others finished the save of step 30: 29 reported, 30 trained and committed.
  line, _ = _verdict(returncode=-6, step=29, runtime_text=COORDINATOR_GONE, process_id=1)
  assert "at step 30;" in line
  line, _ = supervisor.verdict("p", supervisor.Ending(returncode=-9), resume_from=None,
                               checkpoints="/w/checkpoints", heartbeat_timeout_seconds=5)
  assert "before its first step" in line and "step 0 (no finished checkpoint in /w/checkpoints)" in line
  line, _ = supervisor.verdict("p", supervisor.Ending(returncode=-9, step=4),
                               resume_from=supervisor.UNKNOWN, checkpoints="/w/checkpoints",
                               heartbeat_timeout_seconds=5)
  assert "at step 4" in line and "its newest finished checkpoint in /w/checkpoints" in line


def test_runtime_records_and_their_continuation_lines():
  lines = ["12:00:00 I dwm_jax.train] step 7/8\n", *PEER_1_UNHEALTHY.splitlines(True),
           "[Gloo] Rank 0 is connected to 1 peer ranks.\n", "12:00:01 W dwm_jax.train] next\n",
           *STACK.splitlines(True)]
  flags = supervisor.runtime_records(lines)
  kept = [l for l, f in zip(lines, flags) if not f]
  # A record continues up to our next log line: the Gloo line inside one goes with it.
  assert kept == ["12:00:00 I dwm_jax.train] step 7/8\n", "12:00:01 W dwm_jax.train] next\n",
                  *STACK.splitlines(True)]


# What tensorstore (a bucket client) printed in this project's two-process runs, and a line of
# dwm_jax.train.deadline.
BUCKET_RECORD = ("I1208 00:14:58.253636   19087 google_auth_provider.cc:136] Using "
                 "GOOGLE_AUTH_TOKEN_FOR_TESTING\n")
DEADLINE_MESSAGE = ("saving checkpoint 8 to gs://b/run/checkpoints did not finish: the bucket has "
                    "not answered for 15 s (storage.timeout_seconds=15); checkpoint 7 is the last "
                    "good one. Rerun the same command once the bucket answers (it resumes)")

# A stand-in trainer: reports like the real one, then ends as told.
TRAINER = textwrap.dedent("""
    import os, signal, sys, time
    from dwm_jax import distributed, supervisor
    supervisor.die_with_parent()
    distributed.report_step(7)
    print("12:00:00 I dwm_jax.train] step 7/8", file=sys.stderr, flush=True)
    how = sys.argv[1]
    if how == "fatal":
      sys.stderr.write({fatal!r})
      sys.stderr.flush()
      os.abort()
    elif how == "fault":  # its runtime's last records, then its own line
      distributed.report_end("dwm-jax pretrain: saving checkpoint 8 failed", 1)
      sys.stderr.write({records!r})
      sys.stderr.flush()
      sys.exit(1)
    elif how == "deadline":  # a bucket client's record, then storage.timeout_seconds runs out
      sys.stderr.write({bucket_record!r})
      sys.stderr.flush()
      from dwm_jax.train import deadline
      deadline.end_process({deadline_message!r})
    else:  # wait for a signal, saying which one came
      signal.signal(signal.SIGTERM, lambda s, f: (print("got SIGTERM", flush=True), sys.exit(0)))
      print("pid", os.getpid(), flush=True)
      time.sleep(60)
    """).format(fatal=PEER_1_UNHEALTHY + SHUTDOWN_BARRIER + STACK, records=PEER_1_UNHEALTHY,
               bucket_record=BUCKET_RECORD, deadline_message=DEADLINE_MESSAGE)


def _supervise(tmp_path, how: str) -> subprocess.Popen:
  """A supervisor process (as ``dwm-jax pretrain`` runs it) over the stand-in trainer."""
  script = textwrap.dedent(f"""
      import sys
      from dwm_jax import distributed, supervisor
      setup = distributed.Setup("localhost:1", 2, 0, heartbeat_timeout_seconds=5)
      sys.exit(supervisor.run([sys.executable, "-c", {TRAINER!r}, {how!r}], prog="dwm-jax pretrain",
                              workdir={str(tmp_path)!r}, setup=setup))
      """)
  env = {**os.environ, "PYTHONPATH": REPO + os.pathsep + os.environ.get("PYTHONPATH", "")}
  env.pop(distributed.SUPERVISOR_FD_ENV, None)
  return subprocess.Popen([sys.executable, "-c", script], cwd=REPO, env=env, text=True,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def test_runtime_fatal_report_becomes_one_line(tmp_path):
  (tmp_path / "checkpoints" / "6").mkdir(parents=True)
  (tmp_path / "checkpoints" / "8.orbax-checkpoint-tmp-1234").mkdir()
  proc = _supervise(tmp_path, "fatal")
  out, err = proc.communicate(timeout=60)
  assert proc.returncode == 75, err
  assert err.splitlines() == [
      "12:00:00 I dwm_jax.train] step 7/8",  # the trainer's own log lines stay
      "dwm-jax pretrain: lost process 1 of 2 (no heartbeat for 5 s) at step 7; process 0 stops. "
      f"Restart the job with the same command: it resumes from checkpoint 6 in "
      f"{tmp_path / 'checkpoints'}"]


def test_a_reported_fault_is_the_line(tmp_path):
  proc = _supervise(tmp_path, "fault")
  _, err = proc.communicate(timeout=60)
  assert proc.returncode == 1
  assert err.splitlines() == ["12:00:00 I dwm_jax.train] step 7/8",
                              "dwm-jax pretrain: saving checkpoint 8 failed"]


def test_a_storage_deadline_is_the_line_after_a_runtime_record(tmp_path):
  """The storage watchdog ends the trainer (status 75) right after a bucket client's log record:
  its line is the one line, not taken for the end of that record and dropped."""
  proc = _supervise(tmp_path, "deadline")
  _, err = proc.communicate(timeout=60)
  assert proc.returncode == 75, err
  assert err.splitlines() == ["12:00:00 I dwm_jax.train] step 7/8",
                              f"dwm-jax pretrain: {DEADLINE_MESSAGE}"]


def _wait_for_pid(proc: subprocess.Popen) -> int:
  line = proc.stdout.readline()
  assert line.startswith("pid "), line + proc.stderr.read()
  return int(line.split()[1])


def test_sigterm_is_forwarded_once(tmp_path):
  proc = _supervise(tmp_path, "wait")
  _wait_for_pid(proc)
  proc.send_signal(signal.SIGTERM)
  out, err = proc.communicate(timeout=60)
  assert proc.returncode == 0, err
  assert out.splitlines() == ["got SIGTERM"] and "dwm-jax pretrain:" not in err


def test_kill_9_of_the_supervisor_takes_the_trainer_with_it(tmp_path):
  proc = _supervise(tmp_path, "wait")
  trainer = _wait_for_pid(proc)
  proc.kill()
  proc.wait(timeout=10)
  deadline = time.monotonic() + 10
  while time.monotonic() < deadline:
    try:
      os.kill(trainer, 0)
    except ProcessLookupError:
      return
    time.sleep(0.05)
  os.kill(trainer, signal.SIGKILL)
  pytest.fail("the trainer outlived its supervisor")
