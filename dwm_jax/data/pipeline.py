"""Pretraining input pipeline (grain): log-mel source -> shuffled, cropped, normalised batches.

Graph (``grain.MapDataset``, lazily evaluated per index, then an ``IterDataset``)::

  source[i] -> shuffle(seed) -> repeat(num_epochs) -> random_map(crop + normalise, seed)
    -> [process_index::process_count] -> batch(B_local, drop_remainder) -> threads / processes

- ``shuffle`` before ``repeat``: grain reseeds the permutation with the epoch number, so every
  epoch has its own order, and epochs never mix inside one permutation.
- The crop is a ``random_map`` after ``repeat``: its generator is seeded by (seed, global position
  in the stream), so a clip is cropped differently every epoch, identically on every rerun, and
  independently of the number of processes or workers.
- Sharding slices the global stream, so the union of the processes' batches ``b`` is exactly the
  single-process global batch ``b`` (disjoint, covering; every host takes the same step count).
- Iterators of the returned dataset support ``get_state()`` / ``set_state(state)`` (a small
  JSON-able dict): a restored iterator continues with exactly the batches the original would
  have produced. Restore with the same config, batch size, process layout and num_workers.
"""
from __future__ import annotations

import math

import grain
import numpy as np

from dwm_jax.data.log_mel import EPS, LogMelSpec
from dwm_jax.data.sources import AudioSource, LogMelSource, NpySource, SyntheticSource
from dwm_jax.data.stats import load_stats

SOURCES = ("synthetic", "npy", "audio", "tfds")
# Value of silence (zero power) in raw log-mel; short clips are padded with it.
PAD_VALUE = float(np.log(np.float32(EPS)))


def make_source(data_cfg, n_mels: int = 80) -> LogMelSource:
  """The raw log-mel source named by ``data_cfg.source``; errors name the missing piece."""
  spec = LogMelSpec(n_mels=n_mels)
  name = data_cfg.source
  if name == "synthetic":
    s = data_cfg.synthetic
    return SyntheticSource(s.num_clips, s.seconds, s.seed, spec)
  if name == "npy":
    if not data_cfg.csv:
      raise ValueError("data.source='npy' needs data.csv (the files.csv written by prepare)")
    return NpySource(data_cfg.csv, n_mels=n_mels)
  if name == "audio":
    if not (data_cfg.csv or data_cfg.root):
      raise ValueError("data.source='audio' needs data.csv or data.root")
    return AudioSource(data_cfg.csv, data_cfg.root, spec)
  if name == "tfds":
    if not data_cfg.tfds_name:
      raise ValueError("data.source='tfds' needs data.tfds_name")
    from dwm_jax.data.tfds_source import TfdsSource  # TensorFlow only when asked for
    return TfdsSource(data_cfg.tfds_name, data_cfg.tfds_split, data_cfg.tfds_data_dir or None,
                      data_cfg.get("tfds_audio_key", "audio"), spec)
  raise ValueError(f"unknown data.source {name!r}; expected one of {SOURCES}")


def dataset_size(data_cfg) -> int:
  """Number of clips in the pretraining source (before sharding)."""
  return len(make_source(data_cfg))


def norm_stats(data_cfg) -> tuple[float, float]:
  """``(mean, std)``: from ``data_cfg.stats`` (a stats JSON) when set, else norm_mean/norm_std."""
  path = data_cfg.get("stats", "")
  if path:
    st = load_stats(path)
    return st.mean, st.std
  mean, std = float(data_cfg.norm_mean), float(data_cfg.norm_std)
  if not (math.isfinite(mean) and math.isfinite(std) and std > 0):
    raise ValueError(f"invalid normalisation statistics mean={mean} std={std}")
  return mean, std


def crop_or_pad(x: np.ndarray, frames: int, rng: np.random.Generator) -> np.ndarray:
  """``x: [F, T]`` -> ``[F, frames]``: a uniformly random window, or right-padded with silence."""
  t = x.shape[1]
  if t >= frames:
    start = int(rng.integers(0, t - frames + 1))
    return x[:, start:start + frames]
  return np.pad(x, ((0, 0), (0, frames - t)), constant_values=PAD_VALUE)


class CropNormalize:
  """``random_map`` transform: raw ``[F, T_i]`` -> ``{'logmel': [F, frames]}`` normalised."""

  def __init__(self, frames: int, mean: float, std: float):
    self.frames, self.mean, self.std = frames, np.float32(mean), np.float32(std)

  def __call__(self, x: np.ndarray, rng: np.random.Generator) -> dict:
    x = crop_or_pad(x, self.frames, rng)
    return {"logmel": ((x - self.mean) / self.std).astype(np.float32)}


def make_pretrain_loader(data_cfg, *, input_shape: tuple[int, int] = (80, 608),
                         global_batch_size: int, seed: int, process_index: int = 0,
                         process_count: int = 1,
                         num_epochs: int | None = None) -> grain.IterDataset:
  """Pretraining batches for this process.

  Args:
    data_cfg: ``base_config().data``.
    input_shape: ``(F, T)`` of the model input: ``F`` mel bins, random crops of ``T`` frames.
    global_batch_size: over all processes; divisible by ``process_count``.
    seed: shuffle / crop seed (0 <= seed < 2**31).
    process_index, process_count: ``jax.process_index()``, ``jax.process_count()``.
    num_epochs: None repeats forever.
  Returns:
    ``grain.IterDataset``; ``iter()`` yields ``{'logmel': float32 [B_local, F, T]}`` with
    ``B_local = global_batch_size // process_count``; the iterator has get_state/set_state.
  """
  n_mels, frames = int(input_shape[0]), int(input_shape[1])
  if global_batch_size <= 0 or global_batch_size % process_count:
    raise ValueError(f"global_batch_size {global_batch_size} must be a positive multiple of "
                     f"process_count {process_count}")
  if not 0 <= process_index < process_count:
    raise ValueError(f"process_index {process_index} not in [0, {process_count})")
  if not 0 <= seed < 2**31:
    raise ValueError(f"seed must be in [0, 2**31), got {seed}")
  mean, std = norm_stats(data_cfg)
  source = make_source(data_cfg, n_mels=n_mels)

  ds = grain.MapDataset.source(source)
  ds = ds.shuffle(seed=seed)
  ds = ds.repeat(num_epochs)
  # A different stream from the shuffle's, derived from the same seed.
  ds = ds.random_map(CropNormalize(frames, mean, std), seed=(seed + 0x5EED) % 2**32)
  ds = ds[process_index::process_count]
  ds = ds.batch(global_batch_size // process_count, drop_remainder=True)
  prefetch = max(0, int(data_cfg.prefetch))
  # Each prefetch thread assembles one whole batch; numpy FFT / soxr / file reads release the GIL.
  ds = ds.to_iter_dataset(grain.ReadOptions(num_threads=prefetch,
                                            prefetch_buffer_size=prefetch))
  workers = int(data_cfg.num_workers)
  if workers > 0:
    # grain's worker processes read absl flags; outside absl.app.run (scripts, notebooks,
    # pytest) they are unparsed, so take the defaults instead of failing.
    from absl import flags
    if not flags.FLAGS.is_parsed():
      flags.FLAGS.mark_as_parsed()
    ds = ds.mp_prefetch(grain.MultiprocessingOptions(num_workers=workers,
                                                     per_worker_buffer_size=max(1, prefetch)))
  return ds
