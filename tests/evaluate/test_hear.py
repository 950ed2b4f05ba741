"""The HEAR API: the torch and TF modules, as the validator and heareval's runner call them."""
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest

from dwm_jax.evaluate import embed as embed_lib
from dwm_jax.evaluate import hear
from dwm_jax.evaluate.encoder import save_encoder

tf = pytest.importorskip("tensorflow")
torch = pytest.importorskip("torch")

ROOT = str(pathlib.Path(__file__).resolve().parents[2])
SECONDS = (1.0, 1.5, 2.2)


@pytest.fixture(scope="module")
def export(tmp_path_factory, tiny_encoder):
  path = tmp_path_factory.mktemp("hear") / "enc.msgpack"
  return save_encoder(str(path), model_cfg=tiny_encoder.model_cfg, params=tiny_encoder.params,
                      norm_mean=tiny_encoder.norm_mean, norm_std=tiny_encoder.norm_std)


@pytest.fixture(scope="module")
def padded():
  """Clips of unequal length zero-padded to the longest, as heareval's tasks come: [3, 35200]."""
  rng = np.random.default_rng(0)
  clips = [(rng.normal(size=int(s * 16000)) * 0.1).astype(np.float32) for s in SECONDS]
  out = np.zeros((len(clips), max(len(c) for c in clips)), np.float32)
  for i, c in enumerate(clips):
    out[i, :len(c)] = c
  return out


@pytest.fixture(scope="module")
def reference(tiny_encoder, padded):
  """Each padded clip on its own through ``embed.embed``: (frames [T', E], clip [E])."""
  return [embed_lib.embed(tiny_encoder, row, 16000) for row in padded]


def test_torch_module_is_the_default(export):
  model = hear.load_model(export)
  assert isinstance(model, torch.nn.Module) and not isinstance(model, tf.Module)
  assert model.sample_rate == 16000
  assert type(model.scene_embedding_size) is int and type(model.timestamp_embedding_size) is int
  assert model.scene_embedding_size == model.timestamp_embedding_size == 160
  assert model.to("cpu") is model  # what the validator and heareval do with a torch module
  assert "timestamp hop 160 ms" in repr(model)


def _check(emb, ts, scene, padded, reference):
  n, k = len(padded), 14  # 2.2 s: 221 log-mel frames, 14 columns, the last centred at 2155 ms
  assert emb.shape == (n, k, 160) and ts.shape == (n, k) and scene.shape == (n, 160)
  np.testing.assert_allclose(ts, np.broadcast_to(75.0 + 160.0 * np.arange(k), (n, k)))
  for i, (frames, clip) in enumerate(reference):
    np.testing.assert_allclose(emb[i], frames[:k], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(scene[i], clip, rtol=1e-5, atol=1e-5)
  assert not np.allclose(scene[0], scene[1], atol=1e-3)


def test_torch_padded_batch(export, padded, reference):
  model = hear.load_model(export, framework="torch")
  audio = torch.from_numpy(padded)
  with torch.no_grad():  # as heareval's runner calls it
    emb, ts = hear.get_timestamp_embeddings(audio, model)
    scene = hear.get_scene_embeddings(audio, model)
  for t in (emb, ts, scene):
    assert isinstance(t, torch.Tensor) and t.dtype == torch.float32 and t.device == audio.device
  _check(emb.numpy(), ts.numpy(), scene.numpy(), padded, reference)
  # float64 or bfloat16 in, float32 out; one clip alone: the frames it has in the batch.
  one, _ = hear.get_timestamp_embeddings(audio[2:].double(), model)
  assert one.dtype == torch.float32
  np.testing.assert_allclose(one[0].numpy(), emb[2].numpy(), rtol=1e-5, atol=1e-5)
  assert hear.get_scene_embeddings(audio.bfloat16(), model).dtype == torch.float32
  # numpy in (heareval converts it to a tensor first; others may not): out on the model's device.
  scene_np = hear.get_scene_embeddings(padded, model)
  assert isinstance(scene_np, torch.Tensor) and scene_np.device == torch.device("cpu")


def test_tf_padded_batch(export, padded, reference):
  model = hear.load_model(export, framework="tf")
  assert isinstance(model, tf.Module) and not isinstance(model, torch.nn.Module)
  assert model.sample_rate == 16000 and model.scene_embedding_size == 160
  audio = tf.convert_to_tensor(padded)  # heareval: DataLoader batch -> .numpy() -> tf tensor
  emb, ts = hear.get_timestamp_embeddings(audio, model)
  scene = hear.get_scene_embeddings(audio, model)
  for t in (emb, ts, scene):
    assert isinstance(t, tf.Tensor) and t.dtype == tf.float32 and t.device == audio.device
  _check(emb.numpy(), ts.numpy(), scene.numpy(), padded, reference)


def test_fine_hop_option(export, padded):
  model = hear.load_model(export, hop_ms=40)
  emb, ts = hear.get_timestamp_embeddings(torch.from_numpy(padded[:1]), model)
  assert emb.shape == (1, 55, 160) and ts[0, 0] == 35.0 and ts[0, -1] == 2195.0
  np.testing.assert_allclose(np.diff(ts.numpy()), 40.0)
  assert "timestamp hop 40 ms" in repr(model)


def test_options_from_the_environment(export, monkeypatch):
  monkeypatch.setenv(hear.api.OPTIONS_ENV, '{"framework": "tf", "hop_ms": 80}')
  model = hear.load_model(export)
  assert isinstance(model, tf.Module) and model.core.hop_ms == 80
  assert isinstance(hear.load_model(export, framework="torch"), torch.nn.Module)  # argument wins
  monkeypatch.setenv(hear.api.OPTIONS_ENV, '{"hop": 80}')
  with pytest.raises(ValueError, match="keys among"):
    hear.load_model(export)
  monkeypatch.setenv(hear.api.OPTIONS_ENV, "hop_ms=80")
  with pytest.raises(ValueError, match="JSON dict"):
    hear.load_model(export)


def test_wrong_inputs(export, tmp_path):
  model = hear.load_model(export)
  with pytest.raises(ValueError, match="n_sounds, n_samples"):
    hear.get_scene_embeddings(torch.zeros(16000), model)
  with pytest.raises(TypeError, match="torch.Tensor"):
    hear.get_scene_embeddings(tf.zeros((1, 16000)), model)
  with pytest.raises(ValueError, match="float samples"):
    hear.get_scene_embeddings(torch.zeros((1, 16000), dtype=torch.int16), model)
  with pytest.raises(TypeError, match="tf.Tensor"):
    hear.get_scene_embeddings(torch.zeros((1, 16000)), hear.load_model(export, framework="tf"))
  with pytest.raises(TypeError, match="load_model"):
    hear.get_scene_embeddings(torch.zeros((1, 16000)), torch.nn.Linear(1, 1))
  with pytest.raises(ValueError, match="framework must be one of"):
    hear.load_model(export, framework="jax")
  with pytest.raises(ValueError, match="hop_ms must be one of"):
    hear.load_model(export, hop_ms=50)


def test_bad_paths(tmp_path):
  with pytest.raises(ValueError, match="needs the path of a dwm-jax encoder export"):
    hear.load_model()
  missing = str(tmp_path / "nope.msgpack")
  with pytest.raises(FileNotFoundError, match=f"load_model\\('{missing}'\\).*expected a dwm-jax"):
    hear.load_model(missing)
  pth = tmp_path / "checkpoint-300.pth"
  torch.save({"model": {}}, pth)
  with pytest.raises(ValueError, match="not a dwm-jax encoder export.*import-torch"):
    hear.load_model(str(pth))
  with pytest.raises(FileNotFoundError, match="pretraining workdir"):
    hear.load_model(str(tmp_path))  # a folder without checkpoints


def test_import_is_light(export):
  # The validator and heareval import the module before load_model: neither framework until
  # load_model picks one, and no TensorFlow when torch serves.
  code = ("import sys; import dwm_jax.evaluate.hear as h; "
          "print('tensorflow' in sys.modules, 'torch' in sys.modules); "
          f"h.load_model({export!r}); print('tensorflow' in sys.modules, 'torch' in sys.modules)")
  env = {**os.environ, "PYTHONPATH": ROOT}
  out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                       check=True, timeout=120)
  assert out.stdout.split() == ["False", "False", "False", "True"]
