"""DWM: dispersion, the weighted draw without replacement, degenerate input, hint."""
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dwm_jax import masking

from .helpers import jit_sample

ROWS = 20000


def patches_with_mad(mads, rows, p=16):
  """Patches alternating +a, -a: mean 0, MAD exactly a, variance a**2. ``[rows, len(mads), p]``."""
  sign = np.where(np.arange(p) % 2 == 0, 1.0, -1.0)
  x = np.asarray(mads, np.float32)[:, None] * sign
  return jnp.broadcast_to(jnp.asarray(x), (rows,) + x.shape)


def sequential_inclusion(weights, k):
  """Exact P(patch i is drawn) when k patches are drawn one at a time, p proportional to the
  remaining weights (torch.multinomial without replacement), by enumerating every draw order."""
  w = np.asarray(weights, np.float64)
  incl = np.zeros(len(w))
  for order in itertools.permutations(range(len(w)), k):
    p, left = 1.0, w.sum()
    for i in order:
      p *= w[i] / left
      left -= w[i]
    incl[list(order)] += p
  return incl


def test_dispersion_metrics_match_numpy():
  x = np.random.default_rng(0).normal(size=(2, 6, 16)).astype(np.float32)
  mad = np.abs(x - x.mean(-1, keepdims=True)).mean(-1)
  np.testing.assert_allclose(masking.dispersion(jnp.asarray(x), "mad"), mad, rtol=1e-5)
  np.testing.assert_allclose(masking.dispersion(jnp.asarray(x), "variance"), x.var(-1),
                             rtol=1e-5)
  with pytest.raises(ValueError, match="unknown dispersion metric 'std'; valid: mad, variance"):
    jit_sample("dwm", jax.random.key(0), jnp.asarray(x), grid=(2, 3), ratio=0.5,
               metric="std")


def test_frequencies_match_sequential_weighted_draws():
  mads = [0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0, 9.0]   # grid (2, 4), ratio 0.5: K = 4 of 8
  mask = np.asarray(jit_sample("dwm", jax.random.key(0), patches_with_mad(mads, ROWS),
                               grid=(2, 4), ratio=0.5))
  np.testing.assert_array_equal(mask.sum(-1), 4)
  expected = sequential_inclusion(np.asarray(mads) + 1e-12, 4)
  freq = mask.mean(0)
  var = expected * (1 - expected) / ROWS
  z = (freq - expected) / np.sqrt(var)
  assert np.abs(z).max() < 5, (freq, expected)
  assert (z**2).sum() < 30, (freq, expected)   # chi-square-like, 8 correlated terms


def test_variance_metric_weights_by_squared_spread():
  mads = [0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0, 9.0]
  mask = np.asarray(jit_sample("dwm", jax.random.key(1), patches_with_mad(mads, ROWS),
                               grid=(2, 4), ratio=0.5, metric="variance"))
  expected = sequential_inclusion(np.asarray(mads) ** 2 + 1e-12, 4)
  sigma = np.sqrt(expected * (1 - expected) / ROWS)
  assert (np.abs(mask.mean(0) - expected) < 5 * sigma).all()


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_constant_patches_behave_like_random(dtype):
  x = jnp.full((8192, 190, 16), 3.0, dtype)
  assert np.isfinite(np.asarray(masking.dispersion(x))).all()
  mask = np.asarray(jit_sample("dwm", jax.random.key(2), x, grid=(5, 38), ratio=0.7))
  np.testing.assert_array_equal(mask.sum(-1), 133)
  sigma = np.sqrt(0.7 * 0.3 / 8192)
  assert np.abs(mask.mean(0) - 133 / 190).max() < 5 * sigma


def test_frequency_rises_with_dispersion_and_hint_one_is_uniform():
  mads = np.linspace(0.1, 2.0, 190)
  x = patches_with_mad(mads, 4096)
  freq = np.asarray(jit_sample("dwm", jax.random.key(3), x, grid=(5, 38),
                               ratio=0.5)).mean(0)
  by_tenth = freq.reshape(10, 19).mean(1)
  assert (np.diff(by_tenth) > 0).all(), by_tenth
  assert np.corrcoef(freq, mads)[0, 1] > 0.95
  flat = np.asarray(jit_sample("dwm", jax.random.key(3), x, grid=(5, 38), ratio=0.5,
                               hint=1.0)).mean(0)
  assert np.abs(flat - 0.5).max() < 5 * np.sqrt(0.25 / 4096)


def test_deterministic_ablation_masks_the_most_dispersed():
  mads = np.random.default_rng(1).permutation(np.arange(1, 191)) / 10
  x = patches_with_mad(mads, 2)
  a = np.asarray(jit_sample("dwm", jax.random.key(0), x, grid=(5, 38), ratio=0.7,
                            probabilistic=False))
  b = np.asarray(jit_sample("dwm", jax.random.key(9), x, grid=(5, 38), ratio=0.7,
                            probabilistic=False))
  np.testing.assert_array_equal(a, b)
  np.testing.assert_array_equal(a[0], mads >= np.sort(mads)[-133])
