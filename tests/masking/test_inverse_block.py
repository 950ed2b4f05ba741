"""Inverse block masking: fairseq's block geometry, centre count, block structure, hint rule."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dwm_jax.masking import inverse_block
from dwm_jax.patching import Grid

from .helpers import jit_sample, neighbour_pairs


def fairseq_blocks(centres, grid, length):
  """fairseq ``compute_block_mask_2d`` block growth, written from its description: flat centre
  -> (row, col) on the row-major ``[Fp, Tp]`` view; cells ``(r + i - L//2, c + j - L//2)``,
  each index clamped to the grid, set to 1."""
  fp, tp = grid
  out = np.zeros((len(centres), fp, tp), bool)
  for b, row in enumerate(centres):
    for c in row:
      r0, c0 = divmod(int(c), tp)
      for i in range(length):
        for j in range(length):
          out[b, min(max(r0 + i - length // 2, 0), fp - 1),
              min(max(c0 + j - length // 2, 0), tp - 1)] = True
  return out.reshape(len(centres), -1)


@pytest.mark.parametrize("grid,length", [((5, 38), 5), ((8, 64), 5), ((3, 4), 4), ((7, 1), 2),
                                         ((5, 38), 3)])
def test_blocks_match_fairseq_geometry(grid, length):
  rng = np.random.default_rng(0)
  n = grid[0] * grid[1]
  centres = rng.integers(0, n, size=(16, 4))
  centres[0] = [0, n - 1, grid[1] - 1, n - grid[1]]   # the four corners: clamping at every edge
  got = inverse_block.blocks_from_centres(jnp.asarray(centres), Grid(*grid), length)
  np.testing.assert_array_equal(got, fairseq_blocks(centres, grid, length))


def test_centre_count_follows_fairseq():
  # DWM paper's code: (5, 38), ratio 0.7 -> keep 0.3: int(190 * 0.37 / 25) = int(2.81) = 2.
  assert inverse_block.num_centres(190, 1 - 0.7, 5, 0.07) == 2
  # EAT AudioSet: 64 x 8, ratio 0.8 -> keep 0.2: int(512 * 0.27 / 25) = int(5.53) = 5.
  assert inverse_block.num_centres(512, 1 - 0.8, 5, 0.07) == 5


def fairseq_mask(rng, rows, grid, ratio, length=5, adjust=0.07):
  """The whole ``compute_block_mask_2d(inverse_mask=True, require_same_masks=True)`` per row:
  ``int(N * ((p + adjust) / L**2))`` centres with replacement, blocks, uniform trim/fill to
  ``int(N * p)`` kept, inverted. Returns masked = True, ``[rows, N]``."""
  n = grid[0] * grid[1]
  p = 1 - ratio
  centres = rng.integers(0, n, size=(rows, int(n * ((p + adjust) / length**2))))
  keep = fairseq_blocks(centres, grid, length)
  target = int(n * p)
  for m in keep:
    extra = m.sum() - target
    if extra > 0:
      m[rng.choice(np.flatnonzero(m), extra, replace=False)] = False
    elif extra < 0:
      m[rng.choice(np.flatnonzero(~m), -extra, replace=False)] = True
  return ~keep


@pytest.mark.parametrize("grid,ratio,over_random", [((5, 38), 0.7, 1.8), ((8, 64), 0.8, 3.0)])
def test_visible_patches_form_blocks_as_in_fairseq(grid, ratio, over_random):
  """Visible 4-neighbour pairs: far more than random masking leaves (the reference gives about
  2.1x on the DWM paper's (5, 38) grid, where only 2 blocks fit, and 3.9x on (8, 64) at 0.8),
  and the same mean as the fairseq law; so is the visible frequency of each frequency row
  (clamped blocks favour the edges)."""
  rows = 2000
  x = jnp.zeros((rows, grid[0] * grid[1], 1))
  ibm = np.asarray(jit_sample("inverse_block", jax.random.key(0), x, grid=grid, ratio=ratio))
  rnd = np.asarray(jit_sample("random", jax.random.key(0), x, grid=grid, ratio=ratio))
  ref = fairseq_mask(np.random.default_rng(0), rows, grid, ratio)
  assert (ibm.sum(-1) == ref.sum(-1)).all() and (ibm.sum(-1) == rnd.sum(-1)).all()
  ours, theirs = neighbour_pairs(~ibm, grid), neighbour_pairs(~ref, grid)
  assert ours.mean() > over_random * neighbour_pairs(~rnd, grid).mean()
  se = np.sqrt((ours.var() + theirs.var()) / rows)
  assert abs(ours.mean() - theirs.mean()) < 5 * se, (ours.mean(), theirs.mean())
  by_row = lambda m: (~m).reshape(rows, *grid).mean(2)            # [rows, Fp]
  a, b = by_row(ibm), by_row(ref)
  se = np.sqrt((a.var(0) + b.var(0)) / rows)
  assert (np.abs(a.mean(0) - b.mean(0)) < 5 * se).all(), (a.mean(0), b.mean(0))


def test_only_hint_one_matters_unless_full_hint():
  x = jnp.zeros((4000, 190, 1))
  sample = lambda **kw: np.asarray(jit_sample("inverse_block", jax.random.key(5), x,
                                              grid=(5, 38), ratio=0.7, **kw))
  np.testing.assert_array_equal(sample(hint=0.0), sample(hint=0.9))
  uniform = sample(hint=1.0)
  # Random masking: no block structure, flat frequencies.
  assert np.abs(uniform.mean(0) - 0.7).max() < 5 * np.sqrt(0.21 / 4000)
  swapped = sample(hint=0.5, full_hint=True)
  assert (swapped.sum(-1) == 133).all()
  assert not np.array_equal(swapped, sample(hint=0.0, full_hint=True))
  pairs = lambda m: neighbour_pairs(~m, (5, 38)).mean()
  assert pairs(uniform) < pairs(swapped) < pairs(sample(hint=0.0))


def test_bad_block_size():
  with pytest.raises(ValueError, match="block_size must be an integer >= 2"):
    jit_sample("inverse_block", jax.random.key(0), jnp.zeros((1, 190, 1)), grid=(5, 38),
               ratio=0.7, block_size=1)
