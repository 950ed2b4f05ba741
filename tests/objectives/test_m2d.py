"""M2D: cosine loss, standardized targets, target on masked patches only, no gradient into the
target, the target's own initialisation."""
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dwm_jax import objectives
from dwm_jax.models import gather_tokens
from dwm_jax.objectives.m2d import cosine_loss, standardize_tokens

from .conftest import tiny_config


@pytest.fixture(scope="module")
def m2d(masked_batch):
  obj = objectives.from_config(tiny_config("m2d"))  # base_config: the authors' defaults
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


def test_copy_init_is_an_encoder_copy_without_patch_embedding(m2d, masked_batch):
  obj, params, _ = m2d
  patches, _, ids = masked_batch
  target = dataclasses.replace(obj, target_init="copy").init_target(
      jax.random.key(3), params, patches, ids)
  assert set(target) == set(params["encoder"]) - {"patch_embed", "cls_token"}
  for a, b in zip(jax.tree.leaves(target), jax.tree.leaves(
      {k: params["encoder"][k] for k in target})):
    np.testing.assert_array_equal(a, b)


def test_default_target_init_is_independent_and_deterministic_per_key(m2d, masked_batch):
  obj, params, target = m2d  # the fixture's target: init_target(key(3)) with the default
  patches, _, ids = masked_batch
  assert obj.target_init == "independent"
  online = obj.target_params_of(params)
  assert jax.tree.structure(target) == jax.tree.structure(online)
  for path, t in jax.tree_util.tree_leaves_with_path(target):
    o = online
    for k in path:
      o = o[k.key]
    assert t.shape == o.shape and t.dtype == o.dtype, jax.tree_util.keystr(path)
    name = jax.tree_util.keystr(path)
    if name.endswith("['kernel']"):
      # Own draws of the online initializer (xavier-uniform): different values, same scale.
      assert not np.allclose(t, o), name
      bound = np.sqrt(6.0 / (t.shape[0] + t.shape[1]))
      assert np.abs(t).max() <= bound and np.abs(t).max() > 0.5 * bound, name
    else:  # LayerNorm scales 1, biases 0: the same deterministic values as the online init
      np.testing.assert_array_equal(t, o)
  init = jax.jit(obj.init_target)
  again = init(jax.random.key(3), params, patches, ids)
  other = init(jax.random.key(4), params, patches, ids)
  for a, b, c in zip(jax.tree.leaves(target), jax.tree.leaves(again), jax.tree.leaves(other)):
    np.testing.assert_array_equal(a, b)
  kernels = lambda tree: [x for p, x in jax.tree_util.tree_leaves_with_path(tree)  # noqa: E731
                          if p[-1].key == "kernel"]
  assert all(not np.allclose(a, c) for a, c in zip(kernels(target), kernels(other)))


def test_standardize_tokens_matches_the_authors_formula():
  torch = pytest.importorskip("torch")
  x = np.asarray(jax.random.normal(jax.random.key(5), (3, 4, 32))) * 3.0 + 1.5
  t = torch.from_numpy(x.astype(np.float64))
  # The authors' forward_loss with norm_pix_loss: torch's var (unbiased), eps 1e-6.
  want = (t - t.mean(dim=-1, keepdim=True)) / (t.var(dim=-1, keepdim=True) + 1.e-6) ** .5
  np.testing.assert_allclose(standardize_tokens(jnp.asarray(x)), want.numpy(), rtol=1e-5,
                             atol=1e-5)
  # A constant token stays finite (eps).
  assert np.isfinite(np.asarray(standardize_tokens(jnp.ones((1, 1, 8))))).all()


def test_loss_against_standardized_targets_is_the_authors_norm_mse(m2d, masked_batch):
  torch = pytest.importorskip("torch")
  obj, params, target_params = m2d
  patches, _, ids = masked_batch
  # The target ends in its LayerNorm, whose init (scale 1, bias 0) already centres each token:
  # give the norm trained-looking values, so that the standardization has work to do.
  k1, k2 = jax.random.split(jax.random.key(6))
  norm = target_params["norm"]
  target_params = {**target_params, "norm": {
      "scale": 1.0 + 0.5 * jax.random.normal(k1, norm["scale"].shape),
      "bias": 0.5 * jax.random.normal(k2, norm["bias"].shape)}}

  def parts(p):
    tokens = obj.encoder.apply({"params": p["encoder"]}, patches, ids.ids_keep)
    pred = gather_tokens(obj.predictor.apply({"params": p["predictor"]}, tokens,
                                             ids.ids_restore), ids.ids_masked)
    return pred, obj.targets(p, target_params, patches, ids)

  pred, target = (torch.from_numpy(np.asarray(a, np.float64)) for a in jax.jit(parts)(params))
  # The authors' forward_loss(target, pred, norm_pix_loss=True, loss_type='norm_mse').
  t = (target - target.mean(dim=-1, keepdim=True)) / (target.var(dim=-1, keepdim=True)
                                                     + 1.e-6) ** .5
  f = torch.nn.functional
  want = (2 - 2 * (f.normalize(t, dim=-1) * f.normalize(pred, dim=-1)).sum(dim=-1)).mean()
  raw = (2 - 2 * (f.normalize(target, dim=-1) * f.normalize(pred, dim=-1)).sum(dim=-1)).mean()
  loss = lambda o: float(jax.jit(  # noqa: E731
      lambda p, t: o.loss(p, t, patches, ids, rng=jax.random.key(0))[0])(params, target_params))
  assert obj.norm_target
  assert loss(obj) == pytest.approx(float(want), rel=1e-5)
  assert loss(dataclasses.replace(obj, norm_target=False)) == pytest.approx(float(raw), rel=1e-5)
  assert abs(float(want) - float(raw)) > 1e-3  # the standardization changes the loss here


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
