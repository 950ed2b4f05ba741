"""BEiT block masking: the same law as BEiT's MaskingGenerator, finished to exactly K."""
import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dwm_jax.masking import block
from dwm_jax.patching import Grid

from .helpers import (assert_same_law_given_union, fill_then_swap_reference, jit_sample,
                      neighbour_pairs)


def beit_reference(rng, grid, num_masking, min_num=4, min_aspect=0.3):
  """BEiT's ``MaskingGenerator.__call__`` written from its description (numpy, one mask)."""
  height, width = grid
  lo, hi = math.log(min_aspect), math.log(1 / min_aspect)
  mask = np.zeros(grid, bool)
  count = 0
  while count < num_masking:
    max_mask = num_masking - count
    delta = 0
    for _ in range(10):
      area = min_num + (max_mask - min_num) * rng.random()   # random.uniform allows a > b
      aspect = math.exp(rng.uniform(lo, hi))
      h, w = int(round(math.sqrt(area * aspect))), int(round(math.sqrt(area / aspect)))
      if w < width and h < height:
        top, left = rng.integers(0, height - h + 1), rng.integers(0, width - w + 1)
        new = h * w - mask[top:top + h, left:left + w].sum()
        if 0 < new <= max_mask:
          mask[top:top + h, left:left + w] = True
          delta = new
      if delta > 0:
        break
    if delta == 0:
      break
    count += delta
  return mask.reshape(-1)


@functools.lru_cache(maxsize=None)
def beit_reference_rows(grid, k, rows):
  rng = np.random.default_rng(0)
  return np.stack([beit_reference(rng, grid, k) for _ in range(rows)])


@pytest.mark.parametrize("variant", ["cpu", "gpu"])
@pytest.mark.parametrize("grid,k", [((14, 14), 75), ((5, 38), 95)])
def test_block_law_matches_beit(grid, k, variant, request):
  """Mean masked count before the fill, the share of rows BEiT fills to K and mean
  masked-neighbour pairs agree with BEiT's (1500 rows: the loop's later stages run too), also
  with the loop as compiled for GPUs (stops checked per chunk of attempts)."""
  if variant == "gpu":
    request.getfixturevalue("gpu_variant")
  rows = 1500
  ref = beit_reference_rows(grid, k, rows)
  ours = np.asarray(block.beit_blocks(jax.random.key(0), rows, Grid(*grid), k))
  assert ours.sum(-1).max() <= k    # never overshoots
  for stat in (lambda m: m.sum(-1), lambda m: m.sum(-1) == k, lambda m: neighbour_pairs(m, grid)):
    a, b = stat(ours).astype(float), stat(ref).astype(float)
    se = np.sqrt(a.var() / rows + b.var() / rows)
    assert abs(a.mean() - b.mean()) < 5 * se + 1e-9, (a.mean(), b.mean())


@pytest.mark.parametrize("grid,variant", [((4, 10), "cpu"), ((1, 9), "cpu"), ((4, 10), "gpu")])
def test_fill_and_swap_in_one_selection_has_the_two_step_law(grid, variant, request):
  """At h > 0 BEiT's fill and the swap are one selection (a per-row count, hint.fill_and_swap);
  its law is that of the two steps in numpy on the same blocks. (1, 9): no block fits, the fill
  does everything. GPUs run the two steps."""
  if variant == "gpu":
    request.getfixturevalue("gpu_variant")
  n, rows, hint = grid[0] * grid[1], 4000, 0.5
  k = n - int(n * 0.3)
  key = jax.random.key(11)
  got = np.asarray(block.block_masking(key, jnp.zeros((rows, n, 1)), grid=Grid(*grid),
                                       num_masked=k, hint=jnp.float32(hint)))
  blocks = np.asarray(block.beit_blocks(jax.random.split(key, 3)[0], rows, Grid(*grid), k))
  assert (got.sum(-1) == k).all() and (blocks.sum(-1) <= k).all()
  assert_same_law_given_union(got, fill_then_swap_reference(np.random.default_rng(1), blocks, k,
                                                            hint), blocks)


def test_no_block_fits_a_single_row():
  # BEiT needs h < height: on a one-row grid nothing is placed and the fill does everything.
  assert not np.asarray(block.beit_blocks(jax.random.key(0), 8, Grid(1, 7), 4)).any()


def test_masked_patches_form_blocks():
  x = jnp.zeros((1000, 190, 1))
  blk = np.asarray(jit_sample("block", jax.random.key(0), x, grid=(5, 38), ratio=0.5))
  rnd = np.asarray(jit_sample("random", jax.random.key(0), x, grid=(5, 38), ratio=0.5))
  assert (blk.sum(-1) == 95).all()
  assert neighbour_pairs(blk, (5, 38)).mean() > 1.4 * neighbour_pairs(rnd, (5, 38)).mean()


def test_bad_aspect():
  with pytest.raises(ValueError, match="min_aspect"):
    jit_sample("block", jax.random.key(0), jnp.zeros((1, 190, 1)), grid=(5, 38), ratio=0.5,
               min_aspect=0.0)
