"""Informed (SGIM) masking: PCA partition and scores, planted clusters, degenerate features."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from .helpers import jit_sample
from dwm_jax.masking import informed


def reference_scores(features):
  """The reference in numpy: L2-normalise; first right singular vector of the centred features
  (torch.pca_lowrank centres); split at the mean projection; normalised cluster means; max cos."""
  out = []
  for f in np.asarray(features, np.float64):
    x = f / np.maximum(np.linalg.norm(f, axis=-1, keepdims=True), 1e-12)
    v = np.linalg.svd(x - x.mean(0), full_matrices=False)[2][0]
    side = (x @ v > (x @ v).mean())[:, None]
    c = np.stack([(x * side).sum(0) / (side.sum() + 1e-6),
                  (x * ~side).sum(0) / ((~side).sum() + 1e-6)])
    c /= np.maximum(np.linalg.norm(c, axis=-1, keepdims=True), 1e-12)
    out.append((x @ c.T).max(-1))
  return np.stack(out)


@pytest.mark.parametrize("n,d", [(40, 16), (12, 64)])   # the D x D and the N x N paths
def test_scores_match_reference(n, d):
  f = np.random.default_rng(0).normal(size=(3, n, d)).astype(np.float32)
  np.testing.assert_allclose(informed.sgim_scores(jnp.asarray(f)), reference_scores(f),
                             atol=2e-5)


def planted(rng, rows):
  """40 patches: 20 near direction e0, 12 near e1, 8 outliers in other directions."""
  d = 16
  f = np.zeros((rows, 40, d), np.float32)
  f[:, :20, 0] = 1
  f[:, 20:32, 1] = 1
  f[:, 32:, 2:] = rng.normal(size=(rows, 8, d - 2))
  f += 0.05 * rng.normal(size=f.shape)
  return f


def test_planted_outliers_are_masked():
  rng = np.random.default_rng(1)
  f = planted(rng, 16)
  perm = np.stack([rng.permutation(40) for _ in range(16)])        # shuffle patch order per row
  f = np.take_along_axis(f, perm[..., None], 1)
  outlier = perm >= 32
  # ratio 0.2 on 40 patches: K = 40 - int(32) = 8, exactly the outliers.
  mask = np.asarray(jit_sample("informed", jax.random.key(0), jnp.zeros((16, 40, 1)),
                               grid=(4, 10), ratio=0.2, features=jnp.asarray(f)))
  np.testing.assert_array_equal(mask, outlier)
  # With more to mask, the outliers are masked first.
  more = np.asarray(jit_sample("informed", jax.random.key(0), jnp.zeros((16, 40, 1)),
                               grid=(4, 10), ratio=0.5, features=jnp.asarray(f)))
  assert more[outlier].all() and (more.sum(-1) == 20).all()


def test_degenerate_features_give_uniform_ties_and_no_nan():
  rows = 4000
  f = jnp.ones((rows, 20, 8))
  assert np.isfinite(np.asarray(informed.sgim_scores(f))).all()
  mask = np.asarray(jit_sample("informed", jax.random.key(2), jnp.zeros((rows, 20, 1)),
                               grid=(4, 5), ratio=0.6, features=f))
  assert (mask.sum(-1) == 12).all()
  assert np.abs(mask.mean(0) - 0.6).max() < 5 * np.sqrt(0.24 / rows)
  zeros = jit_sample("informed", jax.random.key(2), jnp.zeros((2, 20, 1)), grid=(4, 5),
                     ratio=0.6, features=jnp.zeros((2, 20, 8)))
  assert (np.asarray(zeros).sum(-1) == 12).all()


def test_hint_one_is_random():
  rows = 4000
  f = jnp.asarray(planted(np.random.default_rng(3), 1)).repeat(rows, 0)
  mask = np.asarray(jit_sample("informed", jax.random.key(3), jnp.zeros((rows, 40, 1)),
                               grid=(4, 10), ratio=0.2, features=f, hint=1.0))
  assert np.abs(mask.mean(0) - 0.2).max() < 5 * np.sqrt(0.16 / rows)


def test_features_are_required_and_checked():
  x = jnp.zeros((2, 40, 1))
  with pytest.raises(ValueError, match=r"needs features=\[B, N, D\]"):
    jit_sample("informed", jax.random.key(0), x, grid=(4, 10), ratio=0.5)
  with pytest.raises(ValueError, match=r"features must be \[B, N, D\] = \[2, 40, D\]"):
    jit_sample("informed", jax.random.key(0), x, grid=(4, 10), ratio=0.5,
               features=jnp.zeros((2, 39, 8)))


def same_partition_up_to_sign(x, a, b):
  """The principal split of ``x: [B, N, D]`` at the mean projection is the same for directions
  ``a`` and ``b`` (or swapped, the sign of a direction being arbitrary), row by row."""
  def side(v):
    proj = np.einsum("bnd,bd->bn", x, v)
    return proj > proj.mean(1, keepdims=True)
  sa, sb = side(np.asarray(a)), side(np.asarray(b))
  return np.all((sa == sb).all(1) | (sa == ~sb).all(1))


@pytest.mark.parametrize("n,d", [(40, 16), (12, 64), (190, 64), (64, 190)])
def test_power_iteration_gives_the_eigh_partition_on_random_features(n, d):
  f = np.random.default_rng(4).normal(size=(16, n, d)).astype(np.float32)
  x = np.asarray(informed.l2_normalize(jnp.asarray(f)))
  power = informed.principal_direction(jnp.asarray(x))
  exact = informed.principal_direction_eigh(jnp.asarray(x))
  np.testing.assert_allclose(np.linalg.norm(power, axis=-1), 1.0, rtol=1e-5)
  assert same_partition_up_to_sign(x, power, exact)
  # The directions themselves agree up to sign.
  cos = np.abs(np.einsum("bd,bd->b", power, exact))
  assert cos.min() > 1 - 1e-4, cos.min()


def test_power_iteration_gives_the_eigh_partition_on_separated_features():
  rng = np.random.default_rng(5)
  f = planted(rng, 16)
  f = np.take_along_axis(f, np.stack([rng.permutation(40) for _ in range(16)])[..., None], 1)
  x = np.asarray(informed.l2_normalize(jnp.asarray(f)))
  power = informed.principal_direction(jnp.asarray(x))
  assert same_partition_up_to_sign(x, power, informed.principal_direction_eigh(jnp.asarray(x)))


def test_power_iteration_uses_no_eigh():
  jaxpr = str(jax.make_jaxpr(informed.sgim_scores)(jnp.zeros((2, 40, 16))))
  assert "eigh" not in jaxpr and "dot_general" in jaxpr
