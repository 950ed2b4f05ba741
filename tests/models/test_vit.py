"""ViT encoder: sizes, shapes, fixed positions, visible-token path, bf16 compute."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dwm_jax.config import base_config
from dwm_jax.models import MODEL_SIZES, ViTEncoder, encoder_from_config

GRID = (2, 4)  # 32 x 64 input, 16 x 16 patches


def n_params(tree) -> int:
  return int(sum(np.prod(x.shape) for x in jax.tree.leaves(tree)))


def tiny_encoder(**kw) -> ViTEncoder:
  return ViTEncoder(grid=GRID, width=32, depth=2, heads=2, mlp_dim=64, **kw)


@pytest.fixture(scope="module")
def tiny():
  enc = tiny_encoder()
  patches = jax.random.normal(jax.random.key(0), (3, 8, 256))
  params = jax.jit(enc.init)(jax.random.key(1), patches)["params"]
  return enc, params, patches


def test_vit_base_has_about_86m_parameters():
  cfg = base_config().model  # base, 80 x 608 -> (5, 38) grid, 256-value patches
  enc = encoder_from_config(cfg)
  shapes = jax.eval_shape(enc.init, jax.random.key(0), jnp.zeros((1, 190, 256)))
  count = n_params(shapes["params"])
  assert 85_000_000 < count < 87_000_000, count
  assert enc.width == 768 and enc.depth == 12 and enc.heads == 12


@pytest.mark.parametrize("name", sorted(MODEL_SIZES))
def test_every_size_builds_from_config(name):
  cfg = base_config().model
  cfg.name = name
  enc = encoder_from_config(cfg)
  assert (enc.width, enc.depth, enc.heads) == tuple(MODEL_SIZES[name][k]
                                                   for k in ("width", "depth", "heads"))
  assert enc.grid == (5, 38)


def test_config_overrides_and_bad_names():
  cfg = base_config().model
  cfg.name, cfg.depth, cfg.width = "tiny", 3, 64
  enc = encoder_from_config(cfg)
  assert (enc.depth, enc.width, enc.heads) == (3, 64, 3)
  cfg.name = "huge"
  with pytest.raises(ValueError, match="unknown model size 'huge'"):
    encoder_from_config(cfg)
  cfg.name, cfg.dtype = "tiny", "float16"
  with pytest.raises(ValueError, match="unknown model dtype"):
    encoder_from_config(cfg)


def test_shapes_finite_and_positions_are_not_parameters(tiny):
  enc, params, patches = tiny
  out = enc.apply({"params": params}, patches)
  assert out.shape == (3, 1 + 8, 32) and out.dtype == jnp.float32
  assert np.isfinite(np.asarray(out)).all()
  assert set(params) == {"patch_embed", "cls_token", "block_0", "block_1", "norm"}
  assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(params))
  # The patch embedding is a Dense over the 256 patch values (== a 16x16 stride-16 conv).
  assert params["patch_embed"]["kernel"].shape == (256, 32)


def test_visible_tokens_path_matches_full_sequence_when_all_are_kept(tiny):
  enc, params, patches = tiny
  all_ids = jnp.broadcast_to(jnp.arange(8), (3, 8))
  full = enc.apply({"params": params}, patches)
  kept = enc.apply({"params": params}, patches, all_ids)
  np.testing.assert_allclose(kept, full, rtol=1e-5, atol=1e-5)
  sub = enc.apply({"params": params}, patches, all_ids[:, [1, 5, 6]])
  assert sub.shape == (3, 4, 32)
  # Tokens depend on which patches are kept: the visible subset is what gets encoded.
  assert not np.allclose(sub[:, 1:], full[:, [2, 6, 7]], atol=1e-3)


def test_embed_then_encode_tokens_equals_call(tiny):
  enc, params, patches = tiny
  ids = jnp.array([[0, 3, 7]] * 3)
  tokens = enc.apply({"params": params}, patches, method="embed")
  assert tokens.shape == (3, 8, 32)
  picked = jnp.take_along_axis(tokens, ids[..., None], axis=1)
  via = enc.apply({"params": params}, picked, method="encode_tokens")
  np.testing.assert_allclose(via, enc.apply({"params": params}, patches, ids), rtol=1e-6,
                             atol=1e-6)


def test_wrong_patch_count_is_a_clear_error(tiny):
  enc, params, _ = tiny
  with pytest.raises(ValueError, match=r"patches must be \[B, 8, P\]"):
    enc.apply({"params": params}, jnp.zeros((1, 9, 256)))


def test_bfloat16_compute_keeps_float32_params(tiny):
  _, params, patches = tiny
  enc = tiny_encoder(dtype=jnp.bfloat16)
  out = jax.jit(lambda p, x: enc.apply({"params": p}, x))(params, patches)
  assert out.dtype == jnp.bfloat16
  assert np.isfinite(np.asarray(out, np.float32)).all()
  full = tiny[0].apply({"params": params}, patches)
  # Same parameters, lower precision: close to the float32 result, not identical.
  np.testing.assert_allclose(np.asarray(out, np.float32), full, atol=0.15)


def test_dropout_and_drop_path_are_random_in_training_only(tiny):
  _, params, patches = tiny
  enc = tiny_encoder(dropout=0.1, drop_path=0.5)
  apply = jax.jit(lambda p, x, k: enc.apply({"params": p}, x, train=True, rngs={"dropout": k}))
  a = apply(params, patches, jax.random.key(0))
  b = apply(params, patches, jax.random.key(0))
  c = apply(params, patches, jax.random.key(1))
  np.testing.assert_array_equal(a, b)
  assert not np.allclose(a, c)
  eval_out = enc.apply({"params": params}, patches)
  np.testing.assert_allclose(eval_out, tiny[0].apply({"params": params}, patches), atol=1e-6)
