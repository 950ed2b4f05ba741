"""What the commands print: the log format, and an expected failure as one line.

Every ``dwm-jax`` command configures logging with :func:`setup_logging` (our progress lines;
orbax / absl / grain / fsspec / gcsfs only from WARNING) and reports a
:class:`dwm_jax.faults.Fault` with :func:`report_fault` (one line on stderr, the traceback only
with ``--debug`` or ``DWM_JAX_DEBUG=1``), returning its exit status.
"""
from __future__ import annotations

import logging
import sys
import traceback

from dwm_jax import faults

QUIET = ("absl", "orbax", "jax._src", "grain", "fsspec", "gcsfs")


class _StderrHandler(logging.StreamHandler):
  """Writes to whatever ``sys.stderr`` is at each record, not the stream of the first call: a
  command called in-process (tests, notebooks) whose caller swaps or closes stderr afterwards
  never logs into a closed file."""

  def __init__(self):
    super().__init__(sys.stderr)

  @property
  def stream(self):
    return sys.stderr

  @stream.setter
  def stream(self, value):
    del value


def setup_logging(level: str = "info") -> None:
  handler = _StderrHandler()
  handler.setFormatter(logging.Formatter("%(asctime)s %(levelname).1s %(name)s] %(message)s",
                                         datefmt="%H:%M:%S"))
  root = logging.getLogger()
  # Replace console handlers (ours from an earlier call, a plain stderr one, absl's), not the
  # ones a host program installed for itself (pytest's log capture, a notebook's).
  for old in list(root.handlers):
    if type(old) in (logging.StreamHandler, _StderrHandler) or type(old).__name__ == "ABSLHandler":
      root.removeHandler(old)
  root.addHandler(handler)
  root.setLevel(getattr(logging, level.upper()))
  # Orbax and absl report every save at INFO; keep the console to our progress lines.
  for name in QUIET:
    logging.getLogger(name).setLevel(max(logging.WARNING, getattr(logging, level.upper())))


def report_fault(prog: str, e: BaseException, *, debug: bool = False) -> int:
  """Prints an expected failure as one line (plus its traceback with ``debug``); returns the
  exit status. An ``OSError`` that is not a :class:`faults.Fault` (e.g. the disk filling while
  writing logs) is reported the same way, with status 1."""
  if faults.debug_enabled(debug):
    traceback.print_exception(e)
  line, status = fault_message(prog, e)
  print(line, file=sys.stderr)
  return status


def fault_message(prog: str, e: BaseException) -> tuple[str, int]:
  """``("prog: what happened, where, what to do", exit status)`` of an expected failure."""
  message = str(e) if isinstance(e, faults.Fault) else (
      f"{faults.one_line(e)}; the last checkpoint is intact, rerun the same command to resume "
      "once the cause is fixed")
  return f"{prog}: {message}", int(getattr(e, "exit_status", 1))
