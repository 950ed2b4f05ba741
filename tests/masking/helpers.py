"""Shared test helpers (not a test module)."""
import jax
import jax.numpy as jnp
import numpy as np

from dwm_jax import masking


def jit_sample(name, key, patches, *, grid, ratio, hint=0.0, **options):
  """``masking.sample`` under ``jax.jit`` (array options traced, the rest static).

  One compile of the whole strategy costs a fraction of the many small eager compiles a new shape
  triggers, and it is how the train step calls it.
  """
  arrays = {k: v for k, v in options.items() if isinstance(v, jax.Array)}
  static = {k: v for k, v in options.items() if k not in arrays}
  fn = jax.jit(lambda key, patches, hint, arrays: masking.sample(
      name, key, patches, grid=grid, ratio=ratio, hint=hint, **static, **arrays))
  return fn(key, patches, jnp.float32(hint), arrays)


def neighbour_pairs(cells: np.ndarray, grid) -> np.ndarray:
  """Number of 4-neighbour pairs with both cells set, per row: ``bool [B, N] -> [B]``."""
  g = cells.reshape(-1, *grid)
  return (g[:, 1:, :] & g[:, :-1, :]).sum((1, 2)) + (g[:, :, 1:] & g[:, :, :-1]).sum((1, 2))
