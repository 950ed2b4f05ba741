"""Whole time-column masking (M2D's 1-D frame masking on the patch grid), exact count.

Audio events are localised in time, so hiding whole time steps (every frequency band of a column)
forces the model to infer content from neighbouring frames rather than from other bands of the
same frame. ``K = q * Fp + r``: ``q`` whole columns chosen uniformly, plus ``r`` patches of one
more uniformly chosen column (rows chosen uniformly), i.e. the over-full last column is trimmed
uniformly. ``Fp = 1`` reduces to random masking of single columns.

M2D's ``random_1d_mask`` drops spans of consecutive frames at random starts until the target is
reached and then unmasks from the tail; here columns are independent (span 1) and the remainder is
trimmed uniformly within one column, which keeps the law symmetric over time positions.

Hint: the usual hint swap (``hint.py``); at ``hint >= 1`` it is plain random masking.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from dwm_jax.masking import ops
from dwm_jax.masking.hint import hint_swap
from dwm_jax.masking.registry import register
from dwm_jax.patching import Grid


def column_mask(u_col: jnp.ndarray, u_row: jnp.ndarray, grid: Grid,
                num_masked: int) -> jnp.ndarray:
  """``num_masked // Fp`` whole columns + the remainder in one more column: ``bool [B, N]``.

  ``u_col: [B, Tp]`` and ``u_row: [B, Fp]`` are uniform noises that order the columns and rows.
  """
  full, rest = divmod(num_masked, grid.freq)
  # Exact-count selections, not ranks: the same sets (ties by lower index) without two argsorts.
  whole = ops.smallest_mask(u_col, full)                                 # [B, Tp]
  next_col = ops.smallest_mask(u_col, min(full + 1, grid.time)) & ~whole  # [B, Tp]
  rows = ops.smallest_mask(u_row, rest)                                  # [B, Fp]
  partial = next_col[:, None, :] & rows[:, :, None]                      # [B, Fp, Tp]
  mask = whole[:, None, :] | partial
  return mask.reshape(-1, grid.num_patches)


@register("time")
def time_masking(key: jax.Array, patches: jnp.ndarray, *, grid: Grid, num_masked: int,
                 hint: float | jnp.ndarray = 0.0, ratio: float | None = None) -> jnp.ndarray:
  """Time-column masking. ``patches: [B, N, P]`` (shape only) -> ``bool [B, N]``, exactly K."""
  del ratio
  b, n, _ = patches.shape
  k_draw, k_hint = jax.random.split(key)
  u_col, u_row = ops.uniforms(k_draw, b, grid.time, grid.freq)
  mask = column_mask(u_col, u_row, grid, num_masked)
  return hint_swap(k_hint, mask, num_masked, hint)
