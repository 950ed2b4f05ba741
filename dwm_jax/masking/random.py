"""MAE unstructured random masking: uniform among all exact-K subsets."""
from __future__ import annotations

import jax
import jax.numpy as jnp

from dwm_jax.masking import ops
from dwm_jax.masking.registry import register
from dwm_jax.patching import Grid


@register("random")
def random_masking(key: jax.Array, patches: jnp.ndarray, *, grid: Grid, num_masked: int,
                   hint: float | jnp.ndarray = 0.0, ratio: float | None = None) -> jnp.ndarray:
  """Uniform random masking (MAE ``random_masking``); float32 noise whatever the patch dtype.

  patches: ``[B, N, P]`` (only its shape is read). Returns ``bool [B, N]``. ``hint`` is ignored:
  random masking is what every hint blends toward.
  """
  del grid, hint, ratio
  b, n, _ = patches.shape
  return ops.random_mask(key, b, n, num_masked)
