"""Random-access log-mel sources: record ``i`` -> ``[F, T_i]``, and batches of crops read at once.

Every source returns the *raw* (unnormalised) log-mel of one clip, any length. File lists and the
files they name may be local or in a bucket (``gs://``, :mod:`dwm_jax.paths`).

The pipeline asks for a batch of crops (:meth:`LogMelSource.batch`): ``(index, u)`` requests,
where ``u`` in [0, 1) places each window (:func:`window`). Sources that can keep reads in flight
(prepared ``.npy`` files and the sharded layout, through tensorstore) issue every read of the
batch before waiting for any of them, so a bucket's latency is paid about once per batch rather
than once per clip; the sharded layout reads only the windows' bytes.

A record that fails to load is never allowed to stop a run: it is logged (path and reason) and
counted, and the next record in index order is used instead (same ``u``), so the output is still
a deterministic function of the request (needed for exact resumption).
"""
from __future__ import annotations

import abc
import csv
import io
import logging
import os
import threading
from typing import Any, Sequence

import numpy as np

from dwm_jax import faults, paths
from dwm_jax.data import audio_io
from dwm_jax.data.log_mel import EPS, LogMelSpec, log_mel

log = logging.getLogger(__name__)

# Give up after this many consecutive bad records: something is wrong with the data, not a file.
MAX_CONSECUTIVE_BAD = 64
# Value of silence (zero power) in raw log-mel; short clips are padded with it.
PAD_VALUE = float(np.log(np.float32(EPS)))
# Reads one process keeps in flight to a bucket (tensorstore's default is 32 per process).
BUCKET_REQUESTS_IN_FLIGHT = 256

Request = tuple[int, float]  # (record index, window position u in [0, 1))


def window(length: int, frames: int, u: float) -> tuple[int, int]:
  """``(start, stop)`` of the crop of a ``length``-frame record: ``frames`` frames starting at
  ``floor(u * (length - frames + 1))`` (uniform over the valid starts for uniform ``u``), or the
  whole record when it is shorter (the batch pads it with silence)."""
  if length <= frames:
    return 0, length
  start = min(int(u * (length - frames + 1)), length - frames)
  return start, start + frames


def put_window(row: np.ndarray, x: np.ndarray, u: float) -> None:
  """Writes the :func:`window` of ``x: [F, T]`` into ``row: [F, frames]`` (float32), padding a
  short record with silence."""
  start, stop = window(x.shape[1], row.shape[1], u)
  row[:, :stop - start] = x[:, start:stop]
  row[:, stop - start:] = PAD_VALUE


# A bucket request that keeps failing is retried for about a minute and a half (0.5, 1, 2, ...
# 16 s apart), then the storage counts as down (tensorstore's default waits up to 15 minutes).
BUCKET_RETRIES = {"max_retries": 10, "initial_delay": "0.5s", "max_delay": "16s"}
# tensorstore status codes that mean the storage failed (after the retries), not the record.
_STORAGE_DOWN = ("UNAVAILABLE", "ABORTED", "DEADLINE_EXCEEDED", "RESOURCE_EXHAUSTED",
                 "PERMISSION_DENIED", "UNAUTHENTICATED", "CANCELLED")


class StorageUnavailable(faults.RestartFault):
  """The data's storage stopped answering: the run stops (its last checkpoint resumes exactly)
  rather than skip records it could not read. Nothing to fix in the job: status 75."""


def tensorstore_context(cache_bytes: int = 0) -> Any:
  """A tensorstore context for one source in one process: up to
  :data:`BUCKET_REQUESTS_IN_FLIGHT` bucket requests at once, :data:`BUCKET_RETRIES`,
  ``cache_bytes`` of cache."""
  import tensorstore as ts  # pylint: disable=import-outside-toplevel
  return ts.Context({"gcs_request_concurrency": {"limit": BUCKET_REQUESTS_IN_FLIGHT},
                     "gcs_request_retries": BUCKET_RETRIES,
                     "cache_pool": {"total_bytes_limit": int(cache_bytes)}})


def read_error(e: Exception, where: str, scope: str = "record") -> "BadRecord":
  """A failed tensorstore read of one record -> :class:`BadRecord` ('corrupt' for a checksum
  or format error, else 'unreadable'); raises :class:`StorageUnavailable` when the storage,
  not the record, failed: skipping would silently drop data that is there."""
  text = " ".join(str(e).split())
  code = text.split(":", 1)[0]
  if code in _STORAGE_DOWN:
    raise StorageUnavailable(f"cannot read {where}: {text[:300]}. The storage did not answer "
                             "after retries: check the network and the bucket, then rerun (the "
                             "run resumes from its last checkpoint)") from e
  return BadRecord(where, "corrupt" if code == "DATA_LOSS" else "unreadable", text[:300], scope)


def open_kvstore(folder: str, context: Any) -> Any:
  """A tensorstore ``KvStore`` of ``folder`` (local or ``gs://``), or None where tensorstore
  cannot read it (other bucket schemes: the source then reads one record at a time)."""
  import tensorstore as ts  # pylint: disable=import-outside-toplevel
  try:
    spec = paths.kvstore_spec(folder)
  except ValueError:
    return None
  return ts.KvStore.open(spec, context=context).result()


# What a record that cannot be read raises (tensorstore reports I/O failures as ValueError).
READ_ERRORS = (audio_io.AudioError, OSError, ValueError, EOFError)


class BadRecord(Exception):
  """A record that cannot be turned into a log-mel; ``reason`` names why. ``scope`` is 'record',
  or the larger unit that failed with it (the sharded layout's 'shard')."""

  def __init__(self, where: str, reason: str, detail: str = "", scope: str = "record"):
    self.where, self.reason, self.scope = where, reason, scope
    super().__init__(f"{where}: {reason}" + (f" ({detail})" if detail else ""))


class LogMelSource(abc.ABC):
  """Base: subclasses implement ``__len__``, ``load(i) -> [F, T_i]`` and may name ``describe(i)``
  and read many windows at once (:meth:`read_into`)."""

  n_mels = 80  # mel bins of every record (subclasses set their own)

  def __init__(self):
    self.skipped: dict[str, int] = {}  # reason -> count (per process)
    self._skip_lock = threading.Lock()

  def __getstate__(self) -> dict:
    # Handles of open stores stay in the process that opened them (grain workers get a copy).
    state = {k: v for k, v in self.__dict__.items() if not k.startswith("_open")}
    state.pop("_skip_lock", None)
    return state

  def __setstate__(self, state: dict) -> None:
    self.__dict__.update(state)
    self._skip_lock = threading.Lock()

  @abc.abstractmethod
  def __len__(self) -> int:
    """Number of records."""

  @abc.abstractmethod
  def load(self, index: int) -> np.ndarray:
    """Raw log-mel ``[F, T_i]`` of record ``index``; raises BadRecord / AudioError when unusable."""

  def describe(self, index: int) -> str:
    return f"record {index}"

  def read_into(self, requests: Sequence[Request], out: np.ndarray) -> list[Any]:
    """One try per request, no fallback: writes the :func:`window` of each record into its row
    of ``out: float32 [len(requests), F, frames]`` (:func:`put_window`) and returns, per
    request, None or the exception that record raised. This default loads whole records one
    after another; sources that can keep reads in flight override it."""
    errors = []
    for row, (i, u) in zip(out, requests):
      try:
        put_window(row, self.load(i), u)
        errors.append(None)
      except (BadRecord, *READ_ERRORS) as e:
        errors.append(e)
    return errors

  def batch(self, requests: Sequence[Request], frames: int) -> np.ndarray:
    """Raw log-mel crops ``float32 [len(requests), F, frames]`` of ``(index, u)`` requests
    (:meth:`read_into`), every value finite: a record that fails or holds NaN/Inf is skipped and
    counted, and the next record takes its place with the same ``u``."""
    n = len(self)
    out = np.empty((len(requests), self.n_mels, frames), np.float32)
    todo = [(slot, i, u, 0) for slot, (i, u) in enumerate(requests)]
    view = out
    while todo:
      errors = self.read_into([(i, u) for _, i, u, _ in todo], view)
      finite = np.isfinite(view.reshape(len(todo), -1)).all(axis=1)
      retry = []
      for row, (slot, i, u, tries), error, ok in zip(view, todo, errors, finite):
        if error is None and not ok:
          error = BadRecord(self.describe(i), "nan")
        if error is None:
          if view is not out:
            out[slot] = row
          continue
        self._skip(i, error)
        if tries + 1 >= min(n, MAX_CONSECUTIVE_BAD):
          raise RuntimeError(f"{tries + 1} consecutive records from "
                             f"{self.describe(requests[slot][0])} failed to load; see the log "
                             "for reasons")
        retry.append((slot, self.replacement(i, error), u, tries + 1))
      todo = retry
      view = np.empty((len(todo), self.n_mels, frames), np.float32)
    return out

  def replacement(self, index: int, error: BaseException) -> int:  # pylint: disable=unused-argument
    """The record read instead of ``index``, which failed with ``error``: the next one."""
    return (index + 1) % len(self)

  def _skip(self, index: int, e: BaseException) -> None:
    reason = getattr(e, "reason", type(e).__name__)
    with self._skip_lock:
      self.skipped[reason] = self.skipped.get(reason, 0) + 1
      counts = dict(self.skipped)
    log.warning("skipping %s (%s): %s; total skipped by reason: %s", self.describe(index), reason,
                e, counts)

  def __getitem__(self, index: int) -> np.ndarray:
    n = len(self)
    for attempt in range(min(n, MAX_CONSECUTIVE_BAD)):
      i = (index + attempt) % n
      try:
        x = self.load(i)
        if not np.all(np.isfinite(x)):
          raise BadRecord(self.describe(i), "nan")
        return x
      except (BadRecord, *READ_ERRORS) as e:
        self._skip(i, e)
    raise RuntimeError(f"{min(n, MAX_CONSECUTIVE_BAD)} consecutive records from "
                       f"{self.describe(index)} failed to load; see the log for reasons")

  def __repr__(self) -> str:
    return f"{type(self).__name__}(len={len(self)})"


def read_file_list(csv_path: str | os.PathLike) -> tuple[str, list[str]]:
  """``(folder of the CSV, file_name column)``; clear errors for missing files or columns."""
  csv_path = os.fspath(csv_path)
  if not paths.isfile(csv_path):
    raise FileNotFoundError(f"file list CSV not found: {csv_path}")
  reader = csv.DictReader(io.StringIO(paths.read_text(csv_path), newline=""))
  if reader.fieldnames is None or "file_name" not in reader.fieldnames:
    raise ValueError(f"{csv_path}: needs a 'file_name' column, has {reader.fieldnames}")
  names = [row["file_name"] for row in reader if row["file_name"]]
  if not names:
    raise ValueError(f"{csv_path}: no files listed")
  return paths.parent(csv_path), names


def check_some_exist(root: str, names: list[str], what: str, probe: int = 16) -> None:
  """Fail fast on a wrong root: error if none of the first ``probe`` listed files exists."""
  head = names[:probe]
  if not any(paths.isfile(paths.join(root, n)) for n in head):
    raise FileNotFoundError(f"none of the first {len(head)} {what} listed exist under {root} "
                            f"(e.g. {paths.join(root, head[0])}); is the CSV in the data "
                            "folder?")


class NpySource(LogMelSource):
  """Prepared log-mel ``.npy`` files listed in a CSV (``file_name`` relative to the CSV): M2D's
  own layout, one object per clip. A batch's files are requested all at once (tensorstore), so
  from a bucket each clip costs one request but the batch waits about one round trip."""

  def __init__(self, csv_path: str | os.PathLike, n_mels: int = 80):
    super().__init__()
    self.root, self.names = read_file_list(csv_path)
    self.n_mels = n_mels
    check_some_exist(self.root, self.names, ".npy files")
    self._open_lock = threading.Lock()
    self._open_store = None

  def __setstate__(self, state: dict) -> None:
    super().__setstate__(state)
    self._open_lock, self._open_store = threading.Lock(), None

  def __len__(self) -> int:
    return len(self.names)

  def describe(self, index: int) -> str:
    return paths.join(self.root, self.names[index])

  def load(self, index: int) -> np.ndarray:
    path = paths.join(self.root, self.names[index])
    try:
      f = paths.open(path, "rb")  # one request for a bucket object: no separate exists()
    except (FileNotFoundError, IsADirectoryError) as e:
      raise BadRecord(path, "missing") from e
    with f:
      return np.asarray(self._decode(path, f), np.float32)

  def _decode(self, path: str, f: Any) -> np.ndarray:
    try:
      x = np.load(f, allow_pickle=False)
    except Exception as e:
      raise BadRecord(path, "unreadable") from e
    if x.ndim == 3 and x.shape[0] == 1:  # M2D's wav_to_lms writes [1, F, T]
      x = x[0]
    if x.ndim != 2 or x.shape[0] != self.n_mels or x.shape[1] == 0:
      raise BadRecord(path, f"shape {x.shape} is not [{self.n_mels}, T]")
    return x

  def _store(self) -> Any:
    with self._open_lock:
      if self._open_store is None:
        self._open_store = open_kvstore(self.root, tensorstore_context()) or False
      return self._open_store

  def read_into(self, requests: Sequence[Request], out: np.ndarray) -> list[Any]:
    store = self._store()
    if not store:
      return super().read_into(requests, out)
    futures = [store.read(self.names[i]) for i, _ in requests]  # all in flight, then wait
    errors = []
    for row, (i, u), future in zip(out, requests, futures):
      path = self.describe(i)
      try:
        result = future.result()
        if result.state != "value":
          raise BadRecord(path, "missing")
        put_window(row, self._decode(path, io.BytesIO(result.value)), u)
        errors.append(None)
      except BadRecord as e:
        errors.append(e)
      except READ_ERRORS as e:
        errors.append(read_error(e, path))
    return errors


class AudioSource(LogMelSource):
  """Audio files (a CSV's ``file_name`` list, or every audio file under ``root``), decoded and
  converted to log-mel in the pipeline's workers."""

  def __init__(self, csv_path: str | os.PathLike = "", root: str | os.PathLike = "",
               spec: LogMelSpec = LogMelSpec()):
    super().__init__()
    if csv_path:
      self.root, self.names = read_file_list(csv_path)
      check_some_exist(self.root, self.names, "audio files")
    elif root:
      self.root, self.names = os.fspath(root), audio_io.find_audio_files(root)
      if not self.names:
        raise FileNotFoundError(f"no audio files ({', '.join(audio_io.AUDIO_EXTENSIONS)}) "
                                f"under {root}")
    else:
      raise ValueError("AudioSource needs a csv or a root folder")
    self.spec, self.n_mels = spec, spec.n_mels

  def __len__(self) -> int:
    return len(self.names)

  def describe(self, index: int) -> str:
    return paths.join(self.root, self.names[index])

  def load(self, index: int) -> np.ndarray:
    wave = audio_io.load_audio(paths.join(self.root, self.names[index]), self.spec.sample_rate)
    return log_mel(wave, self.spec)


class SyntheticSource(LogMelSource):
  """The built-in synthetic clips (:mod:`dwm_jax.data.synthetic`), synthesised on first access.

  Each clip's log-mel is a pure function of ``(index, seed, seconds, spec)``, so it is computed
  once per process and kept in memory (random crops still differ per epoch: they happen
  downstream). ``cache_mb`` bounds that memory: clips beyond it are synthesised on every access.
  Grain worker processes each hold their own cache.
  """

  def __init__(self, num_clips: int, seconds: float = 6.08, seed: int = 0,
               spec: LogMelSpec = LogMelSpec(), cache_mb: float = 1024.0):
    super().__init__()
    if num_clips <= 0:
      raise ValueError(f"synthetic num_clips must be positive, got {num_clips}")
    if cache_mb < 0:
      raise ValueError(f"synthetic cache_mb must be >= 0, got {cache_mb}")
    self.num_clips, self.seconds, self.seed, self.spec = num_clips, seconds, seed, spec
    self.n_mels = spec.n_mels
    from dwm_jax.data.log_mel import num_frames
    clip_bytes = 4 * spec.n_mels * num_frames(int(round(seconds * spec.sample_rate)), spec)
    # The first ``max_cached`` indices are cached; a fixed set keeps memory bounded without
    # eviction bookkeeping (a shuffled epoch visits every index once, so LRU would not help).
    self.max_cached = min(num_clips, int(cache_mb * 2**20) // max(1, clip_bytes))
    self._cache: dict[int, np.ndarray] = {}

  def __len__(self) -> int:
    return self.num_clips

  def describe(self, index: int) -> str:
    return f"synthetic clip {index} (seed {self.seed})"

  def _synthesize(self, index: int) -> np.ndarray:
    # Imported lazily: keeps scipy.signal out of processes that never synthesise.
    from dwm_jax.data.synthetic import synthesize_clip
    wave, _ = synthesize_clip(index, seed=self.seed, seconds=self.seconds,
                              sample_rate=self.spec.sample_rate)
    return log_mel(wave, self.spec)

  def load(self, index: int) -> np.ndarray:
    if index >= self.max_cached:
      return self._synthesize(index)
    x = self._cache.get(index)
    if x is None:
      # Prefetch threads may race on a clip: both compute the same array, one is kept.
      x = self._synthesize(index)
      x.setflags(write=False)  # shared by every epoch's crop: nobody may modify it in place
      self._cache[index] = x
    return x
