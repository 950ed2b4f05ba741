"""MAE random masking: every position masked with frequency ``K / N``, whatever the dtype."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest


from .helpers import jit_sample

ROWS = 8192


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_per_position_frequency_is_the_ratio(dtype):
  x = jnp.zeros((ROWS, 190, 4), dtype)
  mask = np.asarray(jit_sample("random", jax.random.key(0), x, grid=(5, 38), ratio=0.7))
  freq = mask.mean(0)
  k_over_n = 133 / 190
  sigma = np.sqrt(k_over_n * (1 - k_over_n) / ROWS)
  assert np.abs(freq - k_over_n).max() < 5 * sigma
  # No drift toward either end of the index range (the bf16-noise failure mode).
  assert abs(freq[:38].mean() - freq[-38:].mean()) < 4 * sigma


def test_hint_does_not_change_random_masking():
  x = jnp.zeros((4, 190, 4))
  a = jit_sample("random", jax.random.key(0), x, grid=(5, 38), ratio=0.7, hint=0.0)
  b = jit_sample("random", jax.random.key(0), x, grid=(5, 38), ratio=0.7, hint=0.6)
  np.testing.assert_array_equal(a, b)
