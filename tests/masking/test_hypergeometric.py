"""Hypergeometric counts: the float64 tables and the in-graph sampler against scipy.stats."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from dwm_jax.masking import hypergeometric


def test_pmf_and_mode_table_match_scipy():
  lf = hypergeometric.log_factorials(30)
  for good, draws in ((0, 5), (12, 0), (12, 7), (30, 9), (7, 30)):
    np.testing.assert_allclose(hypergeometric.pmf(lf, 30, good, draws),
                               stats.hypergeom(30, good, draws).pmf(np.arange(draws + 1)),
                               rtol=1e-9, atol=1e-15)
  table = hypergeometric.mode_probabilities(30)
  g, d = np.meshgrid(np.arange(31), np.arange(31), indexing="ij")
  ref = stats.hypergeom(30, g, d).pmf((d + 1) * (g + 1) // 32)
  np.testing.assert_allclose(table, ref, rtol=1e-6)


@pytest.mark.parametrize("total,good,draws", [(133, 40, 70), (359, 3, 200), (359, 300, 12),
                                              (20, 0, 7), (20, 20, 7), (20, 9, 20), (20, 9, 0),
                                              (1, 1, 1)])
def test_sample_has_the_hypergeometric_law(total, good, draws):
  rows = 100_000
  u = jax.random.uniform(jax.random.key(total + good + draws), (rows,))
  x = np.asarray(jax.jit(lambda u: hypergeometric.sample(
      u, total, jnp.full(u.shape, good), jnp.full(u.shape, draws)))(u))
  ref = stats.hypergeom(total, good, draws).pmf(np.arange(draws + 1))
  observed = np.bincount(x, minlength=draws + 1) / rows
  assert len(observed) == draws + 1                     # never outside the support
  sigma = np.sqrt(ref * (1 - ref) / rows)
  assert (np.abs(observed - ref) <= 5 * sigma + 1e-5).all(), (observed, ref)


def test_sample_follows_each_rows_parameters():
  # Rows with different parameters in one call, each drawn from its own law: the mid-CDF at the
  # values is uniform over the rows (not x = F^-1(u): the visiting order is the mode outward).
  rng = np.random.default_rng(0)
  good, draws = rng.integers(0, 134, 4000), rng.integers(0, 134, 4000)
  u = rng.random(4000).astype(np.float32)
  x = np.asarray(hypergeometric.sample(jnp.asarray(u), 133, jnp.asarray(good), jnp.asarray(draws)))
  lo, hi = np.maximum(0, draws - (133 - good)), np.minimum(good, draws)
  assert ((x >= lo) & (x <= hi)).all()
  # Probability integral transform: the mid-CDF at x is uniform over rows.
  d = stats.hypergeom(133, good, draws)
  mid = d.cdf(x) - d.pmf(x) / 2
  assert abs(mid.mean() - 0.5) < 0.02 and abs(mid.std() - np.sqrt(1 / 12)) < 0.02
