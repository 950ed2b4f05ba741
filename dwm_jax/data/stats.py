"""Dataset log-mel statistics (the ``stats`` step): one mean and std over every bin and frame.

M2D normalises with scalar statistics of its training set; its AudioSet values (mean -7.1,
std 4.2) are ``dwm_jax.config.base_config().data``'s defaults. ``dwm-jax prepare`` writes
``stats.json`` next to the prepared files; ``data.stats`` in the config points the pipelines at it.
"""
from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Iterable

import numpy as np

from dwm_jax import paths

M2D_AUDIOSET_MEAN = -7.1
M2D_AUDIOSET_STD = 4.2


@dataclasses.dataclass(frozen=True)
class Stats:
  mean: float
  std: float
  num_clips: int
  num_values: int


class RunningStats:
  """Streaming sums in float64 (exact enough over billions of values, mergeable across workers)."""

  def __init__(self):
    self.n_clips, self.n, self.s, self.ss = 0, 0, 0.0, 0.0

  def add(self, logmel: np.ndarray) -> None:
    x = np.asarray(logmel, np.float64)
    if not np.all(np.isfinite(x)):
      raise ValueError("log-mel contains NaN or Inf; refusing to fold it into the statistics")
    self.n_clips += 1
    self.n += x.size
    self.s += float(x.sum())
    self.ss += float(np.square(x).sum())

  def merge(self, other: RunningStats) -> None:
    self.n_clips += other.n_clips
    self.n += other.n
    self.s += other.s
    self.ss += other.ss

  def result(self) -> Stats:
    if self.n == 0:
      raise ValueError("no log-mel values to compute statistics from")
    mean = self.s / self.n
    var = max(self.ss / self.n - mean * mean, 0.0)
    return Stats(mean=mean, std=float(np.sqrt(var)), num_clips=self.n_clips, num_values=self.n)


def compute_stats(logmels: Iterable[np.ndarray]) -> Stats:
  """Mean/std over all values of ``logmels`` (each ``[F, T_i]``, any length)."""
  acc = RunningStats()
  for x in logmels:
    acc.add(x)
  return acc.result()


def save_stats(path: str | os.PathLike, stats: Stats) -> None:
  paths.write_text(path, json.dumps(dataclasses.asdict(stats), indent=2) + "\n")


def load_stats(path: str | os.PathLike) -> Stats:
  d = json.loads(paths.read_text(path))
  missing = {"mean", "std"} - set(d)
  if missing:
    raise ValueError(f"{path}: stats JSON lacks {sorted(missing)}")
  if not (np.isfinite(d["mean"]) and np.isfinite(d["std"]) and d["std"] > 0):
    raise ValueError(f"{path}: invalid stats mean={d['mean']} std={d['std']}")
  return Stats(mean=float(d["mean"]), std=float(d["std"]),
               num_clips=int(d.get("num_clips", 0)), num_values=int(d.get("num_values", 0)))
