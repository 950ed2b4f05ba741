"""Host-side fine-tuning data: one task split into train / valid / test, and the train batches.

Training sees ``window``-frame crops of the clips; evaluation sees the same kind of input: full
windows covering each clip (every ``window`` frames, the last one aligned with the clip's end;
a clip shorter than a window is padded), and a clip's embedding is the mean of its windows'.
(``dwm_jax.evaluate.embed`` instead encodes a short last window on its own real columns, which
training crops never show the encoder: a 2.08 s clip has one such 1-column window.)

The train batch of step ``s`` is a pure function of ``(seed, s)``: epoch ``e = s // spe`` visits
the clips in the order of a permutation seeded with ``(seed, e)`` (the last batch of an epoch
wraps around to its first clips, so every batch is full and shapes are static), and each clip's
crop start is drawn from a generator seeded with ``(seed, s)``. So a resumed run needs no
iterator state to see exactly the batches it would have seen, and the batch is gathered with
one vectorized fancy index (no loop over the batch).
"""
from __future__ import annotations

import dataclasses

import numpy as np

from dwm_jax.data.labeled import Task
from dwm_jax.evaluate import probe


@dataclasses.dataclass(frozen=True)
class TrainSet:
  """``logmel: [n, F, T_max]`` raw log-mels, padded with ``pad_value`` to ``T_max >= window``;
  ``lengths: [n]`` real frames; ``targets``: ``int32 [n]`` or multi-hot ``float32 [n, C]``."""
  logmel: np.ndarray
  lengths: np.ndarray
  targets: np.ndarray

  def __len__(self) -> int:
    return len(self.lengths)


@dataclasses.dataclass(frozen=True)
class Splits:
  """A task's clips per split for one seed (``valid`` held out of train when the task has none)."""
  train: tuple[list[np.ndarray], np.ndarray]
  valid: tuple[list[np.ndarray], np.ndarray]
  test: tuple[list[np.ndarray], np.ndarray]
  held_out: bool


def split_task(task: Task, seed: int) -> Splits:
  """The task's splits; without a valid split, the probe's seeded 10% hold-out of train."""
  xs, y = task.split("train")
  if len(task.split("valid")[0]):
    return Splits(task.split("train"), task.split("valid"), task.split("test"), False)
  (tr, ytr), (va, yva) = probe.holdout(np.arange(len(xs)), np.asarray(y), seed)
  return Splits(([xs[i] for i in tr], ytr), ([xs[i] for i in va], yva), task.split("test"), True)


def train_set(clips: list[np.ndarray], targets: np.ndarray, *, window: int,
              pad_value: float) -> TrainSet:
  """Stacks raw log-mels ``[F, T_i]`` into a padded ``[n, F, max(T_max, window)]`` array."""
  lengths = np.asarray([c.shape[1] for c in clips], np.int64)
  t_max = max(int(lengths.max()), window)
  out = np.full((len(clips), clips[0].shape[0], t_max), pad_value, np.float32)
  for i, c in enumerate(clips):  # once per task, not per step
    out[i, :, :c.shape[1]] = c
  y = np.asarray(targets)
  y = y.astype(np.float32) if y.ndim == 2 else y.astype(np.int32)
  return TrainSet(out, lengths, y)


def steps_per_epoch(n: int, batch_size: int) -> int:
  """``ceil(n / batch_size)``: every clip is seen once per epoch (the last batch wraps)."""
  return -(-n // batch_size)


def batch_indices(n: int, batch_size: int, seed: int, step: int) -> np.ndarray:
  """Clip indices of step ``step``'s batch: ``int64 [batch_size]``."""
  spe = steps_per_epoch(n, batch_size)
  epoch, i = divmod(int(step), spe)
  order = np.random.default_rng([int(seed), epoch]).permutation(n)
  return order[(i * batch_size + np.arange(batch_size)) % n]


def crop_starts(lengths: np.ndarray, window: int, seed: int, step: int,
                random: bool = True) -> np.ndarray:
  """Uniform crop starts in ``[0, T_i - window]`` (0 for clips of at most ``window`` frames)."""
  room = np.maximum(np.asarray(lengths) - window, 0)
  if not random:
    return np.zeros_like(room)
  u = np.random.default_rng([int(seed), int(step), 1]).random(len(room))
  return np.minimum(np.floor(u * (room + 1)).astype(np.int64), room)


def train_batch(data: TrainSet, *, batch_size: int, window: int, seed: int, step: int,
                random_crop: bool = True) -> dict[str, np.ndarray]:
  """``{"logmel": [B, F, window] raw, "targets": [B] | [B, C]}`` of step ``step``."""
  idx = batch_indices(len(data), batch_size, seed, step)
  starts = crop_starts(data.lengths[idx], window, seed, step, random_crop)
  f = data.logmel.shape[1]
  frames = starts[:, None, None] + np.arange(window)[None, None, :]
  x = data.logmel[idx[:, None, None], np.arange(f)[None, :, None], frames]
  return {"logmel": x, "targets": data.targets[idx]}


def window_starts(length: int, window: int) -> list[int]:
  """Starts of the evaluation windows of a clip: ``0, window, 2 window, ...`` while a window
  fits, then one aligned with the end if frames remain; ``[0]`` for a clip of at most
  ``window`` frames."""
  if length <= window:
    return [0]
  starts = list(range(0, length - window + 1, window))
  if starts[-1] + window < length:
    starts.append(length - window)
  return starts


def eval_windows(clips: list[np.ndarray], *, window: int, pad_value: float
                 ) -> tuple[np.ndarray, np.ndarray]:
  """``(windows [M, F, window] raw log-mels, owner [M])``: every clip's evaluation windows
  (:func:`window_starts`) and the clip each belongs to. Built once per split."""
  windows, owner = [], []
  for i, c in enumerate(clips):  # once per task, not per evaluation
    for s in window_starts(c.shape[1], window):
      w = c[:, s:s + window]
      if w.shape[1] < window:
        w = np.pad(w, ((0, 0), (0, window - w.shape[1])), constant_values=pad_value)
      windows.append(w)
      owner.append(i)
  return np.stack(windows).astype(np.float32), np.asarray(owner, np.int64)
