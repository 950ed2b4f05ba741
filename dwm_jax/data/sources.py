"""Random-access log-mel sources (grain ``RandomAccessDataSource``s): record ``i`` -> ``[F, T_i]``.

Every source returns the *raw* (unnormalised) log-mel of one clip, float32, any length. File
lists and the files they name may be local or in a bucket (``gs://``, :mod:`dwm_jax.paths`).
``LogMelSource.__getitem__`` never lets one bad record stop a run: a record that fails to load
is logged (path and reason) and counted, and the next record in index order is used instead, so
the output is still a deterministic function of the index (needed for exact resumption).
"""
from __future__ import annotations

import abc
import csv
import io
import logging
import os

import numpy as np

from dwm_jax import paths
from dwm_jax.data import audio_io
from dwm_jax.data.log_mel import LogMelSpec, log_mel

log = logging.getLogger(__name__)

# Give up after this many consecutive bad records: something is wrong with the data, not a file.
MAX_CONSECUTIVE_BAD = 64


class BadRecord(Exception):
  """A record that cannot be turned into a log-mel; ``reason`` names why."""

  def __init__(self, where: str, reason: str):
    self.where, self.reason = where, reason
    super().__init__(f"{where}: {reason}")


class LogMelSource(abc.ABC):
  """Base: subclasses implement ``__len__``, ``load(i) -> [F, T_i]`` and may name ``describe(i)``."""

  def __init__(self):
    self.skipped: dict[str, int] = {}  # reason -> count (per process)

  @abc.abstractmethod
  def __len__(self) -> int:
    """Number of records."""

  @abc.abstractmethod
  def load(self, index: int) -> np.ndarray:
    """Raw log-mel ``[F, T_i]`` of record ``index``; raises BadRecord / AudioError when unusable."""

  def describe(self, index: int) -> str:
    return f"record {index}"

  def __getitem__(self, index: int) -> np.ndarray:
    n = len(self)
    for attempt in range(min(n, MAX_CONSECUTIVE_BAD)):
      i = (index + attempt) % n
      try:
        x = self.load(i)
        if not np.all(np.isfinite(x)):
          raise BadRecord(self.describe(i), "nan")
        return x
      except (BadRecord, audio_io.AudioError, OSError, ValueError, EOFError) as e:
        reason = getattr(e, "reason", type(e).__name__)
        self.skipped[reason] = self.skipped.get(reason, 0) + 1
        log.warning("skipping %s (%s): %s; total skipped by reason: %s", self.describe(i), reason,
                    e, self.skipped)
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
  """Prepared log-mel ``.npy`` files listed in a CSV (``file_name`` relative to the CSV)."""

  def __init__(self, csv_path: str | os.PathLike, n_mels: int = 80):
    super().__init__()
    self.root, self.names = read_file_list(csv_path)
    self.n_mels = n_mels
    check_some_exist(self.root, self.names, ".npy files")

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
    try:
      with f:
        x = np.load(f, allow_pickle=False)
    except Exception as e:
      raise BadRecord(path, "unreadable") from e
    if x.ndim == 3 and x.shape[0] == 1:  # M2D's wav_to_lms writes [1, F, T]
      x = x[0]
    if x.ndim != 2 or x.shape[0] != self.n_mels or x.shape[1] == 0:
      raise BadRecord(path, f"shape {x.shape} is not [{self.n_mels}, T]")
    return np.asarray(x, np.float32)


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
    self.spec = spec

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
