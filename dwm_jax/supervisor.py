"""A multi-host trainer runs as the child of this small supervisor, which turns every way the job
ends on this host into one line on stderr and a documented exit status.

Why a second process: when a process of a multi-host JAX job vanishes (kill -9, a kernel panic,
the OOM killer, a maintenance event), JAX's coordination service ends every other process with a
C++ ``LOG(FATAL)``: about 90 lines of stack trace and SIGABRT (exit 134), after
``heartbeat_timeout_seconds`` without a heartbeat, or at once when process 0, which hosts the
service, is the one lost. Nothing in the dying process can stop that (jaxlib 0.10 cannot call a
Python function in its place), so the process that reports it must be another one. The supervisor
imports no accelerator runtime and does four things:

- starts the trainer (``python -m dwm_jax.main`` with the same arguments) in its own session and
  forwards SIGTERM and SIGINT to it (a first Ctrl-C saves like SIGTERM, a second one kills);
- copies the trainer's stderr to its own, each line :data:`HOLD_SECONDS` late, so that the
  runtime's fatal report, and the runtime lines that announce it, can be dropped;
- reads the trainer's reports (:func:`dwm_jax.distributed.report_step` / ``report_end``);
- when the trainer ends, prints the one line and exits with the status of :func:`verdict`.

Exit statuses: the trainer's own (0 finished or stopped by a signal after saving, 1 a fault to
fix, 2 a request that cannot work) and :data:`RESTART` = 75 (``EX_TEMPFAIL``) when nothing needs
fixing: a peer process was lost, a collective with the others failed, or this trainer was killed.
Restart the job with the same command; it resumes from the checkpoint the line names.
"""
from __future__ import annotations

import dataclasses
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from typing import Any, Callable, Sequence

from dwm_jax import distributed, faults

RESTART = faults.RestartFault.exit_status
# Lines of the trainer's stderr wait this long before they are copied: the coordination
# service's error lines come milliseconds before its fatal one, and must go with it.
HOLD_SECONDS = 1.0
_SUPERVISOR_PID_ENV = "DWM_JAX_SUPERVISOR_PID"
_FATAL = "Terminating process because the JAX distributed service detected fatal errors"
_PY_LOG = re.compile(r"^\d\d:\d\d:\d\d [DIWEC] \S+\] ")  # dwm_jax.console's format
_RUNTIME_RECORD = re.compile(r"^[IWEF]\d{4} \d\d:\d\d:\d\d\.\d+\s+\d+ \S+:\d+\] ")  # absl's
# Who the coordination service says is gone: "unhealthy (stopped sending heartbeats):\n1" (or
# "/job:jax_worker/replica:0/task:1"), "Task 1 heartbeat timeout"; a lost coordinator shows as
# the failed RPC to it.
_UNHEALTHY = re.compile(r"stopped sending heartbeats\):\s*((?:\S*?\d+[,\s]*)+?)\s*The tasks",
                        re.DOTALL)
_TASK_TIMEOUT = re.compile(r"Task (\d+) heartbeat timeout")
_COORDINATOR_GONE = re.compile(r"Failed to send RPC to coordination service|Socket closed|"
                               r"failed to connect to all addresses|Connection reset by peer")


@dataclasses.dataclass
class Ending:
  """What the supervisor knows when the trainer ends."""
  returncode: int                # the trainer's (negative: killed by that signal)
  step: int | None = None        # the last step it finished
  line: str | None = None        # the line it reported (a fault), if any
  status: int | None = None      # and its exit status
  runtime_text: str = ""         # the coordination service's fatal report, if it died of one
  process_id: int | None = None
  num_processes: int | None = None


def lost_processes(text: str) -> list[int]:
  """The processes the coordination service's fatal report names as lost; ``[0]`` when it
  lost its connection to process 0 (the coordinator); ``[]`` when it names none."""
  found = _UNHEALTHY.search(text)
  if found:
    return sorted({int(n) for n in re.findall(r"(\d+)(?=[,\s]|$)", found.group(1))})
  timed_out = _TASK_TIMEOUT.findall(text)
  if timed_out:
    return sorted({int(n) for n in timed_out})
  return [0] if _COORDINATOR_GONE.search(text) else []


UNKNOWN = -1  # the workdir did not answer: which checkpoint a restart resumes from is not known


def _checkpoint_text(resume_from: int | None, checkpoints: str) -> str:
  if resume_from == UNKNOWN:
    return f"its newest finished checkpoint in {checkpoints}"
  if resume_from is None:
    return f"step 0 (no finished checkpoint in {checkpoints})"
  return f"checkpoint {resume_from} in {checkpoints}"


def verdict(prog: str, end: Ending, *, resume_from: int | None, checkpoints: str,
            heartbeat_timeout_seconds: int) -> tuple[str | None, int]:
  """``(line or None, exit status)`` for how the trainer ended.

  A fault the trainer reported as its own (status 1 or 2) is the line even when the runtime's
  fatal report ended it afterwards (its peers left on the same fault, or saw it gone); the fatal
  report otherwise names the lost process, which says more than a failed collective (75).
  """
  me = f"process {end.process_id}" if end.process_id is not None else "this process"
  of = f" of {end.num_processes}" if end.num_processes else ""
  # A step is reported once its save returns: a process lost while the others finish the save
  # of step N has N trained (and checkpoint N may be committed) but N - 1 reported.
  known = resume_from if resume_from != UNKNOWN else None
  step = max(end.step or 0, known or 0) if end.step is not None else known
  at = f" at step {step}" if step is not None else " before its first step"
  resume = (f"Restart the job with the same command: it resumes from "
            f"{_checkpoint_text(resume_from, checkpoints)}")
  own_fault = end.line is not None and end.status != RESTART
  if end.runtime_text and not own_fault:
    lost = [p for p in lost_processes(end.runtime_text) if p != end.process_id]
    if lost == [0]:
      who = "process 0 (the coordinator; its connection closed)"
    elif lost:
      who = (f"process{'es' if len(lost) > 1 else ''} {', '.join(map(str, lost))}{of} (no "
             f"heartbeat for {heartbeat_timeout_seconds} s)")
    else:
      who = "another process (the coordination service reported a fatal error)"
    return f"{prog}: lost {who}{at}; {me} stops. {resume}", RESTART
  if end.line is not None:
    return end.line, int(end.status if end.status is not None else max(end.returncode, 1))
  if end.returncode >= 0:
    return None, end.returncode
  name = signal.Signals(-end.returncode).name
  if -end.returncode in (signal.SIGKILL, signal.SIGTERM, signal.SIGINT):
    return f"{prog}: {me}{of} was stopped by {name}{at}, without saving. {resume}", RESTART
  return (f"{prog}: {me}{of} crashed ({name}){at}; see the log above. Rerun the same command: "
          f"it resumes from {_checkpoint_text(resume_from, checkpoints)}"), 1


def runtime_records(lines: Sequence[str]) -> list[bool]:
  """Which lines belong to a runtime record: an absl log line of the C++ runtime and the lines
  that continue it (up to a log line of ours, a traceback or the next record)."""
  flags, in_record = [], False
  for line in lines:
    if _RUNTIME_RECORD.match(line):
      in_record = True
    elif _PY_LOG.match(line) or line.startswith("Traceback"):
      in_record = False
    flags.append(in_record)
  return flags


class _HeldStderr:
  """Copies the trainer's stderr to ours, every line :data:`HOLD_SECONDS` late. From the
  runtime's fatal line on, the runtime records still held are kept apart (the fatal report), and
  so are those held when the trainer ends on a fault: its dying runtime's last words."""

  def __init__(self, stream, out):
    self._out = out
    self._held: list[tuple[float, str]] = []
    self._lock = threading.Lock()
    self.fatal_text: list[str] = []
    self._thread = threading.Thread(target=self._read, args=(stream,), daemon=True)
    self._thread.start()

  def _read(self, stream) -> None:
    for raw in iter(stream.readline, b""):
      line = raw.decode(errors="replace")
      with self._lock:
        if self.fatal_text:
          self.fatal_text.append(line)
        elif _FATAL in line:  # the records that led up to it go with it
          self.fatal_text = self._take_records() + [line]
        else:
          self._held.append((time.monotonic(), line))

  def _take_records(self) -> list[str]:
    flags = runtime_records([l for _, l in self._held])
    records = [l for (_, l), f in zip(self._held, flags) if f]
    self._held = [h for h, f in zip(self._held, flags) if not f]
    return records

  def release(self, older_than: float) -> None:
    with self._lock:
      while self._held and self._held[0][0] <= older_than:
        self._out.write(self._held.pop(0)[1])
    self._out.flush()

  def finish(self, ended_well: bool) -> str:
    """Copies what is left once the trainer ended; returns the runtime's fatal report."""
    self._thread.join(timeout=10)
    with self._lock:
      if not ended_well:
        records = self._take_records()  # without a fatal line: noise of the runtime's end
        if self.fatal_text:
          self.fatal_text += records
    self.release(float("inf"))
    return "".join(self.fatal_text)


class _Reports:
  """The trainer's reports (JSON lines on a pipe), read as they come."""

  def __init__(self, fd: int):
    self.latest: dict[str, Any] = {}
    self._thread = threading.Thread(target=self._read, args=(fd,), daemon=True)
    self._thread.start()

  def _read(self, fd: int) -> None:
    with os.fdopen(fd, "rb") as stream:
      for raw in stream:
        try:
          self.latest.update(json.loads(raw))
        except ValueError:
          continue

  def finish(self) -> dict[str, Any]:
    self._thread.join(timeout=10)
    return self.latest


def _resumable_step(workdir: str, timeout_s: float = 20.0) -> int | None:
  """The newest finished checkpoint (what a restart resumes from); None when there is none,
  :data:`UNKNOWN` when the workdir does not answer in time (a stalled bucket must not hang the
  supervisor)."""
  # Imported here, untimed (orbax takes seconds to import on a busy host): only the storage
  # calls are bounded.
  from dwm_jax.train import checkpoint as ckpt  # pylint: disable=import-outside-toplevel
  found: list[int | None] = [UNKNOWN]

  def look() -> None:
    try:
      steps = ckpt.finished_steps(workdir)
      found[0] = steps[-1] if steps else None
    except Exception:  # pylint: disable=broad-except  (an unreadable workdir: not known)
      pass
  thread = threading.Thread(target=look, daemon=True)
  thread.start()
  thread.join(timeout_s)
  return found[0]


def run(cmd: Sequence[str], *, prog: str, workdir: str, setup: distributed.Setup,
        resumable_step: Callable[[str], int | None] = _resumable_step) -> int:
  """Runs ``cmd`` (the trainer) under supervision; returns the exit status to end with."""
  read_fd, write_fd = os.pipe()
  env = {**os.environ, distributed.SUPERVISOR_FD_ENV: str(write_fd),
         _SUPERVISOR_PID_ENV: str(os.getpid())}
  child = subprocess.Popen(list(cmd), env=env, pass_fds=(write_fd,), stderr=subprocess.PIPE,
                           start_new_session=True)
  os.close(write_fd)
  reports, stderr = _Reports(read_fd), _HeldStderr(child.stderr, sys.stderr)
  stops = []

  def forward(signum, frame) -> None:
    del frame
    stops.append(signum)
    if signum == signal.SIGINT and stops.count(signal.SIGINT) > 1:
      child.kill()  # a second Ctrl-C: stop now, without saving
    else:
      child.send_signal(signal.SIGTERM)  # save at the same step on every process, then stop
  previous = {s: signal.signal(s, forward) for s in (signal.SIGTERM, signal.SIGINT)}
  try:
    while child.poll() is None:
      time.sleep(0.1)
      stderr.release(time.monotonic() - HOLD_SECONDS)
  finally:
    for s, handler in previous.items():
      signal.signal(s, handler)
  fatal = stderr.finish(ended_well=child.returncode == 0)
  latest = reports.finish()
  end = Ending(returncode=child.returncode, step=latest.get("step"), line=latest.get("line"),
               status=latest.get("status"), runtime_text=fatal,
               process_id=latest.get("process_id", setup.process_id),
               num_processes=latest.get("num_processes", setup.num_processes))
  needs_checkpoint = bool(fatal) or (end.line is None and end.returncode < 0)
  line, status = verdict(prog, end, resume_from=resumable_step(workdir) if needs_checkpoint
                         else None, checkpoints=_checkpoints(workdir),
                         heartbeat_timeout_seconds=setup.heartbeat_timeout_seconds)
  if line:
    print(line, file=sys.stderr, flush=True)
  return status


def _checkpoints(workdir: str) -> str:
  from dwm_jax import paths  # pylint: disable=import-outside-toplevel
  return paths.join(paths.absolute(workdir), "checkpoints")


def trainer_command(argv: Sequence[str]) -> list[str]:
  """The command that runs ``dwm-jax pretrain ARGV`` as the supervised trainer."""
  return [sys.executable, "-m", "dwm_jax.main", *argv]


def die_with_parent() -> None:
  """In the trainer: be killed when the supervisor dies (kill -9 of the supervisor must take the
  trainer with it, as it would a plain process). Linux only; elsewhere a no-op."""
  if not sys.platform.startswith("linux"):
    return
  import ctypes  # pylint: disable=import-outside-toplevel
  pr_set_pdeathsig = 1
  try:
    ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, int(signal.SIGKILL), 0, 0, 0)
  except (OSError, AttributeError):
    return
  if str(os.getppid()) != os.environ.get(_SUPERVISOR_PID_ENV, str(os.getppid())):
    os._exit(RESTART)  # the supervisor died before prctl took effect  # pylint: disable=protected-access
