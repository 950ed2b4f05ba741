"""Hint swap: exact K at any hint, the expected blend toward uniform, traced hints, schedule."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dwm_jax import masking

N, K, ROWS = 20, 12, 20000


def base_mask(rows=ROWS):
  """Every row masks the first K patches: the most non-uniform starting point."""
  return jnp.broadcast_to(jnp.arange(N) < K, (rows, N))


def expected_frequencies(hint):
  """Masked frequency of a patch in / out of the base mask after the swap.

  n = int(K * h) masked patches are revealed; n are re-masked uniformly from the N - K + n
  visible + revealed patches.
  """
  n = int(K * hint)
  pool = N - K + n
  return 1 - n / K + (n / K) * (n / pool), n / pool


@pytest.mark.parametrize("hint", [0.0, 0.25, 0.5, 1.0])
def test_hint_swap_matches_the_expected_frequencies(hint):
  swapped = np.asarray(masking.hint_swap(jax.random.key(0), base_mask(), K, jnp.float32(hint)))
  np.testing.assert_array_equal(swapped.sum(-1), K)
  freq = swapped.mean(0)
  f_in, f_out = expected_frequencies(hint)
  sigma = np.sqrt(0.25 / ROWS)
  assert np.abs(freq[:K] - f_in).max() < 5 * sigma, (freq[:K], f_in)
  assert np.abs(freq[K:] - f_out).max() < 5 * sigma, (freq[K:], f_out)
  if hint == 0.5:
    # Strictly between the strategy's mask and uniform masking (K / N everywhere).
    assert K / N < f_in < 1 and 0 < f_out < K / N
  if hint == 1.0:
    np.testing.assert_allclose(freq, K / N, atol=5 * sigma)


def test_hint_zero_is_identity_and_large_hint_is_random():
  m = base_mask(8)
  np.testing.assert_array_equal(masking.hint_swap(jax.random.key(1), m, K, 0.0), m)
  a = masking.hint_swap(jax.random.key(1), m, K, 1.0)
  b = masking.hint_swap(jax.random.key(1), m, K, 3.0)   # clipped to K swaps
  np.testing.assert_array_equal(a, b)


def test_traced_hint_compiles_once():
  swap = jax.jit(lambda key, h: masking.hint_swap(key, base_mask(4), K, h))
  counts = [np.asarray(swap(jax.random.key(0), jnp.float32(h))).sum(-1) for h in (0, .3, .7, 1.2)]
  assert all((c == K).all() for c in counts)
  assert swap._cache_size() == 1


def test_hint_schedule():
  sched = lambda e: float(masking.hint_schedule(e, 300.0))
  assert sched(0) == 1.0 and sched(49.9) == 1.0
  assert sched(150) == pytest.approx(1 - 0.5**2)
  assert sched(300) == pytest.approx(0.0)
  assert float(masking.hint_schedule(10, 300.0, fixed=0.3)) == pytest.approx(0.3)
  traced = jax.jit(lambda e: masking.hint_schedule(e, 300.0))
  assert float(traced(jnp.float32(240.0))) == pytest.approx(1 - 0.8**2)
