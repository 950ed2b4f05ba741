"""M2D: cosine loss, target on masked patches only, no gradient into the target."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dwm_jax import objectives
from dwm_jax.objectives.m2d import cosine_loss

from .conftest import tiny_config


@pytest.fixture(scope="module")
def m2d(masked_batch):
  obj = objectives.from_config(tiny_config("m2d"))
  patches, _, ids = masked_batch
  params = jax.jit(obj.init)(jax.random.key(2), patches, ids)
  return obj, params, obj.init_target(jax.random.key(3), params, patches, ids)


def test_registry_and_bad_name():
  assert objectives.names() == ["m2d", "mae"]
  c = tiny_config("byol")
  with pytest.raises(ValueError, match="unknown objective 'byol'"):
    objectives.from_config(c)


def test_cosine_loss_values():
  a = jnp.array([[[1.0, 0.0], [0.0, 2.0], [1.0, 1.0]]])
  b = jnp.array([[[3.0, 0.0], [0.0, -1.0], [-1.0, 1.0]]])
  np.testing.assert_allclose(cosine_loss(a, b), [[0.0, 4.0, 2.0]], atol=1e-6)
  assert np.isfinite(np.asarray(jax.grad(lambda x: cosine_loss(x, b).sum())(jnp.zeros_like(a)))).all()


def test_target_is_an_encoder_copy_without_patch_embedding(m2d):
  _, params, target = m2d
  assert set(target) == set(params["encoder"]) - {"patch_embed", "cls_token"}
  for a, b in zip(jax.tree.leaves(target), jax.tree.leaves(
      {k: params["encoder"][k] for k in target})):
    np.testing.assert_array_equal(a, b)


def test_loss_finite_and_in_range(m2d, masked_batch):
  obj, params, target = m2d
  patches, _, ids = masked_batch
  loss, aux = jax.jit(lambda p, t: obj.loss(p, t, patches, ids, rng=jax.random.key(0)))(
      params, target)
  assert loss.shape == () and 0.0 <= float(loss) <= 4.0
  assert float(aux["target_std"]) > 0


def test_target_sees_masked_patches_only(m2d, masked_batch):
  obj, params, target = m2d
  patches, mask, ids = masked_batch
  targets = jax.jit(lambda x: obj.targets(params, target, x, ids))
  t0 = targets(patches)
  assert t0.shape == (4, 6, 32)
  # Changing visible patches leaves the target untouched; changing a masked one changes it.
  noise = jax.random.normal(jax.random.key(9), patches.shape)
  visible_changed = jnp.where(mask[..., None], patches, patches + noise)
  np.testing.assert_allclose(targets(visible_changed), t0, atol=1e-6)
  masked_changed = jnp.where(mask[..., None], patches + noise, patches)
  assert not np.allclose(targets(masked_changed), t0, atol=1e-3)


def test_target_gets_no_gradient_and_online_does(m2d, masked_batch):
  obj, params, target = m2d
  patches, _, ids = masked_batch
  g_params, g_target = jax.jit(jax.grad(
      lambda p, t: obj.loss(p, t, patches, ids, rng=jax.random.key(0))[0], argnums=(0, 1)))(
          params, target)
  assert all(float(jnp.abs(g).max()) == 0.0 for g in jax.tree.leaves(g_target))
  for part in ("encoder", "predictor"):
    assert sum(float(jnp.abs(g).sum()) for g in jax.tree.leaves(g_params[part])) > 0
  assert float(jnp.abs(g_params["encoder"]["patch_embed"]["kernel"]).sum()) > 0


def test_online_patch_embedding_gets_gradient_only_through_the_online_path(m2d, masked_batch):
  obj, params, target = m2d
  patches, _, ids = masked_batch
  # Gradient of the target output w.r.t. the online params is exactly zero (stop_gradient).
  g = jax.jit(jax.grad(lambda p: jnp.sum(obj.targets(p, target, patches, ids))))(params)
  assert all(float(jnp.abs(x).max()) == 0.0 for x in jax.tree.leaves(g))
