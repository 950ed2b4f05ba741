"""Expected failures: each is one exception type with a one-line message and an exit status.

The command-line entry points print ``str(fault)`` and exit with ``fault.exit_status`` (no
traceback unless ``--debug`` or ``DWM_JAX_DEBUG=1``); ``docs/faults.md`` lists every case.
Status 1: the run stopped on a fault (rerunning after the fix resumes); status 2: the request
itself cannot work (invalid config or arguments, does not fit); status 75 (``EX_TEMPFAIL``):
nothing to fix, restart the job with the same command (a lost peer process, a bucket that
stopped answering).
"""
from __future__ import annotations

import os

DEBUG_ENV = "DWM_JAX_DEBUG"


class Fault(Exception):
  """Base of the expected failures; ``exit_status`` is what the command exits with."""
  exit_status = 1


class UsageFault(Fault):
  """The request cannot work as given (config, arguments, sizes): fix it, then rerun."""
  exit_status = 2


class RestartFault(Fault):
  """Nothing to fix: the job stopped because of something outside it (a lost peer process, a stalled bucket);
  restarting it with the same command resumes from its last checkpoint."""
  exit_status = 75  # EX_TEMPFAIL (sysexits.h): "temporary failure, the user is invited to retry"


def one_line(e: BaseException, limit: int = 400) -> str:
  """``"TypeName: message"`` on one line; a longer message keeps its start and its end, where
  I/O libraries put the cause (e.g. tensorstore's '... No space left on device')."""
  text = " ".join(str(e).split())
  if len(text) > limit:
    text = f"{text[:limit * 5 // 8]} ... {text[-limit * 3 // 8:]}"
  return f"{type(e).__name__}: {text}"


def listing(items: list[str], shown: int = 3) -> str:
  """``"a, b, c and 4 more"``: a list kept short enough for a one-line message."""
  head = ", ".join(items[:shown])
  return f"{head} and {len(items) - shown} more" if len(items) > shown else head


def debug_enabled(flag: bool = False) -> bool:
  """``--debug`` or ``DWM_JAX_DEBUG=1``: show tracebacks of expected failures too."""
  return flag or os.environ.get(DEBUG_ENV, "").lower() in ("1", "true", "yes")
