"""TFDS audio datasets read through ``tfds.data_source`` (ArrayRecord, random access, no tf.data).

TFDS's ``Audio`` feature needs TensorFlow to decode, so TensorFlow lives in the ``[tfds]`` extra;
everything else in dwm-jax works without it, and using a TFDS source without it says what to
install. Datasets must be prepared in ``array_record`` format (``tfds build
--file_format=array_record`` or ``builder.download_and_prepare(file_format=...)``).
"""
from __future__ import annotations

import numpy as np

from dwm_jax.data import audio_io
from dwm_jax.data.log_mel import LogMelSpec, log_mel
from dwm_jax.data.sources import BadRecord, LogMelSource

INSTALL_HINT = "TFDS sources need TensorFlow and tensorflow-datasets: pip install 'dwm-jax[tfds]'"


def import_tfds():
  """``tensorflow_datasets``, or an ImportError that says which extra to install."""
  try:
    import tensorflow  # noqa: F401  (the Audio feature decodes with it)
    import tensorflow_datasets as tfds
  except ImportError as e:
    raise ImportError(f"{INSTALL_HINT} ({e})") from e
  return tfds


def open_data_source(name: str, split: str, data_dir: str | None = None):
  """``tfds.data_source(name, split=split, data_dir=data_dir)`` with clear errors."""
  tfds = import_tfds()
  try:
    return tfds.data_source(name, split=split, data_dir=data_dir or None)
  except tfds.core.registered.DatasetNotFoundError as e:
    raise ValueError(f"unknown TFDS dataset {name!r} (data_dir={data_dir!r}): {e}") from e
  except (ValueError, KeyError, AssertionError, FileNotFoundError) as e:
    raise ValueError(f"cannot open TFDS {name!r} split {split!r} in ArrayRecord format "
                     f"(data_dir={data_dir!r}); prepare it with file_format='array_record': "
                     f"{e}") from e


def audio_sample_rate(data_source, audio_key: str, default: int) -> int:
  features = data_source.dataset_info.features
  if audio_key not in features:
    raise ValueError(f"TFDS dataset has no feature {audio_key!r}; features: {list(features)}")
  rate = getattr(features[audio_key], "sample_rate", None)
  return int(rate) if rate else default


def to_wave(audio: np.ndarray, rate: int, target_rate: int) -> np.ndarray:
  """TFDS audio (``[S]`` or ``[S, C]``, int or float) -> ``[S']`` float32 mono at target."""
  audio = np.asarray(audio)
  if np.issubdtype(audio.dtype, np.integer):
    audio = audio.astype(np.float32) / np.float32(np.iinfo(audio.dtype).max + 1)
  wave = audio_io.to_mono(audio.astype(np.float32))
  if wave.size == 0:
    raise BadRecord("tfds record", "empty")
  if not np.all(np.isfinite(wave)):
    raise BadRecord("tfds record", "nan")
  return audio_io.resample(wave, rate, target_rate)


class TfdsSource(LogMelSource):
  """Log-mels of a TFDS audio dataset split. The data source is reopened lazily in each worker
  process (pickling carries only the name, split and folder)."""

  def __init__(self, name: str, split: str = "train", data_dir: str | None = None,
               audio_key: str = "audio", spec: LogMelSpec = LogMelSpec()):
    super().__init__()
    self.name, self.split, self.data_dir, self.audio_key, self.spec = (
        name, split, data_dir or None, audio_key, spec)
    self.n_mels = spec.n_mels
    ds = self._source()
    self._len = len(ds)
    if self._len == 0:
      raise ValueError(f"TFDS {name!r} split {split!r} is empty")
    self.rate = audio_sample_rate(ds, audio_key, spec.sample_rate)

  def _source(self):
    if getattr(self, "_ds", None) is None:
      self._ds = open_data_source(self.name, self.split, self.data_dir)
    return self._ds

  def __getstate__(self):
    state = super().__getstate__()
    state["_ds"] = None
    return state

  def __len__(self) -> int:
    return self._len

  def describe(self, index: int) -> str:
    return f"tfds {self.name}/{self.split}[{index}]"

  def load(self, index: int) -> np.ndarray:
    record = self._source()[index]
    return log_mel(to_wave(record[self.audio_key], self.rate, self.spec.sample_rate), self.spec)
