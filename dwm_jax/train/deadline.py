"""A bound on every wait of the run on a bucket: ``storage.timeout_seconds``, then one line.

The storage clients abandon a request that moves no data for ``storage.request_timeout_seconds``
and retry it with backoff (:func:`dwm_jax.paths.set_request_timeout`), but not every wait has a
bound of its own: orbax waits for its background writes, the input pipeline for its reads, and
TensorStore retries a request up to 32 times. So the loop runs each wait on a bucket inside
:meth:`Deadline.guard`. A watchdog thread that sees one outlast ``storage.timeout_seconds``
prints one line (what was waited for, where, for how long, and the last good checkpoint) and
ends the process with :class:`dwm_jax.paths.StorageTimeout`'s exit status (75: restart).

Ending the process is the only bound that always holds: the stuck call cannot be interrupted
from Python (it waits in C++), and nothing more can be written to a bucket that does not answer.
Nothing is lost that a rerun needs: the last committed checkpoint is intact, and the save that
was in flight has no commit marker, so the next start ignores and removes it. Logs not yet
uploaded stay in the staging folder the line names. In a notebook this ends the kernel.
"""
from __future__ import annotations

import contextlib
import multiprocessing
import os
import sys
import threading
import time
from typing import Callable, Iterator

from dwm_jax import distributed, paths


def end_process(message: str) -> None:
  """Prints ``message`` as the command's one line (under the supervisor of a multi-process run:
  hands it to the supervisor, which prints it) and exits with StorageTimeout's status, without
  running exit handlers (they would wait on the same bucket)."""
  line, status = f"dwm-jax pretrain: {message}", paths.StorageTimeout.exit_status
  if distributed.supervised():
    # Not on stderr: the supervisor drops runtime records held when a trainer ends on a fault,
    # and a line printed right after one would go with it.
    distributed.report_end(line, status)
  else:
    print(line, file=sys.stderr, flush=True)
  sys.stdout.flush()
  for child in multiprocessing.active_children():  # the input pipeline's workers
    child.terminate()
  os._exit(status)  # pylint: disable=protected-access


class Deadline:
  """Guards waits on a bucket; ``state()`` adds what a rerun resumes from to the message."""

  def __init__(self, seconds: float, *, state: Callable[[], str] = lambda: "",
               on_expire: Callable[[str], None] = end_process, poll_seconds: float = 0.5):
    self.seconds = float(seconds)
    self._state, self._on_expire, self._poll = state, on_expire, poll_seconds
    self._waits: dict[int, tuple[str, str, float]] = {}
    self._next = 0
    self._lock = threading.Condition()
    self._thread: threading.Thread | None = None
    self._closed = False

  @contextlib.contextmanager
  def guard(self, what: str, where: str) -> Iterator[None]:
    """Bounds the ``with`` block when ``where`` is on a bucket (local paths pass through)."""
    if not paths.is_remote(where):
      yield
      return
    with self._lock:
      token, self._next = self._next, self._next + 1
      self._waits[token] = (what, where, time.monotonic())
      if self._thread is None:
        self._thread = threading.Thread(target=self._watch, name="dwm-jax-deadline",
                                        daemon=True)
        self._thread.start()
    try:
      yield
    finally:
      with self._lock:
        self._waits.pop(token, None)

  def message(self, what: str, where: str, waited: float) -> str:
    state = self._state()
    return (f"{what} {where} did not finish: the bucket has not answered for {waited:.0f} s "
            f"(storage.timeout_seconds={self.seconds:g})" + (f"; {state}" if state else "")
            + ". Rerun the same command once the bucket answers (it resumes)")

  def _watch(self) -> None:
    while True:
      with self._lock:
        if self._closed:
          return
        now = time.monotonic()
        expired = [(what, where, now - t0) for what, where, t0 in self._waits.values()
                   if now - t0 > self.seconds]
        if not expired:
          self._lock.wait(self._poll)
          continue
        self._closed = True
      what, where, waited = max(expired, key=lambda e: e[2])
      self._on_expire(self.message(what, where, waited))
      return

  def close(self) -> None:
    with self._lock:
      self._closed = True
      self._lock.notify_all()
