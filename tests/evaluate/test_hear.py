import numpy as np
import pytest

from dwm_jax.evaluate import hear
from dwm_jax.evaluate.encoder import save_encoder


@pytest.fixture(scope="module")
def model(tmp_path_factory, tiny_encoder):
  path = tmp_path_factory.mktemp("hear") / "enc.msgpack"
  save_encoder(str(path), model_cfg=tiny_encoder.model_cfg, params=tiny_encoder.params,
               norm_mean=tiny_encoder.norm_mean, norm_std=tiny_encoder.norm_std)
  return hear.load_model(str(path))


def test_attributes(model):
  assert model.sample_rate == 16000
  assert model.scene_embedding_size == model.timestamp_embedding_size == 160


def test_embeddings(model):
  rng = np.random.default_rng(0)
  audio = (rng.normal(size=(3, 8000)) * 0.1).astype(np.float32)  # 0.5 s -> 51 frames -> 4 cols
  emb, ts = hear.get_timestamp_embeddings(audio, model)
  assert emb.shape == (3, 4, 160) and ts.shape == (3, 4)
  np.testing.assert_allclose(ts[1], [80, 240, 400, 560])
  scene = hear.get_scene_embeddings(audio, model)
  assert scene.shape == (3, 160)
  np.testing.assert_allclose(scene, emb.mean(axis=1), rtol=1e-5, atol=1e-6)
  assert not np.allclose(scene[0], scene[1], atol=1e-4)  # different sounds, different vectors


def test_bad_calls(model):
  with pytest.raises(ValueError, match="n_sounds"):
    hear.get_scene_embeddings(np.zeros(16000, np.float32), model)
  with pytest.raises(ValueError, match="path"):
    hear.load_model("")
