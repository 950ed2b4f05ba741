"""The 2-D sin-cos table in MAE / M2D's channel order, against independent derivations."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from dwm_jax.models import MaskedPredictor, ViTEncoder, sincos_2d
from tests.m2d_reference import mae_table  # written from REFERENCES.md


@pytest.mark.parametrize("dim,grid", [(768, (5, 38)), (64, (5, 38)), (32, (2, 4)), (16, (8, 3))])
def test_equals_mae_get_2d_sincos_pos_embed(dim, grid):
  np.testing.assert_allclose(sincos_2d(dim, grid), mae_table(dim, grid)[1:], rtol=0, atol=1e-6)


@pytest.mark.parametrize("dim,grid", [(768, (5, 38)), (32, (2, 4))])
def test_equals_timm_sincos_up_to_its_channel_blocks(dim, grid):
  """timm's builder (another code base) stacks ``[sin_row, sin_col, cos_row, cos_col]``."""
  pos = pytest.importorskip("timm.layers.pos_embed_sincos")
  t = pos.build_sincos2d_pos_embed(list(grid), dim).numpy()
  q = dim // 4
  sin_r, sin_c, cos_r, cos_c = (t[:, i * q:(i + 1) * q] for i in range(4))
  # MAE order: [sin_col, cos_col, sin_row, cos_row]. timm multiplies in float32: arguments up
  # to 37 rad carry ~37 * 2**-24 = 2.2e-6 rounding.
  np.testing.assert_allclose(sincos_2d(dim, grid), np.concatenate([sin_c, cos_c, sin_r, cos_r], 1),
                             rtol=0, atol=4e-6)


@settings(max_examples=40, deadline=None)
@given(st.integers(1, 9), st.integers(1, 40), st.sampled_from([4, 8, 16, 64]))
def test_first_half_is_time_second_half_frequency(fp, tp, dim):
  table = sincos_2d(dim, (fp, tp))
  assert table.shape == (fp * tp, dim) and table.dtype == np.float32
  grid = table.reshape(fp, tp, dim)
  half = dim // 2
  # The time half is the same on every frequency row; the frequency half on every time column.
  time_half, freq_half = grid[..., :half], grid[..., half:]
  np.testing.assert_array_equal(time_half, np.broadcast_to(time_half[:1], time_half.shape))
  np.testing.assert_array_equal(freq_half, np.broadcast_to(freq_half[:, :1], freq_half.shape))
  # Position 0 is sin 0 = 0, cos 0 = 1 in both halves (MAE's patch at row 0, column 0).
  np.testing.assert_allclose(table[0], np.tile(np.repeat([0.0, 1.0], dim // 4), 2), atol=0)
  if tp > 1:  # the lowest-frequency channel moves one radian per column
    np.testing.assert_allclose(grid[0, 1, 0], np.sin(1.0), rtol=1e-6)


def test_bad_dims():
  with pytest.raises(ValueError, match="divisible by 4"):
    sincos_2d(30, (5, 38))


def test_encoder_and_predictor_add_the_mae_table():
  """Zero weights: the encoder's tokens are the table; the predictor's output is LN(table)."""
  grid, dim = (2, 4), 32
  enc = ViTEncoder(grid=grid, width=dim, depth=0, heads=2, mlp_dim=64)
  patches = jnp.ones((1, 8, 256))
  params = jax.eval_shape(enc.init, jax.random.key(0), patches)["params"]
  params = jax.tree.map(lambda x: jnp.zeros(x.shape, x.dtype), params)
  embed = jax.jit(lambda pos: enc.apply({"params": params}, patches, pos, method="embed")[0])
  np.testing.assert_allclose(embed(None), mae_table(dim, grid)[1:], atol=1e-6)
  own = np.random.default_rng(0).normal(size=(8, dim)).astype(np.float32)
  np.testing.assert_allclose(embed(own), own, atol=1e-6)  # a checkpoint's own table
  with pytest.raises(ValueError, match=r"pos_embed must be \[8, 32\]"):
    embed(own[:4])
  # The predictor (M2D's decoder) uses the same function on its own width.
  pred = MaskedPredictor(grid=grid, out_dim=4, width=16, depth=0, heads=2)
  x, ids = jnp.zeros((1, 1 + 3, dim)), jnp.arange(8)[None]
  pp = jax.eval_shape(pred.init, jax.random.key(1), x, ids)["params"]
  pp = jax.tree.map(lambda a: jnp.zeros(a.shape, a.dtype), pp)
  pp["norm"]["scale"] = jnp.ones_like(pp["norm"]["scale"])
  pp["out"]["kernel"] = jnp.eye(16, 4)
  # Zero embedding and mask token: the sequence entering the norm is the table.
  out = jax.jit(lambda p: pred.apply({"params": p}, x, ids))(pp)[0]
  t = mae_table(16, grid)[1:]
  ln = (t - t.mean(-1, keepdims=True)) / np.sqrt(t.var(-1, keepdims=True) + 1e-6)
  np.testing.assert_allclose(out, ln[:, :4], atol=1e-5)
