"""A local staging folder mirrored to a bucket folder: how logs reach a ``gs://`` workdir.

Objects in a bucket cannot be appended to, and TensorBoard's event writer only appends to local
files. So a run on a bucket writes ``metrics.jsonl`` and the event files into a local staging
folder, and :class:`Mirror` uploads every file that changed since its last upload (whole: one
object write each, atomic) when :meth:`Mirror.request` is called (at each log step), in a
background thread so the loop never waits on the network; :meth:`Mirror.close` uploads what is
left and removes the staging folder. A resumed run first downloads the files it appends to
(``fetch``), so ``metrics.jsonl`` keeps the earlier rows.

Cost: each log step re-uploads the files that grew (``metrics.jsonl`` is about 600 bytes per
logged step, the events about 2 kB: a few MB by the end of a long run, uploaded once per log
interval). A run killed with ``kill -9`` loses at most the rows since the last upload; its
staging folder stays in the temporary directory.
"""
from __future__ import annotations

import logging
import os
import shutil
import tempfile
import threading
from typing import Sequence

from dwm_jax import faults, paths

log = logging.getLogger("dwm_jax.train")


class Mirror:
  """Uploads the files of a local folder to ``remote`` (see the module docstring)."""

  def __init__(self, remote: str, *, fetch: Sequence[str] = ()):
    self.remote = remote
    self.local = tempfile.mkdtemp(prefix="dwm-jax-staging-")
    for rel in fetch:
      if paths.exists(paths.join(remote, rel)):
        paths.copy_file(paths.join(remote, rel), os.path.join(self.local, rel))
    self._uploaded = self._stats()  # what was fetched is already there
    self._wanted, self._closing = threading.Event(), False
    self._warned = False
    self._thread = threading.Thread(target=self._run, name="dwm-jax-mirror", daemon=True)
    self._thread.start()

  def _stats(self) -> dict[str, tuple[int, int]]:
    out = {}
    for rel in paths.walk_files(self.local):
      st = os.stat(os.path.join(self.local, rel))
      out[rel] = (st.st_size, st.st_mtime_ns)
    return out

  def _upload_changed(self) -> None:
    # The stat is taken before the read: a file that grows meanwhile differs at the next sync.
    for rel, stat in self._stats().items():
      if self._uploaded.get(rel) != stat:
        paths.copy_file(os.path.join(self.local, rel), paths.join(self.remote, rel))
        self._uploaded[rel] = stat

  def _run(self) -> None:
    while True:
      self._wanted.wait()
      if self._closing:
        return
      self._wanted.clear()
      try:
        self._upload_changed()
      except Exception as e:  # pylint: disable=broad-except  (retried at the next request)
        if not self._warned:
          log.warning("uploading the logs to %s failed (%s); retrying at the next log step",
                      self.remote, faults.one_line(e))
          self._warned = True

  def request(self) -> None:
    """Uploads what changed, soon, in the background (requests made meanwhile coalesce)."""
    self._wanted.set()

  def close(self) -> None:
    """Uploads what is left (synchronously) and removes the staging folder; when that upload
    fails, the folder is kept and named in a warning."""
    self._closing = True
    self._wanted.set()
    self._thread.join()
    try:
      self._upload_changed()
    except Exception as e:  # pylint: disable=broad-except
      log.warning("uploading the logs to %s failed (%s); they are kept in %s", self.remote,
                  faults.one_line(e), self.local)
      return
    shutil.rmtree(self.local, ignore_errors=True)
