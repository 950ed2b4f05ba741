"""Shared tiny encoders: 80 mel bins (the audio front end's), 64-frame windows, one block."""
import pytest

from dwm_jax.config import base_config
from dwm_jax.evaluate.encoder import random_encoder


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
