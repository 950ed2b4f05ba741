"""The output folder of ``dwm-jax embed``: per-file arrays, a commit log, and the index.

  OUT/embed.json           encoder fingerprint, model config, normalization, options, input
  OUT/frames/<key>.npy     [K, E] frame embeddings of one file (``--frames``)
  OUT/layers/<key>.npy     [K, L, E] every block's output (``--layers``; [:, -1] is frames)
  OUT/records/*.npz        the commit log: which files are done (and their clip embeddings)
  OUT/clips.npy            [n, E] clip embeddings, row i = index.csv row i   } when every file
  OUT/index.csv            file_name, seconds, frames                        } has a record
  OUT/embed_report.json    counts, hours, skipped files with their reasons   }

A file's arrays are written as its embeddings come back (rows appended to a ``.npy`` under
``OUT/.tmp``, or a local temporary folder for a bucket) and moved into place when it is whole;
then its record (name, clip embedding, seconds, frames) joins the commit log, flushed every
second. A file is done when its record is written: a killed run loses only files not yet
recorded (a moved array without a record is recomputed), never leaves a partial array under its
final name, and ``index.csv`` / ``clips.npy`` exist only while they cover every input file.
"""
from __future__ import annotations

import csv
import io
import json
import logging
import os
import queue
import shutil
import tempfile
import threading
import time
import uuid
from collections import Counter
from typing import Any, Callable

import numpy as np

from dwm_jax import faults, paths
from dwm_jax.data.audio_io import AudioError
from dwm_jax.evaluate.embed_stream import Result

log = logging.getLogger(__name__)

FORMAT = "dwm-jax-embeddings/1"
CONFIG, INDEX, CLIPS, REPORT = "embed.json", "index.csv", "clips.npy", "embed_report.json"
RECORDS, TMP = "records", ".tmp"
COMMIT_SECONDS = 1.0
# The settings that fix what the outputs hold: a rerun must give the same ones.
SAME_ON_RESUME = ("format", "input", "encoder.fingerprint", "outputs", "timestamps")


class OutputMismatch(faults.UsageFault):
  """``--out`` holds embeddings of another encoder, input or options."""


class WriteFault(faults.Fault):
  """Writing an output failed; the files recorded before stay done."""


def _get(d: dict, dotted: str) -> Any:
  for part in dotted.split("."):
    d = d.get(part, {}) if isinstance(d, dict) else {}
  return d


def check_same(out: str, old: dict, new: dict) -> None:
  """Raises :class:`OutputMismatch` naming the first setting that differs."""
  for field in SAME_ON_RESUME:
    if _get(old, field) != _get(new, field):
      raise OutputMismatch(
          f"{out} holds embeddings with {field} = {json.dumps(_get(old, field))}, not "
          f"{json.dumps(_get(new, field))}: give another --out, or the same encoder, input and "
          "options to continue it")


class NpyStream:
  """A local ``.npy`` written rows first: a header for 0 rows, the rows as they come, then the
  header again with their count (numpy pads headers so the row count can change in place)."""

  def __init__(self, path: str, row_shape: tuple[int, ...], dtype: np.dtype):
    self.path, self.row_shape, self.dtype, self.rows = path, tuple(row_shape), np.dtype(dtype), 0
    self.f = open(path, "wb")  # a local temporary file  # noqa: SIM115
    self.header = self._header(0)
    self.f.write(self.header)

  def _header(self, rows: int) -> bytes:
    b = io.BytesIO()
    np.lib.format.write_array_header_1_0(b, {"descr": np.lib.format.dtype_to_descr(self.dtype),
                                             "fortran_order": False,
                                             "shape": (rows,) + self.row_shape})
    return b.getvalue()

  def append(self, x: np.ndarray) -> None:
    self.f.write(np.ascontiguousarray(x, self.dtype).tobytes())
    self.rows += x.shape[0]

  def close(self) -> None:
    header = self._header(self.rows)
    assert len(header) == len(self.header), (len(header), len(self.header))
    self.f.seek(0)
    self.f.write(header)
    self.f.close()

  def discard(self) -> None:
    self.f.close()
    os.remove(self.path)


class _Writer:
  """One thread running queued writes in order; its first error is raised to the caller."""

  def __init__(self, depth: int = 16):
    self.q: queue.Queue = queue.Queue(depth)
    self.error: BaseException | None = None
    self.thread = threading.Thread(target=self._loop, daemon=True, name="embed-writer")
    self.thread.start()

  def _loop(self) -> None:
    while True:
      item = self.q.get()
      if item is None:
        return
      op, always = item
      if self.error is None or always:
        try:
          op()
        except BaseException as e:  # pylint: disable=broad-except  (raised in the caller)
          self.error = self.error or e

  def _raise(self) -> None:
    if self.error is not None:
      e, self.error = self.error, None
      if isinstance(e, faults.Fault):
        raise e
      raise WriteFault(f"writing the outputs failed ({faults.one_line(e)}); the files recorded "
                       "before are kept: fix the cause, then rerun the same command to "
                       "continue") from e

  def put(self, op: Callable[[], None], always: bool = False) -> None:
    """Queues ``op``; after an error only ``always`` ones run (and the error is raised here)."""
    if not always:
      self._raise()
    self.q.put((op, always))

  def close(self) -> None:
    self.q.put(None)
    self.thread.join()
    self._raise()


class Store:
  """``OUT`` for one process: the sink of :func:`dwm_jax.evaluate.embed_stream.run`."""

  def __init__(self, out: str, settings: dict, *, process: int = 0,
               on_done: Callable[[str, float, bool], None] | None = None):
    self.out, self.settings, self.process = out, settings, process
    self.frames_on = bool(settings["outputs"]["frames"])
    self.layers_on = bool(settings["outputs"]["layers"])
    self.dtype = np.dtype(settings["outputs"]["dtype"])
    self.run_id = uuid.uuid4().hex[:8]
    self.prefix = f"p{process:04d}-"
    self.on_done = on_done
    self.streams: dict[str, dict[str, NpyStream]] = {}
    self.pending: list[dict] = []
    self.last_flush = time.monotonic()
    self.seq = 0
    self.serial = 0
    self.writer: _Writer | None = None
    self.tmp = ""

  # ---------------------------------------------------------------- opening
  def open(self) -> dict[str, dict]:
    """Checks or writes ``embed.json``, clears this process's stale temporaries; returns the
    records of files already done (``{key: record}``)."""
    paths.check_writable(self.out)
    config = paths.join(self.out, CONFIG)
    if paths.isfile(config):
      check_same(self.out, json.loads(paths.read_text(config)), self.settings)
    else:
      paths.write_text(config, json.dumps(self.settings, indent=2))
    if paths.is_remote(self.out):
      self.tmp = tempfile.mkdtemp(prefix="dwm-jax-embed-")
    else:
      self.tmp = paths.join(self.out, TMP)
      paths.makedirs(self.tmp)
      for name in paths.listdir(self.tmp):
        if name.startswith(self.prefix):  # a killed run of this process left it: never moved
          paths.remove(paths.join(self.tmp, name))
    self.writer = _Writer()
    return {k: r for k, r in read_records(self.out).items() if r["status"] == "ok"}

  def clear_index(self) -> None:
    """Removes the index, clips and report: they stop covering the input once files change."""
    for name in (INDEX, CLIPS, REPORT):
      path = paths.join(self.out, name)
      if paths.exists(path):
        paths.remove(path)

  # ---------------------------------------------------------------- the sink
  def _stream(self, key: str, level: str, row_shape: tuple[int, ...]) -> NpyStream:
    per_key = self.streams.setdefault(key, {})
    if level not in per_key:
      self.serial += 1
      name = f"{self.prefix}{self.run_id}-{self.serial}.npy"
      per_key[level] = NpyStream(os.path.join(self.tmp, name), row_shape, self.dtype)
    return per_key[level]

  def frames(self, key: str, start: int, frames: np.ndarray, layers: np.ndarray | None) -> None:
    del start  # blocks come in order

    def op():
      if self.frames_on:
        self._stream(key, "frames", frames.shape[1:]).append(frames)
      if self.layers_on:
        self._stream(key, "layers", layers.shape[1:]).append(layers)
      self._flush_if_due()  # files done before a long one commit while it is still in flight

    if self.frames_on or self.layers_on:
      self.writer.put(op)

  def done(self, result: Result) -> None:
    def op():
      streams = self.streams.pop(result.key, {})
      try:
        for level, stream in streams.items():
          stream.close()
          paths.put_file(stream.path, paths.join(self.out, level, result.key + ".npy"))
      except BaseException:
        for stream in streams.values():  # what was not moved into place
          if os.path.exists(stream.path):
            os.remove(stream.path)
        raise
      seconds = (result.num_samples / 16000.0 if result.num_samples is not None
                 else (result.logmel_frames - 1) * 0.01)
      self._record(dict(file_name=result.key, status="ok", clip=result.clip, seconds=seconds,
                        frames=result.positions, reason="", detail=""))
      if self.on_done:
        self.on_done(result.key, seconds, True)

    self.writer.put(op)

  def failed(self, key: str, error: AudioError) -> None:
    def op():
      self._discard(key)
      log.warning("skipped %s: %s%s", key, error.reason, f" ({error.detail})" if error.detail
                  else "")
      self._record(dict(file_name=key, status="skipped", clip=None, seconds=0.0, frames=0,
                        reason=error.reason, detail=error.detail))
      if self.on_done:
        self.on_done(key, 0.0, False)

    self.writer.put(op)

  def abandoned(self, key: str) -> None:
    self.writer.put(lambda: self._discard(key))

  def _discard(self, key: str) -> None:
    for stream in self.streams.pop(key, {}).values():
      stream.discard()

  # ---------------------------------------------------------------- the commit log
  def _record(self, rec: dict) -> None:
    self.pending.append(rec)
    self._flush_if_due()

  def _flush_if_due(self) -> None:
    if self.pending and time.monotonic() - self.last_flush >= COMMIT_SECONDS:
      self._flush()

  def _flush(self) -> None:
    self.last_flush = time.monotonic()
    if not self.pending:
      return
    recs, self.pending = self.pending, []
    size = next((r["clip"].shape[0] for r in recs if r["clip"] is not None), 0)
    clips = np.stack([r["clip"] if r["clip"] is not None else np.zeros(size, np.float32)
                      for r in recs]).astype(np.float32)
    buf = io.BytesIO()
    np.savez(buf, file_name=np.array([r["file_name"] for r in recs]),
             status=np.array([r["status"] for r in recs]),
             seconds=np.array([r["seconds"] for r in recs], np.float64),
             frames=np.array([r["frames"] for r in recs], np.int64),
             reason=np.array([r["reason"] for r in recs]),
             detail=np.array([r["detail"] for r in recs]), clip=clips)
    self.seq += 1  # named by time first: read back in the order written
    name = f"{int(time.time() * 1000):013d}-{self.prefix}{self.run_id}-{self.seq:06d}.npz"
    paths.write_bytes(paths.join(self.out, RECORDS, name), buf.getvalue())

  def close(self) -> None:
    """Waits for every queued write, flushes the commit log; raises a write's error."""
    if self.writer is None:
      return
    self.writer.put(self._flush, always=True)  # files moved into place before an error count
    try:
      self.writer.close()
    finally:
      self.writer = None
      for key in list(self.streams):
        self._discard(key)
      if paths.is_remote(self.out):
        shutil.rmtree(self.tmp, ignore_errors=True)


# ---------------------------------------------------------------- reading back
def _record_files(out: str) -> list[str]:
  folder = paths.join(out, RECORDS)
  if not paths.isdir(folder):
    return []
  return [paths.join(folder, n) for n in paths.listdir(folder) if n.endswith(".npz")]


def _load(path: str):
  return np.load(io.BytesIO(paths.read_bytes(path)), allow_pickle=False)


def read_records(out: str, clips: bool = False) -> dict[str, dict]:
  """``{file_name: record}``, a file's ``ok`` record over a ``skipped`` one (newest wins among
  equals); each record has ``status, seconds, frames, reason, detail`` and ``at`` (its log
  file and row), ``clip`` too with ``clips``."""
  best: dict[str, dict] = {}
  for path in sorted(_record_files(out)):
    d = _load(path)
    for i, name in enumerate(d["file_name"].tolist()):
      rec = dict(status=str(d["status"][i]), seconds=float(d["seconds"][i]),
                 frames=int(d["frames"][i]), reason=str(d["reason"][i]),
                 detail=str(d["detail"][i]), at=(path, i))
      if clips:
        rec["clip"] = d["clip"][i]
      old = best.get(name)
      if old is None or rec["status"] == "ok" or old["status"] != "ok":
        best[name] = rec
  return best


def consolidate(out: str, keys: list[str], embedding_size: int, extra: dict | None = None
                ) -> dict | None:
  """Writes ``clips.npy``, ``index.csv`` and ``embed_report.json`` when every one of ``keys``
  has a record; returns the report (None, writing nothing, while some are missing)."""
  records = read_records(out)
  missing = [k for k in keys if k not in records]
  if missing:
    return None
  ok = [k for k in keys if records[k]["status"] == "ok"]
  row = {k: i for i, k in enumerate(ok)}
  local = tempfile.mkdtemp(prefix="dwm-jax-embed-index-")
  try:
    clips = np.lib.format.open_memmap(os.path.join(local, CLIPS), "w+", np.float32,
                                      (len(ok), embedding_size))
    by_file: dict[str, list[tuple[int, int]]] = {}
    for k in ok:
      path, i = records[k]["at"]
      by_file.setdefault(path, []).append((i, row[k]))
    for path, rows in by_file.items():  # one log file at a time: memory stays one file's
      src = _load(path)["clip"]
      for i, r in rows:
        clips[r] = src[i]
    clips.flush()
    del clips
    paths.put_file(os.path.join(local, CLIPS), paths.join(out, CLIPS))
  finally:
    shutil.rmtree(local, ignore_errors=True)
  text = io.StringIO(newline="")
  w = csv.writer(text)
  w.writerow(["file_name", "seconds", "frames"])
  w.writerows([k, f"{records[k]['seconds']:.6f}", records[k]["frames"]] for k in ok)
  paths.write_text(paths.join(out, INDEX), text.getvalue())
  skipped = [k for k in keys if records[k]["status"] != "ok"]
  report = {
      "output": out, "files": len(keys), "embedded": len(ok), "skipped": len(skipped),
      "skipped_by_reason": dict(Counter(records[k]["reason"] for k in skipped)),
      "skipped_files": [{"file": k, "reason": records[k]["reason"],
                         "detail": records[k]["detail"]} for k in skipped],
      "seconds_total": sum(records[k]["seconds"] for k in ok),
      **(extra or {})}
  paths.write_text(paths.join(out, REPORT), json.dumps(report, indent=2))
  return report
