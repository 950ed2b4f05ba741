import jax
import numpy as np
import pytest

from dwm_jax.evaluate.embed import embed_logmel
from dwm_jax.evaluate.encoder import load_encoder, random_encoder, save_encoder
from tests.evaluate.conftest import tiny_model_cfg


def test_save_load_roundtrip(tmp_path, tiny_encoder):
  path = save_encoder(str(tmp_path / "enc.msgpack"), model_cfg=tiny_encoder.model_cfg,
                      params=tiny_encoder.params, norm_mean=-5.0, norm_std=3.0)
  loaded = load_encoder(path)
  assert loaded.norm_mean == -5.0 and loaded.norm_std == 3.0
  assert tuple(loaded.model_cfg.input_shape) == (80, 64)
  for a, b in zip(jax.tree.leaves(tiny_encoder.params), jax.tree.leaves(loaded.params)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  x = np.random.default_rng(0).normal(-5, 3, (80, 100)).astype(np.float32)
  # Same parameters: same embeddings once the normalization is the same too.
  same = random_encoder(tiny_model_cfg(), seed=0, norm_mean=-5.0, norm_std=3.0)
  np.testing.assert_allclose(embed_logmel(loaded, x)[0], embed_logmel(same, x)[0], atol=1e-6)


def test_random_encoder_seeds():
  a, b, c = (random_encoder(tiny_model_cfg(), seed=s) for s in (1, 1, 2))
  assert a.fingerprint == b.fingerprint != c.fingerprint


def test_bad_paths(tmp_path):
  with pytest.raises(FileNotFoundError, match="no encoder"):
    load_encoder(str(tmp_path / "missing.msgpack"))
  junk = tmp_path / "junk.bin"
  junk.write_bytes(b"\x00not msgpack at all")
  with pytest.raises(ValueError, match="not a dwm-jax encoder export"):
    load_encoder(str(junk))


def test_bad_norm(tiny_encoder):
  with pytest.raises(ValueError, match="norm_std"):
    random_encoder(tiny_model_cfg(), norm_std=0.0)
