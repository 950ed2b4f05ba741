"""AudioMAE-style time + frequency stripes, trimmed/filled to exactly K."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dwm_jax import masking, patching

from .helpers import assert_same_law_given_union, fill_then_swap_reference, jit_sample
from dwm_jax.masking import ops, time_frequency
from dwm_jax.patching import Grid


def test_stripes_are_whole_rows_and_columns():
  u_col, u_row = ops.uniforms(jax.random.key(0), 50, 64, 8)
  s = np.asarray(time_frequency.stripes(u_col, u_row, Grid(8, 64), 20, 3))
  s = s.reshape(50, 8, 64)
  assert ((s.all(1)).sum(-1) >= 20).all()         # >= : a column may also be full via rows
  assert ((s.all(2)).sum(-1) == 3).all()
  assert (s.sum((1, 2)) == 3 * 64 + 20 * 5).all()  # the union, counted once


def test_audiomae_counts_and_default_split():
  # AudioMAE: mask T - int(T * (1 - pt)) columns.
  assert masking.get("time_frequency").defaults == {"time_ratio": None, "freq_ratio": None}
  p = time_frequency.stripe_ratio(0.7)
  assert 1 - (1 - p) ** 2 == pytest.approx(0.7)


def test_columns_only_when_they_hit_k_exactly():
  # (8, 64) at ratio 0.5: K = 256 = 32 whole columns, time_ratio 0.5 masks 64 - 32 = 32.
  mask = np.asarray(jit_sample("time_frequency", jax.random.key(1), jnp.zeros((200, 512, 1)),
                               grid=(8, 64), ratio=0.5, time_ratio=0.5, freq_ratio=0.0))
  per_col = mask.reshape(200, 8, 64).sum(1)
  assert set(np.unique(per_col)) == {0, 8}
  assert ((per_col == 8).sum(-1) == 32).all()


def test_default_masks_mostly_whole_stripes():
  rows = 500
  mask = np.asarray(jit_sample("time_frequency", jax.random.key(2),
                               jnp.zeros((rows, 512, 1)), grid=(8, 64), ratio=0.7))
  assert (mask.sum(-1) == 512 - int(512 * 0.3)).all()
  g = mask.reshape(rows, 8, 64)
  in_stripe = g & (g.mean(1, keepdims=True) > 0.7) | g & (g.mean(2, keepdims=True) > 0.7)
  assert in_stripe.sum() / g.sum() > 0.9


def test_bad_fraction():
  with pytest.raises(ValueError, match="time_ratio must be in"):
    jit_sample("time_frequency", jax.random.key(0), jnp.zeros((1, 190, 1)), grid=(5, 38),
               ratio=0.7, time_ratio=1.5)


def _union(key, rows, grid):
  """The stripes the strategy draws from ``key`` (its first split), ``bool [rows, N]``."""
  fp, tp = grid
  b_col, b_row, b_fill = ops.draws(jax.random.split(key)[0], rows, tp, fp, fp * tp)
  counts = [patching.num_masked(m, time_frequency.stripe_ratio(0.7)) for m in (tp, fp)]
  union = time_frequency.stripes(ops.bits_to_uniform(b_col), ops.bits_to_uniform(b_row),
                                 Grid(*grid), *counts)
  return union, b_fill


@pytest.mark.parametrize("grid", [(5, 38), (8, 64)])
def test_the_grid_shaped_fill_is_the_flat_one(grid):
  # The fill runs on [B, Fp, Tp] (for XLA:CPU's sake); the masks are those of the flat steps.
  n, rows = grid[0] * grid[1], 64
  k = patching.num_masked(n, 0.7)
  key = jax.random.key(4)
  got = time_frequency.time_frequency_masking(key, jnp.zeros((rows, n, 1)), grid=Grid(*grid),
                                              num_masked=k, hint=0.0, ratio=0.7)
  union, b_fill = _union(key, rows, grid)
  np.testing.assert_array_equal(got, ops.fill_with_bits(b_fill, union, k))
  assert (np.asarray(got).sum(-1) == k).all()


@pytest.mark.parametrize("grid", [(4, 10), (3, 7)])
def test_fill_and_swap_in_one_selection_has_the_two_step_law(grid):
  # At h > 0 the trim/fill and the swap are one selection (hint.fill_and_swap). Its law must be
  # that of the two steps written out in numpy on the same stripes: trim or fill uniformly to
  # K, reveal n masked uniformly, re-mask n from the rest uniformly.
  n, rows, hint = grid[0] * grid[1], 4000, 0.5
  k = patching.num_masked(n, 0.7)
  key = jax.random.key(9)
  got = np.asarray(time_frequency.time_frequency_masking(
      key, jnp.zeros((rows, n, 1)), grid=Grid(*grid), num_masked=k, hint=hint, ratio=0.7))
  union = np.asarray(_union(key, rows, grid)[0])
  assert (got.sum(-1) == k).all()
  assert_same_law_given_union(got, fill_then_swap_reference(np.random.default_rng(0), union, k,
                                                            hint), union)
