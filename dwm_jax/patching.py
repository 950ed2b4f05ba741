"""Patch grid conventions: the only module that knows the patch order.

A spectrogram is ``[F, T]`` (frequency bins x time frames; 80 x 608 by default, as in M2D).
Patches are ``ph x pw`` (16 x 16). The patch grid is ``(Fp, Tp) = (F // ph, T // pw)`` and is
flattened **frequency-major**: patch ``n`` sits at grid row ``f = n // Tp`` and column
``t = n % Tp``. Each patch's ``P = ph * pw`` values are flattened row-major (frequency, then time).
"""
from __future__ import annotations

from typing import NamedTuple

import jax.numpy as jnp
import numpy as np


class Grid(NamedTuple):
  """Patch grid shape ``(Fp, Tp)``: rows are frequency bands, columns time steps."""
  freq: int
  time: int

  @property
  def num_patches(self) -> int:
    return self.freq * self.time


def as_grid(grid) -> Grid:
  """Accepts a ``Grid`` or any ``(Fp, Tp)`` pair of positive ints."""
  if isinstance(grid, Grid):
    g = grid
  else:
    try:
      f, t = grid
    except (TypeError, ValueError) as e:
      raise ValueError(f"grid must be a (freq, time) pair, got {grid!r}") from e
    g = Grid(int(f), int(t))
  if g.freq < 1 or g.time < 1:
    raise ValueError(f"grid sizes must be positive, got {tuple(g)}")
  return g


def grid_for(input_shape: tuple[int, int], patch_size: tuple[int, int]) -> Grid:
  """Patch grid of an ``[F, T]`` input; both sides must divide evenly."""
  (f, t), (ph, pw) = input_shape, patch_size
  if f % ph or t % pw:
    raise ValueError(f"input {f}x{t} is not divisible by patch size {ph}x{pw}")
  return Grid(f // ph, t // pw)


def patch_coords(grid) -> tuple[np.ndarray, np.ndarray]:
  """Grid row (frequency) and column (time) of every flattened patch index: ``[N]``, ``[N]``."""
  g = as_grid(grid)
  n = np.arange(g.num_patches)
  return n // g.time, n % g.time


def patchify(x: jnp.ndarray, patch_size: tuple[int, int]) -> jnp.ndarray:
  """``x: [B, F, T]`` -> ``patches: [B, N, ph * pw]`` in frequency-major patch order."""
  b, f, t = x.shape
  ph, pw = patch_size
  g = grid_for((f, t), patch_size)
  x = x.reshape(b, g.freq, ph, g.time, pw)
  x = x.transpose(0, 1, 3, 2, 4)  # [B, Fp, Tp, ph, pw]
  return x.reshape(b, g.num_patches, ph * pw)


def unpatchify(patches: jnp.ndarray, grid, patch_size: tuple[int, int]) -> jnp.ndarray:
  """Inverse of :func:`patchify`: ``patches: [B, N, ph * pw]`` -> ``[B, F, T]``."""
  g = as_grid(grid)
  ph, pw = patch_size
  b = patches.shape[0]
  x = patches.reshape(b, g.freq, g.time, ph, pw).transpose(0, 1, 3, 2, 4)
  return x.reshape(b, g.freq * ph, g.time * pw)


def num_visible(num_patches: int, ratio: float) -> int:
  """MAE/M2D rounding: ``int(N * (1 - ratio))`` patches stay visible."""
  return int(num_patches * (1 - ratio))


def num_masked(num_patches: int, ratio: float) -> int:
  """``K = N - int(N * (1 - ratio))``: 190 patches at ratio 0.7 -> 133 masked, 57 visible."""
  return num_patches - num_visible(num_patches, ratio)
