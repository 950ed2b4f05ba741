"""What ``dwm-jax embed`` reads: every file of a collection as a stream of log-mel chunks.

An input is a folder (every audio file ``prepare`` reads, searched recursively), a CSV with a
``file_name`` column (paths relative to the CSV's folder: audio files, or prepared ``.npy``
log-mels as ``probe`` reads them), a single file, or ``tfds:NAME`` (its splits, ArrayRecord);
folders, CSVs and files may be in a bucket (``gs://...``). Each file has a ``key``: its path
relative to the input (a TFDS record: ``SPLIT/INDEX``), which names its outputs.
"""
from __future__ import annotations

import csv
import dataclasses
import io
import os
import posixpath
import threading

import numpy as np

from dwm_jax import faults, paths
from dwm_jax.data import audio_io, audio_stream
from dwm_jax.data.log_mel import LogMelSpec, log_mel

NPY_CHUNK_FRAMES = 1000  # a prepared log-mel is read 10 s at a time (memory-mapped locally)


class InputError(faults.UsageFault):
  """The input is missing, empty or not one of the kinds ``dwm-jax embed`` reads."""


@dataclasses.dataclass(frozen=True)
class AudioFile:
  key: str
  path: str

  def logmel_chunks(self):
    return audio_stream.logmel_chunks(self.path)


@dataclasses.dataclass(frozen=True)
class LogMelFile:
  """A prepared ``[80, T]`` (or ``[1, 80, T]``) log-mel ``.npy``; returns no sample count."""
  key: str
  path: str

  def logmel_chunks(self):
    try:
      if paths.is_remote(self.path):
        x = np.load(io.BytesIO(paths.read_bytes(self.path)), allow_pickle=False)
      else:
        x = np.load(self.path, mmap_mode="r", allow_pickle=False)
    except FileNotFoundError as e:
      raise audio_io.AudioError(self.path, "missing") from e
    except Exception as e:  # pylint: disable=broad-except
      raise audio_io.AudioError(self.path, "unreadable", faults.one_line(e)) from e
    x = x[0] if x.ndim == 3 and x.shape[0] == 1 else x
    if x.ndim != 2 or x.shape[0] != LogMelSpec().n_mels:
      raise audio_io.AudioError(self.path, "unreadable", f"log-mel shape {list(x.shape)}")
    for a in range(0, x.shape[1], NPY_CHUNK_FRAMES):
      yield np.asarray(x[:, a:a + NPY_CHUNK_FRAMES], np.float32)
    return None


_tfds_local = threading.local()


@dataclasses.dataclass(frozen=True)
class TfdsRecord:
  """Record ``index`` of a TFDS split, decoded as ``probe`` does (one chunk: records are clips)."""
  key: str
  name: str
  split: str
  index: int
  data_dir: str | None
  rate: int
  audio_key: str = "audio"

  def logmel_chunks(self):
    from dwm_jax.data import sources, tfds_source  # pylint: disable=import-outside-toplevel
    if not hasattr(_tfds_local, "sources"):  # a data source per reader thread
      _tfds_local.sources = {}
    cache = _tfds_local.sources
    where = (self.name, self.split, self.data_dir)
    if where not in cache:
      cache[where] = tfds_source.open_data_source(*where)
    record = cache[where][self.index]
    try:
      wave = tfds_source.to_wave(record[self.audio_key], self.rate, 16000)
    except sources.BadRecord as e:
      raise audio_io.AudioError(self.key, e.reason) from e
    yield log_mel(wave)
    return int(wave.shape[0])


def _relative(name: str, where: str) -> str:
  """A CSV's ``file_name`` as a relative POSIX path, or an :class:`InputError`."""
  rel = posixpath.normpath(name.replace("\\", "/"))
  if (not name or paths.is_remote(name) or rel.startswith("/") or rel == ".."
      or rel.startswith("../")):
    raise InputError(f"{where}: file_name {name!r} must be a path relative to the CSV's folder "
                     "(outputs mirror it under --out)")
  return rel


def _source(key: str, path: str):
  return LogMelFile(key, path) if key.lower().endswith(".npy") else AudioFile(key, path)


def _from_csv(path: str) -> list:
  try:
    text = paths.read_text(path)
  except (FileNotFoundError, UnicodeDecodeError) as e:
    raise InputError(f"cannot read the CSV {path}: {faults.one_line(e)}") from e
  reader = csv.DictReader(io.StringIO(text, newline=""))
  if "file_name" not in (reader.fieldnames or ()):
    raise InputError(f"{path}: no file_name column (found {reader.fieldnames}); list the files "
                     "to embed in a column named file_name")
  root, seen, out = paths.parent(path), set(), []
  for i, row in enumerate(reader, start=2):
    rel = _relative((row["file_name"] or "").strip(), f"{path} line {i}")
    if rel not in seen:  # a file listed twice (e.g. in two splits) is embedded once
      seen.add(rel)
      out.append(_source(rel, paths.join(root, rel)))
  return out


def _from_tfds(name: str, splits: list[str] | None, data_dir: str | None) -> list:
  from dwm_jax.data import tfds_source  # pylint: disable=import-outside-toplevel
  try:
    tfds = tfds_source.import_tfds()
  except ImportError as e:
    raise InputError(str(e)) from e
  try:
    available = list(tfds.builder(name, data_dir=data_dir).info.splits.keys())
  except Exception as e:  # pylint: disable=broad-except  (unknown name, unprepared folder)
    raise InputError(f"cannot open TFDS {name!r} (data_dir={data_dir!r}): "
                     f"{faults.one_line(e)}") from e
  unknown = sorted(set(splits or ()) - set(available))
  if unknown:
    raise InputError(f"TFDS {name!r} has no split {faults.listing(unknown)} (splits: "
                     f"{', '.join(available)})")
  try:
    first = tfds_source.open_data_source(name, (splits or available)[0], data_dir)
  except ValueError as e:
    raise InputError(str(e)) from e
  rate = tfds_source.audio_sample_rate(first, "audio", 16000)
  out = []
  for split in splits or available:
    n = len(tfds_source.open_data_source(name, split, data_dir))
    width = len(str(max(n - 1, 0)))
    out += [TfdsRecord(f"{split}/{i:0{width}d}", name, split, i, data_dir, rate)
            for i in range(n)]
  return out


def find(spec: str, *, splits: list[str] | None = None, tfds_data_dir: str | None = None
         ) -> list:
  """The files of an input (see the module docstring), in a fixed order: a folder's sorted, a
  CSV's as listed (each once), a TFDS dataset's split by split."""
  if spec.startswith("tfds:"):
    return _from_tfds(spec[len("tfds:"):], splits, tfds_data_dir)
  if splits:
    raise InputError("--split is for tfds:NAME inputs")
  if paths.isdir(spec):
    files = audio_io.find_audio_files(spec)
    if not files:
      raise InputError(f"no audio files ({', '.join(audio_io.AUDIO_EXTENSIONS)}) under {spec}")
    return [AudioFile(rel, paths.join(spec, rel)) for rel in files]
  if not paths.isfile(spec):
    raise InputError(f"no input at {spec}: give a folder, a CSV with file_name, an audio file or "
                     "tfds:NAME")
  if spec.lower().endswith(".csv"):
    out = _from_csv(spec)
    if not out:
      raise InputError(f"{spec} lists no files")
    return out
  name = paths.name(spec)
  if os.path.splitext(name)[1].lower() not in audio_io.AUDIO_EXTENSIONS + (".npy",):
    raise InputError(f"{spec} is not an audio file ({', '.join(audio_io.AUDIO_EXTENSIONS)}), a "
                     ".npy log-mel or a CSV")
  return [_source(name, spec)]
