"""AudioMAE-style time + frequency masking (``random_masking_2d``), finished to an exact count.

AudioMAE masks ``T - int(T * (1 - pt))`` uniformly chosen time columns and
``F - int(F * (1 - pf))`` uniformly chosen frequency rows (the union is hidden; the counts follow
its ``len_keep = int(n * (1 - p))`` rounding). The union rarely has exactly K patches, so each row
is then trimmed (uniformly among its masked patches) or filled (uniformly among the others) to
exactly ``K = N - int(N * (1 - ratio))``.

Defaults: ``time_ratio = freq_ratio = None`` means ``1 - sqrt(1 - ratio)`` for both, the equal
split whose union covers ``ratio`` of the grid before rounding, so the trim/fill stays small and
the mask keeps its stripe structure. Pass explicit fractions in [0, 1] to reproduce AudioMAE's
fine-tuning settings (e.g. 0.2 / 0.2 for AudioSet).

Hint: the usual hint swap (``hint.py``), drawn together with the trim/fill as one selection
(``hint.fill_and_swap``); at ``hint >= 1`` it is plain random masking.
"""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from dwm_jax.masking import ops
from dwm_jax.masking.hint import fill_and_swap
from dwm_jax.masking.registry import register
from dwm_jax.patching import Grid, num_masked as masked_count


def stripe_ratio(ratio: float) -> float:
  """Per-axis fraction ``1 - sqrt(1 - ratio)`` whose time x frequency union covers ``ratio``."""
  return 1.0 - math.sqrt(1.0 - ratio)


def stripes(u_col: jnp.ndarray, u_row: jnp.ndarray, grid: Grid, n_cols: int,
            n_rows: int) -> jnp.ndarray:
  """Union of ``n_cols`` time columns and ``n_rows`` frequency rows: ``bool [B, N]``.

  ``u_col: [B, Tp]`` and ``u_row: [B, Fp]`` are uniform noises; the smallest are masked.
  """
  return _stripes_grid(u_col, u_row, n_cols, n_rows).reshape(-1, grid.num_patches)


def _stripes_grid(u_col: jnp.ndarray, u_row: jnp.ndarray, n_cols: int,
                  n_rows: int) -> jnp.ndarray:
  """:func:`stripes` on the grid: ``bool [B, Fp, Tp]``."""
  # Exact-count selections: the sets of ``ranks(u) < n`` (ties by lower index), no argsorts.
  cols = ops.smallest_mask(u_col, n_cols)   # [B, Tp]
  rows = ops.smallest_mask(u_row, n_rows)   # [B, Fp]
  return rows[:, :, None] | cols[:, None, :]


def _fraction(name: str, value: float | None, default: float) -> float:
  value = default if value is None else float(value)
  if not 0.0 <= value <= 1.0:
    raise ValueError(f"time_frequency {name} must be in [0, 1], got {value}")
  return value


@register("time_frequency", time_ratio=None, freq_ratio=None)
def time_frequency_masking(key: jax.Array, patches: jnp.ndarray, *, grid: Grid, num_masked: int,
                           hint: float | jnp.ndarray = 0.0, ratio: float | None = None,
                           time_ratio: float | None = None,
                           freq_ratio: float | None = None) -> jnp.ndarray:
  """Time + frequency stripes, trimmed/filled to K. ``patches: [B, N, P]`` -> ``bool [B, N]``."""
  if ratio is None:
    ratio = num_masked / grid.num_patches
  default = stripe_ratio(ratio)
  pt = _fraction("time_ratio", time_ratio, default)
  pf = _fraction("freq_ratio", freq_ratio, default)
  b, n, _ = patches.shape
  k_draw, k_hint = jax.random.split(key)
  b_col, b_row, b_fill = ops.draws(k_draw, b, grid.time, grid.freq, n)
  n_cols, n_rows = masked_count(grid.time, pt), masked_count(grid.freq, pf)
  union = _stripes_grid(ops.bits_to_uniform(b_col), ops.bits_to_uniform(b_row), n_cols, n_rows)
  # Every row's union holds the same number of patches, so the fill and the swap are one
  # selection at h > 0. On the [B, Fp, Tp] grid: flattened first, the broadcast union and the
  # fused random bits made XLA:CPU's key kernel 4-5x slower (experiments/mask_cost/README.md).
  size = n_cols * grid.freq + n_rows * grid.time - n_cols * n_rows
  mask = fill_and_swap(k_hint, b_fill.reshape(union.shape), union, size, num_masked, hint)
  return mask.reshape(b, n)
