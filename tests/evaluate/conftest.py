"""Shared tiny encoders: 80 mel bins (the audio front end's), 64-frame windows, one block."""
import pytest

from dwm_jax.config import base_config
from dwm_jax.data import synthetic
from dwm_jax.evaluate.encoder import random_encoder, save_encoder


def tiny_model_cfg(frames: int = 64):
  m = base_config().model
  m.name = "tiny"
  m.input_shape = (80, frames)
  m.width, m.depth, m.heads, m.mlp_dim = 32, 1, 2, 64
  return m


@pytest.fixture(scope="session")
def tiny_encoder():
  """Grid (5, 4): embeddings of 5 * 32 = 160 values per frame."""
  return random_encoder(tiny_model_cfg(), seed=0)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
  """40 one-second synthetic clips as WAV + the event/pitch/timbre EVAR CSVs (101 frames: crops
  of a 64-frame window, 2 evaluation windows)."""
  return synthetic.write_dataset(tmp_path_factory.mktemp("synth"), 40, seed=3, seconds=1.0)


@pytest.fixture(scope="module")
def export(tmp_path_factory, tiny_encoder):
  """``tiny_encoder`` saved as a ``dwm-jax export`` file."""
  path = tmp_path_factory.mktemp("enc") / "enc.msgpack"
  return save_encoder(str(path), model_cfg=tiny_encoder.model_cfg, params=tiny_encoder.params,
                      norm_mean=tiny_encoder.norm_mean, norm_std=tiny_encoder.norm_std)
