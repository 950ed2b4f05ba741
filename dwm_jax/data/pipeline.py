"""Pretraining input pipeline (grain): log-mel source -> shuffled, cropped, normalised batches.

Graph (``grain.MapDataset``, lazily evaluated per index, then an ``IterDataset``)::

  range(len(source)) -> shuffle(seed) -> repeat(num_epochs) -> random_map(draw the window, seed)
    -> [process_index::process_count] -> batch(B_local, read the batch's windows at once)
    -> threads / processes

- ``shuffle`` before ``repeat``: grain reseeds the permutation with the epoch number, so every
  epoch has its own order, and epochs never mix inside one permutation.
- The window is drawn by a ``random_map`` after ``repeat``, before anything is read: a number
  ``u`` in [0, 1) seeded by (seed, global position in the stream), so a clip is cropped
  differently every epoch, identically on every rerun, and independently of the number of
  processes or workers; the source turns ``u`` into the window (:func:`sources.window`), so a
  layout that reads by range (the sharded one) reads only the window's bytes.
- The batch reads its clips itself, all at once (:meth:`sources.LogMelSource.batch`): each
  prefetch thread keeps ``B_local`` reads in flight, so a bucket's latency is paid once per
  batch. A batch is still one element of the ``MapDataset``, so worker processes take whole
  batches and a batch holds the same clips with any number of workers.
- Sharding slices the global stream, so the union of the processes' batches ``b`` is exactly the
  single-process global batch ``b`` (disjoint, covering; every host takes the same step count).
- Iterators of the returned dataset support ``get_state()`` / ``set_state(state)`` (a small
  JSON-able dict): a restored iterator continues with exactly the batches the original would
  have produced. Restore with the same config, batch size, process layout and num_workers.
"""
from __future__ import annotations

import concurrent.futures
import dataclasses
import json
import logging
import math
from typing import Iterator, Sequence

import grain
import numpy as np

from dwm_jax import paths
from dwm_jax.data.log_mel import LogMelSpec
from dwm_jax.data.sources import (PAD_VALUE, AudioSource, LogMelSource, NpySource, Request,
                                  SyntheticSource)
from dwm_jax.data.stats import RunningStats, Stats, load_stats

log = logging.getLogger(__name__)

SOURCES = ("synthetic", "npy", "shards", "audio", "tfds")


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
  if name == "shards":
    if not data_cfg.csv:
      raise ValueError("data.source='shards' needs data.csv (the clips.csv written by prepare "
                       "--layout shards)")
    from dwm_jax.data.shards import ShardSource  # tensorstore only when asked for
    return ShardSource(data_cfg.csv, n_mels=n_mels)
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
  """``(mean, std)``: from ``data_cfg.stats`` (a stats JSON) when set, else norm_mean/norm_std.

  A run with ``data.stats_crops > 0`` computes them first (:func:`with_run_stats`) and records
  them in ``norm_mean`` / ``norm_std`` of its config, so its checkpoints give the values it used.
  """
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


def draw_window(index: int, rng: np.random.Generator) -> Request:
  """``random_map`` transform: record index -> ``(index, u)``, where the window will go."""
  return int(index), float(rng.random())


class ReadBatch:
  """``batch_fn``: ``B`` requests -> ``{'logmel': float32 [B, F, frames]}``, normalised; the
  windows are read at once (:meth:`LogMelSource.batch`), short clips padded with silence."""

  def __init__(self, source: LogMelSource, frames: int, mean: float, std: float):
    self.source, self.frames = source, frames
    self.mean, self.std = np.float32(mean), np.float32(std)

  def __call__(self, requests: Sequence[Request]) -> dict:
    out = self.source.batch(list(requests), self.frames)
    out -= self.mean
    out /= self.std
    return {"logmel": out}


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

  ds = grain.MapDataset.range(len(source))
  ds = ds.shuffle(seed=seed)
  ds = ds.repeat(num_epochs)
  # A different stream from the shuffle's, derived from the same seed.
  ds = ds.random_map(draw_window, seed=(seed + 0x5EED) % 2**32)
  ds = ds[process_index::process_count]
  ds = ds.batch(global_batch_size // process_count, drop_remainder=True,
                batch_fn=ReadBatch(source, frames, mean, std))
  prefetch = max(0, int(data_cfg.prefetch))
  # Each prefetch thread reads one whole batch, all of its clips in flight at once.
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


# Stats crops: the file the run records its computed statistics in (WORKDIR/stats.json), and the
# random stream of the crops, apart from the pipeline's shuffle and crop streams.
STATS_FILE = "stats.json"
_STATS_STREAM = 0x57A75


def stats_crops(source: LogMelSource, *, num_crops: int, frames: int, seed: int,
                threads: int = 1) -> Iterator[np.ndarray]:
  """``num_crops`` training crops ``[F, frames]`` (raw log-mel), as the pipeline would crop them.

  Clips are drawn uniformly with replacement (the authors' ``np.random.randint``); each crop is a
  uniformly random window, or the clip right-padded with silence. Crop ``j`` has its own
  generator from ``(seed, j)``, so the crops do not depend on ``threads`` (clips loaded in
  parallel; reading and decoding release the GIL). Yields in order ``j = 0, 1, ...``.
  """
  if num_crops < 1:
    raise ValueError(f"stats crops: need at least one crop, got {num_crops}")
  if len(source) < 1:
    raise ValueError("stats crops: the data source is empty")
  clips = np.random.default_rng([seed, _STATS_STREAM]).integers(0, len(source), size=num_crops)

  def crop(j: int) -> np.ndarray:
    rng = np.random.default_rng([seed, _STATS_STREAM, j])
    return crop_or_pad(source[int(clips[j])], frames, rng)

  if threads <= 1:
    yield from map(crop, range(num_crops))
    return
  with concurrent.futures.ThreadPoolExecutor(threads) as pool:
    yield from pool.map(crop, range(num_crops))


def crop_stats(data_cfg, *, input_shape: tuple[int, int], seed: int, num_crops: int) -> Stats:
  """Mean and std over every value of :func:`stats_crops` of the source of ``data_cfg``."""
  source = make_source(data_cfg, n_mels=int(input_shape[0]))
  acc = RunningStats()
  for x in stats_crops(source, num_crops=num_crops, frames=int(input_shape[1]), seed=seed,
                       threads=max(1, int(data_cfg.num_workers), int(data_cfg.prefetch))):
    acc.add(x)
  return acc.result()


def _stats_record(config) -> dict:
  """What the computed statistics depend on (a recorded file is reused only if it matches)."""
  d = config.data
  keys = ("source", "csv", "root", "tfds_name", "tfds_data_dir", "tfds_split", "tfds_audio_key")
  return {"crops": int(d.stats_crops), "seed": int(config.seed),
          "input_shape": [int(v) for v in config.model.input_shape],
          "data": {**{k: d.get(k) for k in keys}, "synthetic": d.synthetic.to_dict()}}


def with_run_stats(config, workdir: str, *, write: bool = True):
  """``config``, with the run's normalization statistics in ``data.norm_mean`` / ``norm_std``.

  Unchanged when ``data.stats`` names a file or ``data.stats_crops`` is 0. Otherwise the mean and
  std of ``data.stats_crops`` random crops of the training data (the authors compute theirs at
  start the same way), deterministic from ``config.seed``. They are recorded in
  ``WORKDIR/stats.json`` with what they depend on (``write``: the primary process writes), and
  a rerun in the same workdir (a resume) reads them back instead of recomputing. Every process
  of a multi-host run computes the same values when the file is not shared.
  """
  d = config.data
  if d.get("stats") or int(d.get("stats_crops", 0)) <= 0:
    return config
  record = _stats_record(config)
  path = paths.join(workdir, STATS_FILE)
  stats = _recorded_stats(path, record)
  if stats is None:
    stats = crop_stats(d, input_shape=tuple(config.model.input_shape), seed=int(config.seed),
                       num_crops=int(d.stats_crops))
    log.info("normalization statistics of %d random crops of the training data: mean %.4f, "
             "std %.4f (%s)", d.stats_crops, stats.mean, stats.std, path)
    if write:
      paths.write_text(path, json.dumps({**dataclasses.asdict(stats), "computed_from": record},
                                        indent=2) + "\n")
  out = config.copy_and_resolve_references()
  out.data.norm_mean, out.data.norm_std = float(stats.mean), float(stats.std)
  return out


def _recorded_stats(path: str, record: dict) -> Stats | None:
  """The statistics in ``path`` if it was computed from ``record``'s crops, else None."""
  try:
    saved = json.loads(paths.read_text(path))
  except (OSError, ValueError):
    return None
  if saved.get("computed_from") != record:
    return None
  return load_stats(path)
