"""A tiny model config and a fixed masked batch shared by the objective tests."""
import jax
import pytest

from dwm_jax import masking, patching
from dwm_jax.config import base_config


def tiny_config(objective: str):
  c = base_config()
  c.model.name, c.model.input_shape = "tiny", (32, 64)
  c.model.width, c.model.depth, c.model.heads, c.model.mlp_dim = 32, 1, 2, 64
  c.objective.name = objective
  c.objective.predictor_depth, c.objective.predictor_dim, c.objective.predictor_heads = 1, 32, 2
  return c


@pytest.fixture(scope="session")
def masked_batch():
  """``patches [4, 8, 256]``, their mask (6 of 8 masked at ratio 0.7) and ids."""
  x = jax.random.normal(jax.random.key(0), (4, 32, 64))
  patches = patching.patchify(x, (16, 16))
  mask = masking.sample("random", jax.random.key(1), patches, grid=(2, 4), ratio=0.7)
  return patches, mask, masking.mask_to_ids(mask, patching.num_masked(8, 0.7))
