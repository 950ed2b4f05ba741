"""Inverse block masking (data2vec 2.0 / EAT), fairseq ``compute_block_mask_2d`` semantics.

Blocks of *visible* patches: the keep-probability ``1 - ratio`` is what gets block-sampled, then
the result is inverted, so the encoder sees a few contiguous regions and must predict the rest.

Matched from ``compute_block_mask_2d`` (EAT's variant with ``img_shape``, as the DWM authors call it
through ``data2vec2_block_masking_wrapper`` with ``mask_length=5, mask_prob_adjust=0.07,
inverse_mask=True, require_same_masks=True, expand_adjcent=False, mask_dropout=0,
non_overlapping=False``):

* ``d = img_shape = (Fp, Tp)``; the ``[B, Fp, Tp]`` mask is viewed as ``[B, N]`` row-major, so a
  flat index ``n`` is row ``n // Tp`` (frequency), column ``n % Tp`` (time): our frequency-major
  order, no transpose needed.
* Centres: ``int(N * ((p + adjust) / L**2) * (1 + 0))`` flat indices drawn uniformly **with
  replacement** (``torch.randint``), ``p = 1 - ratio``; duplicates collapse. The float expression is
  evaluated in the same order so the count matches bit for bit (it may be 0 on tiny grids: then
  the fill below makes the mask uniformly random, as in the reference).
* Each centre grows rows ``r + i - L // 2`` and columns ``c + j - L // 2`` for ``i, j`` in
  ``range(L)``, each **clamped** to the grid (a block at the edge is cut, not shifted; for even
  ``L`` the block extends one more cell up/left than down/right).
* ``require_same_masks``: each row is trimmed (uniformly among its kept cells) or filled
  (uniformly among the others) to exactly ``int(N * p)`` kept cells, then inverted, so exactly
  ``K = N - int(N * (1 - ratio))`` patches are masked.

Hint: as in the authors' wrapper only ``hint >= 1`` matters (the whole mask becomes uniform random
masking); ``full_hint=True`` applies the usual hint swap instead (see ``hint.py``).

Vectorised: each clamped block is a rectangle ``[r0, r1] x [c0, c1]``, so the number of blocks
covering a cell is a sum over centres of row-interval x column-interval indicators (a batched
matmul); no scatter, no loops.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from dwm_jax.masking import ops
from dwm_jax.masking.hint import hint_swap
from dwm_jax.masking.registry import register
from dwm_jax.patching import Grid


def num_centres(num_patches: int, keep_prob: float, block_size: int, adjust: float) -> int:
  """fairseq's centre count ``int(N * ((p + adjust) / L**2) * (1 + mask_dropout))``, dropout 0."""
  return int(num_patches * ((keep_prob + adjust) / block_size**2) * (1 + 0.0))


def blocks_from_centres(centres: jnp.ndarray, grid: Grid, block_size: int) -> jnp.ndarray:
  """Union of the clamped ``L x L`` blocks around flat ``centres: int [B, C]``: ``bool [B, N]``."""
  row, col = centres // grid.time, centres % grid.time
  lo = -(block_size // 2)
  hi = lo + block_size - 1
  # Clamping every offset index is the same as clamping the two ends of the interval.
  r0, r1 = (jnp.clip(row + d, 0, grid.freq - 1) for d in (lo, hi))
  c0, c1 = (jnp.clip(col + d, 0, grid.time - 1) for d in (lo, hi))
  f = jnp.arange(grid.freq)
  t = jnp.arange(grid.time)
  in_rows = (f >= r0[..., None]) & (f <= r1[..., None])  # [B, C, Fp]
  in_cols = (t >= c0[..., None]) & (t <= c1[..., None])  # [B, C, Tp]
  # How many blocks cover each cell, as a batched matmul of the 0/1 intervals (exact: 0 and 1 in
  # any matmul precision, integer sums in float32). XLA:CPU computes a dot apart from its
  # consumers; an ``any`` over the centres was fused into the fill's key kernel with its random
  # bits, and the strategy ran 1.1-2.7x slower (measured, experiments/mask_cost/README.md).
  count = jnp.einsum("bcf,bct->bft", in_rows.astype(jnp.float32), in_cols.astype(jnp.float32))
  return (count > 0.5).reshape(centres.shape[0], grid.num_patches)


def uniform_centres(u: jnp.ndarray, num_patches: int) -> jnp.ndarray:
  """Flat indices uniform in ``[0, N)`` (``torch.randint``) from uniform noise ``u: [B, C]``."""
  return jnp.minimum(jnp.floor(u * num_patches), num_patches - 1).astype(jnp.int32)


@register("inverse_block", block_size=5, adjust=0.07, full_hint=False)
def inverse_block_masking(key: jax.Array, patches: jnp.ndarray, *, grid: Grid, num_masked: int,
                          hint: float | jnp.ndarray = 0.0, ratio: float | None = None,
                          block_size: int = 5, adjust: float = 0.07,
                          full_hint: bool = False) -> jnp.ndarray:
  """data2vec 2.0 inverse block masking. ``patches: [B, N, P]`` (shape only) -> ``bool [B, N]``.

  Options: ``block_size`` (L, > 1 as fairseq asserts), ``adjust`` (``mask_prob_adjust``),
  ``full_hint`` (hint swap at every hint instead of only ``hint >= 1`` -> random).
  """
  if int(block_size) != block_size or block_size < 2:
    raise ValueError(f"inverse_block block_size must be an integer >= 2, got {block_size!r}")
  block_size = int(block_size)
  b, n, _ = patches.shape
  n_keep = n - num_masked
  # fairseq counts centres from the float keep-probability, not from the rounded count.
  p = 1.0 - ratio if ratio is not None else n_keep / n
  n_centres = num_centres(n, p, block_size, adjust)
  if n_centres < 0:
    raise ValueError(f"inverse_block adjust={adjust} gives a negative block count at keep "
                     f"probability {p}")
  k_draw, k_hint = jax.random.split(key)
  bits_centres, bits_fill = ops.draws(k_draw, b, n_centres, n)
  blocks = blocks_from_centres(uniform_centres(ops.bits_to_uniform(bits_centres), n), grid,
                               block_size)
  mask = ~ops.fill_with_bits(bits_fill, blocks, n_keep)
  if full_hint:
    return hint_swap(k_hint, mask, num_masked, hint)
  return random_at_full_hint(k_hint, mask, jnp.int32(num_masked), jnp.asarray(hint, jnp.float32))


# A cond, not a select: below h = 1 the random mask is neither drawn nor selected; compiled for
# GPUs, where a cond's predicate is a host round trip, a select. jit (K traced): an eager caller
# would otherwise re-compile the cond (its branches close over the mask) at every call.
@jax.jit
def random_at_full_hint(key: jax.Array, mask: jnp.ndarray, num_masked: jnp.ndarray,
                        hint: jnp.ndarray) -> jnp.ndarray:
  """``mask: bool [B, N]``, or uniform random masking of ``num_masked`` where ``hint >= 1``."""
  b, n = mask.shape

  def randomised():
    return ops.random_mask(key, b, n, num_masked)

  return ops.on_host_predicate_platforms(
      lambda: jnp.where(hint >= 1.0, randomised(), mask),
      lambda: jax.lax.cond(hint >= 1.0, randomised, lambda: mask))
