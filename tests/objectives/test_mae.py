"""MAE: per-patch normalized targets, MSE over masked patches only."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dwm_jax import objectives
from dwm_jax.objectives.mae import reconstruction_target

from .conftest import tiny_config


@pytest.fixture(scope="module")
def mae(masked_batch):
  obj = objectives.from_config(tiny_config("mae"))
  patches, _, ids = masked_batch
  return obj, jax.jit(obj.init)(jax.random.key(2), patches, ids)


def test_norm_pix_target_is_standardised_per_patch():
  x = jax.random.normal(jax.random.key(0), (2, 3, 256)) * 5 + 3
  t = reconstruction_target(x, True)
  np.testing.assert_allclose(t.mean(-1), 0, atol=1e-5)
  np.testing.assert_allclose(t.std(-1), 1, atol=1e-4)
  np.testing.assert_array_equal(reconstruction_target(x, False), x)


def test_shapes_no_target_and_finite_loss(mae, masked_batch):
  obj, params = mae
  patches, _, ids = masked_batch
  assert obj.init_target(jax.random.key(3), params, patches, ids) is None and not obj.uses_target
  assert params["decoder"]["out"]["kernel"].shape == (32, 256)
  loss, _ = obj.loss(params, None, patches, ids, rng=jax.random.key(0))
  assert loss.shape == () and np.isfinite(float(loss)) and float(loss) > 0


def test_loss_is_the_mse_on_masked_patches(mae, masked_batch):
  obj, params = mae
  patches, mask, ids = masked_batch
  tokens = obj.encoder.apply({"params": params["encoder"]}, patches, ids.ids_keep)
  pred = obj.decoder.apply({"params": params["decoder"]}, tokens, ids.ids_restore)  # [B, N, P]
  target = reconstruction_target(patches, True)
  per_patch = jnp.mean((pred - target) ** 2, -1)
  expected = jnp.sum(per_patch * mask) / jnp.sum(mask)
  loss, _ = obj.loss(params, None, patches, ids, rng=jax.random.key(0))
  np.testing.assert_allclose(loss, expected, rtol=1e-5)
