"""Multi-host start-up: ``jax.distributed.initialize`` from flags or the environment.

One process per host (TPU VM worker, GPU node). Three ways to start, first match wins:
  1. explicit: ``--coordinator_address HOST:PORT --num_processes N --process_id I`` (or the
     environment variables ``JAX_COORDINATOR_ADDRESS``, ``JAX_NUM_PROCESSES``, ``JAX_PROCESS_ID``);
  2. ``--distributed`` alone: JAX's cluster auto-detection (Cloud TPU pods, SLURM, Open MPI);
  3. neither: a single-process run, nothing to initialize.
Must run before anything touches a JAX backend (device counts included).

How fast a lost peer is noticed is set here too: JAX's coordination service declares a process
dead after ``heartbeat_timeout_seconds`` without a heartbeat and then ends every other process
(fate sharing); a lost process 0, which hosts the service, ends the others at once. That end is a
C++ abort, so ``dwm-jax pretrain`` runs a multi-process job under :mod:`dwm_jax.supervisor`, and
the trainer tells its supervisor how far it got through :func:`report_step` / :func:`report_end`.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import os
import re
import sys
import time

from dwm_jax import faults

ENV = {"coordinator_address": "JAX_COORDINATOR_ADDRESS", "num_processes": "JAX_NUM_PROCESSES",
       "process_id": "JAX_PROCESS_ID"}
# JAX's default: long enough for a host that stalls for a while (a long GC pause, swapping, a
# slow network file system) not to be taken for a dead one on a real pod; tests set seconds.
HEARTBEAT_TIMEOUT_SECONDS = 100
SUPERVISOR_FD_ENV = "DWM_JAX_SUPERVISOR_FD"  # the write end of the pipe to the supervisor
# XLA's wait for the other processes inside one CPU (gloo) collective; XLA's own default is 30
# minutes. GPU and TPU collectives have no such setting: there, the heartbeat bounds a lost peer.
_CPU_COLLECTIVE_FLAG = "--xla_cpu_collective_timeout_seconds"

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class Setup:
  """How to start this process; all None and ``auto=False`` means single-process."""
  coordinator_address: str | None = None
  num_processes: int | None = None
  process_id: int | None = None
  auto: bool = False
  heartbeat_timeout_seconds: int = HEARTBEAT_TIMEOUT_SECONDS
  collective_timeout_seconds: int | None = None

  @property
  def explicit(self) -> bool:
    return self.coordinator_address is not None

  @property
  def multi_process(self) -> bool:
    return self.explicit or self.auto


def resolve(coordinator_address: str | None = None, num_processes: int | None = None,
            process_id: int | None = None, auto: bool = False,
            environ: dict[str, str] | None = None, *,
            heartbeat_timeout_seconds: int = HEARTBEAT_TIMEOUT_SECONDS,
            collective_timeout_seconds: int | None = None) -> Setup:
  """Flags first, then ``JAX_*`` environment variables; checks the explicit triple is complete."""
  env = os.environ if environ is None else environ
  if heartbeat_timeout_seconds < 1:
    raise ValueError(f"need heartbeat_timeout_seconds >= 1, got {heartbeat_timeout_seconds}")
  if collective_timeout_seconds is not None and collective_timeout_seconds < 1:
    raise ValueError(f"need collective_timeout_seconds >= 1, got {collective_timeout_seconds}")
  timeouts = dict(heartbeat_timeout_seconds=int(heartbeat_timeout_seconds),
                  collective_timeout_seconds=collective_timeout_seconds)
  addr = coordinator_address or env.get(ENV["coordinator_address"]) or None
  n = num_processes if num_processes is not None else env.get(ENV["num_processes"])
  i = process_id if process_id is not None else env.get(ENV["process_id"])
  if addr is None:
    if n is not None or i is not None:
      raise ValueError("num_processes/process_id given without a coordinator address "
                       f"(--coordinator_address or {ENV['coordinator_address']})")
    return Setup(auto=bool(auto), **timeouts)
  if n is None or i is None:
    raise ValueError(f"coordinator address {addr!r} given: also give --num_processes and "
                     f"--process_id (or {ENV['num_processes']} / {ENV['process_id']})")
  n, i = int(n), int(i)
  if n < 1 or not 0 <= i < n:
    raise ValueError(f"need num_processes >= 1 and 0 <= process_id < num_processes, got "
                     f"{n} and {i}")
  return Setup(addr, n, i, auto=False, **timeouts)


def initialize(setup: Setup) -> None:
  """Starts the JAX distributed runtime as ``setup`` says (no-op for a single process)."""
  if not setup.multi_process:
    return
  if setup.collective_timeout_seconds is not None:
    _set_xla_flag(_CPU_COLLECTIVE_FLAG, setup.collective_timeout_seconds)
  import jax

  heartbeat = dict(heartbeat_timeout_seconds=setup.heartbeat_timeout_seconds)
  if setup.explicit:
    _cpu_collectives()
    jax.distributed.initialize(setup.coordinator_address, setup.num_processes, setup.process_id,
                               **heartbeat)
  else:
    jax.distributed.initialize(**heartbeat)
  _send({"process_id": jax.process_index(), "num_processes": jax.process_count()})
  log.info("jax.distributed: process %d of %d, %d local / %d global devices; a process "
           "without heartbeat for %d s counts as lost", jax.process_index(), jax.process_count(),
           jax.local_device_count(), jax.device_count(), setup.heartbeat_timeout_seconds)


def _set_xla_flag(flag: str, value: int) -> None:
  """Adds ``flag=value`` to ``XLA_FLAGS`` (read when the backend starts) unless the user set it."""
  flags = os.environ.get("XLA_FLAGS", "")
  if flag not in flags:
    os.environ["XLA_FLAGS"] = f"{flags} {flag}={int(value)}".strip()


def _cpu_collectives() -> None:
  """CPU processes need a collectives implementation for cross-process pmap (gloo).

  Only the CPU backend reads this option, so setting it is harmless on GPU and TPU hosts.
  """
  import jax

  try:
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
  except (AttributeError, ValueError):  # option absent or renamed in this JAX
    pass


# The trainer's side of the link to its supervisor: one JSON object per line on an inherited
# pipe. Writes never block training (a full pipe drops the update: only the latest matters).
_link: dict[str, int | None] = {}


def _link_fd() -> int | None:
  if "fd" not in _link:
    value = os.environ.get(SUPERVISOR_FD_ENV, "")
    _link["fd"] = int(value) if value.isdigit() else None
    if _link["fd"] is not None:
      os.set_blocking(_link["fd"], False)
  return _link["fd"]


def supervised() -> bool:
  """Whether this process runs under :mod:`dwm_jax.supervisor`."""
  return _link_fd() is not None


def _send(message: dict) -> None:
  fd = _link_fd()
  if fd is None:
    return
  try:
    os.write(fd, (json.dumps(message) + "\n").encode())
  except (BlockingIOError, BrokenPipeError, OSError):
    pass  # a busy or gone supervisor must never stop training


def report_step(step: int) -> None:
  """Tells the supervisor that ``step`` is done (the step a peer-loss line names)."""
  _send({"step": int(step)})


def report_end(line: str, status: int) -> None:
  """Tells the supervisor the one line and exit status this process ends with."""
  _send({"line": line, "status": int(status)})


# Runtime errors of a cross-process collective whose peer went away (gloo on CPU, NCCL on GPU, the
# coordination service's cancellation): the run cannot continue, whatever the peer's fate.
# Named by what raised them, not by the symptom: "Connection refused" from a bucket is no peer's.
# A coordination-service barrier (orbax's save and the checkpoint clock's agreement use them)
# fails with "Barrier failed because: ... Task 1 heartbeat timeout".
# A coordination-service RPC that fails (its host, process 0, is gone) is a lost peer as well.
_COLLECTIVE = re.compile(r"\bgloo\b|\bnccl\b|collective|incarnation id|barrier failed|"
                         r"heartbeat timeout|coordination.?service", re.IGNORECASE)


def is_collective_failure(e: BaseException) -> bool:
  """Whether ``e`` is a cross-process collective that failed (a peer stopped or hangs)."""
  return isinstance(e, (RuntimeError, ValueError)) and bool(_COLLECTIVE.search(str(e)))


def collective_failure_in(e: BaseException) -> BaseException | None:
  """The failed collective behind ``e`` (``e`` itself or what it was raised from), if any."""
  seen = set()
  while e is not None and id(e) not in seen:
    if is_collective_failure(e):
      return e
    seen.add(id(e))
    e = e.__cause__ or e.__context__
  return None


class CollectiveFailure(faults.RestartFault):
  """A collective with the other processes failed: one of them stopped or cannot be reached."""

  def __init__(self, cause: BaseException):
    super().__init__(f"a collective with the other processes failed ({faults.one_line(cause)}): "
                     "another process stopped or cannot be reached. Restart the job with the same "
                     "command: it resumes from its last checkpoint")


def leave(status: int, heartbeat_timeout_seconds: int, *, peer_lost: bool = False) -> None:
  """Ends a process of a multi-process run that stopped on a fault, without JAX's shutdown
  barrier (which waits up to 5 minutes for processes that may be stuck in a collective).

  After a failed collective (``peer_lost``) it waits for the coordination service, which ends
  this process once it declares the peer lost (within the heartbeat timeout), so that the
  supervisor can name the lost process. After any other fault it waits, up to 10 s, for the
  other processes at a barrier: a fault every process meets at the same step (NaN loss, no
  readable checkpoint, a config they all reject) brings them all there, and each reports its own
  line before process 0, whose exit ends the others, leaves. A fault of this process alone lets
  the wait run out; the others, stuck waiting for it, then see it lost.
  """
  import jax  # pylint: disable=import-outside-toplevel
  if peer_lost:
    time.sleep(heartbeat_timeout_seconds + 10)
  elif jax.process_count() > 1:
    import orbax.checkpoint as ocp  # pylint: disable=import-outside-toplevel
    try:
      ocp.multihost.get_barrier_sync_fn()(
          key="dwm_jax_fault", timeout_ms=int(min(10, heartbeat_timeout_seconds) * 1000))
    except Exception:  # pylint: disable=broad-except  (the others did not come, or are gone)
      pass
  logging.shutdown()
  for stream in (sys.stdout, sys.stderr):
    stream.flush()
  os._exit(status)  # pylint: disable=protected-access
