"""Mask <-> index arrays."""
import jax
import jax.numpy as jnp
import numpy as np

from dwm_jax import masking


def test_ids_round_trip_and_restore_order():
  n, k = 12, 7
  mask = masking.sample("random", jax.random.key(3), jnp.zeros((5, n, 1)), grid=(3, 4),
                        ratio=k / n - 1e-9)
  assert int(mask.sum(-1)[0]) == k
  ids = masking.mask_to_ids(mask, k)
  assert ids.ids_keep.shape == (5, n - k) and ids.ids_masked.shape == (5, k)
  m = np.asarray(mask)
  for row in range(5):
    np.testing.assert_array_equal(ids.ids_keep[row], np.flatnonzero(~m[row]))
    np.testing.assert_array_equal(ids.ids_masked[row], np.flatnonzero(m[row]))
  np.testing.assert_array_equal(masking.ids_to_mask(ids.ids_masked, n), mask)
  # concat(visible, masked) gathered at ids_restore is the patch order again.
  x = jnp.arange(5 * n).reshape(5, n)
  shuffled = jnp.concatenate([jnp.take_along_axis(x, ids.ids_keep, 1),
                              jnp.take_along_axis(x, ids.ids_masked, 1)], axis=1)
  np.testing.assert_array_equal(jnp.take_along_axis(shuffled, ids.ids_restore, 1), x)
