"""Patch grid conventions: frequency-major order, round trips, counts."""
import jax.numpy as jnp
import numpy as np
import pytest

from dwm_jax import patching


def test_patchify_is_frequency_major_and_round_trips():
  x = jnp.asarray(np.random.default_rng(0).normal(size=(2, 80, 608)).astype(np.float32))
  p = patching.patchify(x, (16, 16))
  assert p.shape == (2, 190, 256)
  f_idx, t_idx = patching.patch_coords((5, 38))
  for n in (0, 1, 37, 38, 100, 189):
    f, t = f_idx[n], t_idx[n]
    assert (f, t) == (n // 38, n % 38)
    np.testing.assert_array_equal(p[:, n], x[:, 16 * f:16 * f + 16, 16 * t:16 * t + 16]
                                  .reshape(2, 256))
  np.testing.assert_array_equal(patching.unpatchify(p, (5, 38), (16, 16)), x)


def test_grid_and_counts():
  assert patching.grid_for((80, 608), (16, 16)) == (5, 38)
  assert patching.grid_for((128, 1024), (16, 16)).num_patches == 512
  assert patching.num_visible(190, 0.7) == 57 and patching.num_masked(190, 0.7) == 133
  assert patching.num_masked(512, 0.8) == 410


@pytest.mark.parametrize("bad", [(5,), "ab", (0, 3), (-1, 2)])
def test_bad_grids(bad):
  with pytest.raises(ValueError):
    patching.as_grid(bad)


def test_indivisible_input():
  with pytest.raises(ValueError, match="not divisible"):
    patching.grid_for((80, 600), (16, 16))
