"""Masked-token transformer head: M2D's predictor and MAE's decoder share this shape.

Visible encoder tokens are projected to the head width, mask tokens fill the masked positions,
the sequence is put back into patch order (``ids_restore``), fixed 2-D sin-cos positions are
added, and pre-LN blocks + norm + a linear output give one vector per patch.
"""
from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from dwm_jax import patching
from dwm_jax.models.vit import LN_EPS, block_class, dense_init, sincos_2d, token_init


class MaskedPredictor(nn.Module):
  grid: tuple[int, int]
  out_dim: int
  width: int = 512
  depth: int = 8
  heads: int = 16
  mlp_ratio: int = 4
  dtype: Any = jnp.float32
  remat: bool = False

  @nn.compact
  def __call__(self, tokens: jnp.ndarray, ids_restore: jnp.ndarray) -> jnp.ndarray:
    """``tokens: [B, 1 + n, D]`` (CLS + visible, from the encoder), ``ids_restore: int [B, N]``.

    Returns ``[B, N, out_dim]`` in patch order (CLS dropped).
    """
    g = patching.as_grid(self.grid)
    b, n_in, _ = tokens.shape
    n = g.num_patches
    if ids_restore.shape != (b, n):
      raise ValueError(f"ids_restore must be [{b}, {n}], got {ids_restore.shape}")
    x = nn.Dense(self.width, dtype=self.dtype, kernel_init=dense_init, name="embed")(
        tokens.astype(self.dtype))
    mask_token = self.param("mask_token", token_init, (1, 1, self.width), jnp.float32)
    fill = jnp.broadcast_to(mask_token.astype(x.dtype), (b, n - (n_in - 1), self.width))
    seq = jnp.concatenate([x[:, 1:], fill], axis=1)  # visible first, then masked
    seq = jnp.take_along_axis(seq, ids_restore[..., None].astype(jnp.int32), axis=1)
    seq = seq + jnp.asarray(sincos_2d(self.width, g)).astype(seq.dtype)
    x = jnp.concatenate([x[:, :1], seq], axis=1)
    block = block_class(self.remat)
    for i in range(self.depth):
      x = block(self.width, self.heads, self.mlp_ratio * self.width, self.dtype,
                name=f"block_{i}")(x, True)
    x = nn.LayerNorm(epsilon=LN_EPS, dtype=self.dtype, name="norm")(x)
    return nn.Dense(self.out_dim, dtype=self.dtype, kernel_init=dense_init, name="out")(x[:, 1:])
