"""Exact-count building blocks."""
import jax
import jax.numpy as jnp
import numpy as np

from dwm_jax.masking import ops


def test_ranks_are_permutations_with_ties_by_index():
  x = jnp.array([[0.5, 0.1, 0.5, 0.0], [3.0, 2.0, 1.0, 0.0]])
  np.testing.assert_array_equal(ops.ranks(x), [[2, 1, 3, 0], [3, 2, 1, 0]])


def test_top_k_mask_marks_the_largest():
  x = jnp.array([[0.3, 0.9, 0.1, 0.5]])
  np.testing.assert_array_equal(ops.top_k_mask(x, 2), [[False, True, False, True]])


def test_fill_to_count_keeps_what_fits_and_is_uniform():
  rows = 4000
  base = np.zeros((rows, 10), bool)
  base[:, :3] = True            # 3 set: filling to 5 keeps them and adds 2 of the other 7
  filled = np.asarray(ops.fill_to_count(jax.random.key(0), jnp.asarray(base), 5))
  assert (filled.sum(-1) == 5).all() and filled[:, :3].all()
  np.testing.assert_allclose(filled[:, 3:].mean(0), 2 / 7, atol=0.035)
  base[:, :8] = True            # 8 set: trimming to 5 keeps 5 of those 8, nothing else
  trimmed = np.asarray(ops.fill_to_count(jax.random.key(1), jnp.asarray(base), 5))
  assert (trimmed.sum(-1) == 5).all() and not trimmed[:, 8:].any()
  np.testing.assert_allclose(trimmed[:, :8].mean(0), 5 / 8, atol=0.035)
