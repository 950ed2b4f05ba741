"""Masked autoencoder (MAE): reconstruct the masked patches' log-mel values.

The decoder predicts every patch's ``P`` values; the loss is the MSE over masked patches only,
against the per-patch normalized values (``norm_pix_loss``, MAE's default for audio) or the raw
ones.
"""
from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp

from dwm_jax.masking import MaskIds
from dwm_jax.models import MaskedPredictor, ViTEncoder, encoder_from_config, gather_tokens
from dwm_jax.models.vit import as_dtype

NORM_EPS = 1e-6  # MAE's norm_pix_loss epsilon (added to the variance)


def reconstruction_target(patches: jnp.ndarray, norm_pix: bool) -> jnp.ndarray:
  """``patches: [B, n, P]`` -> per-patch normalized values (float32) when ``norm_pix``."""
  x = patches.astype(jnp.float32)
  if not norm_pix:
    return x
  mean = jnp.mean(x, axis=-1, keepdims=True)
  var = jnp.var(x, axis=-1, keepdims=True)
  return (x - mean) * jax.lax.rsqrt(var + NORM_EPS)


@dataclasses.dataclass(frozen=True)
class MAE:
  encoder: ViTEncoder
  decoder: MaskedPredictor
  norm_pix: bool = True
  name: str = "mae"
  uses_target: bool = False

  def init(self, key: jax.Array, patches: jnp.ndarray, ids: MaskIds) -> dict[str, Any]:
    """Parameters ``{'encoder', 'decoder'}`` for inputs shaped like ``patches: [B, N, P]``."""
    k_enc, k_dec = jax.random.split(key)
    enc = self.encoder.init(k_enc, patches, ids.ids_keep)["params"]
    tokens = self.encoder.apply({"params": enc}, patches, ids.ids_keep)
    dec = self.decoder.init(k_dec, tokens, ids.ids_restore)["params"]
    return {"encoder": enc, "decoder": dec}

  def init_target(self, key: jax.Array, params: dict[str, Any], patches: jnp.ndarray,
                  ids: MaskIds) -> None:
    del key, params, patches, ids
    return None

  def loss(self, params: dict[str, Any], target_params: None, patches: jnp.ndarray,
           ids: MaskIds, *, rng: jax.Array, train: bool = True
           ) -> tuple[jnp.ndarray, dict[str, jnp.ndarray]]:
    """``patches: [B, N, P]`` -> (scalar MSE over masked patches, aux)."""
    del target_params
    tokens = self.encoder.apply({"params": params["encoder"]}, patches, ids.ids_keep,
                                train=train, rngs={"dropout": rng})
    pred = self.decoder.apply({"params": params["decoder"]}, tokens, ids.ids_restore)
    pred = gather_tokens(pred, ids.ids_masked).astype(jnp.float32)
    target = reconstruction_target(gather_tokens(patches, ids.ids_masked), self.norm_pix)
    return jnp.mean((pred - target) ** 2), {}


def from_config(config) -> MAE:
  encoder = encoder_from_config(config.model)
  o = config.objective
  ph, pw = config.model.patch_size
  decoder = MaskedPredictor(grid=encoder.grid, out_dim=int(ph * pw), width=int(o.predictor_dim),
                            depth=int(o.predictor_depth), heads=int(o.predictor_heads),
                            dtype=as_dtype(config.model.dtype),
                            remat=bool(config.model.get("remat", False)))
  return MAE(encoder, decoder, norm_pix=bool(o.norm_pix_loss))
