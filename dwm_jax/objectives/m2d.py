"""Masked Modeling Duo (M2D), the DWM paper's framework.

The online encoder sees the visible patches; the predictor fills mask tokens at the masked
positions and predicts their representations. The target is an EMA copy of the encoder blocks and
final norm, run over the **masked patches only** (embedded by the online patch embedding and CLS,
no gradient). Loss: mean over masked patches of ``2 - 2 cos(pred, target)`` (M2D's ``norm_mse``),
by default against target tokens standardized over their channels (M2D's ``norm_pix_loss``).

As the authors' ``M2DViT``, the target blocks and norm get their own initialisation at step 0
(``target_init="independent"``), not a copy of the online ones; ``"copy"`` starts from a copy.
"""
from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp

from dwm_jax.masking import MaskIds
from dwm_jax.models import MaskedPredictor, ViTEncoder, encoder_from_config, gather_tokens
from dwm_jax.models.vit import as_dtype

# Encoder parameters that the target takes from the online encoder rather than its EMA copy.
ONLINE_ONLY = ("patch_embed", "cls_token")
TARGET_INITS = ("independent", "copy")
NORM_EPS = 1e-6  # the authors' norm_pix_loss epsilon (added to the variance)


def standardize_tokens(target: jnp.ndarray) -> jnp.ndarray:
  """``[B, K, D]`` -> each token minus its channel mean, over ``sqrt(var + 1e-6)`` (float32).

  The variance is torch's default (unbiased, ``D - 1``), as the authors' ``target.var(dim=-1)``.
  Under the cosine loss only the centring changes the result (the scale is per token).
  """
  t = target.astype(jnp.float32)
  mean = jnp.mean(t, axis=-1, keepdims=True)
  var = jnp.var(t, axis=-1, keepdims=True, ddof=1)
  return (t - mean) * jax.lax.rsqrt(var + NORM_EPS)


def cosine_loss(pred: jnp.ndarray, target: jnp.ndarray) -> jnp.ndarray:
  """``2 - 2 cos`` per token in float32: ``[B, K, D], [B, K, D] -> [B, K]``."""
  p = pred.astype(jnp.float32)
  t = target.astype(jnp.float32)
  # eps inside the sqrt keeps the gradient finite at a zero vector (F.normalize clamps likewise).
  p = p * jax.lax.rsqrt(jnp.sum(p * p, -1, keepdims=True) + 1e-12)
  t = t * jax.lax.rsqrt(jnp.sum(t * t, -1, keepdims=True) + 1e-12)
  return 2.0 - 2.0 * jnp.sum(p * t, axis=-1)


@dataclasses.dataclass(frozen=True)
class M2D:
  encoder: ViTEncoder
  predictor: MaskedPredictor
  norm_target: bool = True
  target_init: str = "independent"
  name: str = "m2d"
  uses_target: bool = True

  def init(self, key: jax.Array, patches: jnp.ndarray, ids: MaskIds) -> dict[str, Any]:
    """Parameters ``{'encoder', 'predictor'}`` for inputs shaped like ``patches: [B, N, P]``."""
    k_enc, k_pred = jax.random.split(key)
    enc = self.encoder.init(k_enc, patches, ids.ids_keep)["params"]
    tokens = self.encoder.apply({"params": enc}, patches, ids.ids_keep)
    pred = self.predictor.init(k_pred, tokens, ids.ids_restore)["params"]
    return {"encoder": enc, "predictor": pred}

  def init_target(self, key: jax.Array, params: dict[str, Any], patches: jnp.ndarray,
                  ids: MaskIds) -> dict[str, Any]:
    """The EMA target's blocks and norm at step 0 (the shapes of :meth:`target_params_of`).

    ``independent``: a fresh encoder initialisation from ``key`` (the online one's initializers,
    other draws); ``copy``: the online encoder's values (``key`` unused).
    """
    if self.target_init == "copy":
      return self.target_params_of(params)
    if self.target_init != "independent":
      raise ValueError(f"unknown objective.target_init {self.target_init!r}; valid: "
                       f"{', '.join(TARGET_INITS)}")
    fresh = self.encoder.init(key, patches, ids.ids_keep)["params"]
    return self.target_params_of({"encoder": fresh})

  def target_params_of(self, params: dict[str, Any]) -> dict[str, Any]:
    """The online counterpart of the target tree (what the EMA follows)."""
    return {k: v for k, v in params["encoder"].items() if k not in ONLINE_ONLY}

  def targets(self, params: dict[str, Any], target_params: dict[str, Any], patches: jnp.ndarray,
              ids: MaskIds) -> jnp.ndarray:
    """Target representations of the masked patches ``[B, K, D]`` (no gradient)."""
    online = jax.lax.stop_gradient(params["encoder"])
    tokens = self.encoder.apply({"params": online}, patches, method="embed")
    tokens = gather_tokens(tokens, ids.ids_masked)
    tree = {**target_params, **{k: online[k] for k in ONLINE_ONLY}}
    out = self.encoder.apply({"params": jax.lax.stop_gradient(tree)}, tokens,
                             method="encode_tokens")
    return jax.lax.stop_gradient(out[:, 1:])

  def loss(self, params: dict[str, Any], target_params: dict[str, Any], patches: jnp.ndarray,
           ids: MaskIds, *, rng: jax.Array, train: bool = True
           ) -> tuple[jnp.ndarray, dict[str, jnp.ndarray]]:
    """``patches: [B, N, P]`` -> (scalar loss, aux). Mean of ``2 - 2 cos`` over masked patches."""
    rngs = {"dropout": rng}
    tokens = self.encoder.apply({"params": params["encoder"]}, patches, ids.ids_keep,
                                train=train, rngs=rngs)
    pred = self.predictor.apply({"params": params["predictor"]}, tokens, ids.ids_restore)
    pred = gather_tokens(pred, ids.ids_masked)
    target = self.targets(params, target_params, patches, ids)
    # target_std: spread of the raw target over the masked tokens (collapse shows as ~0).
    aux = {"target_std": jnp.mean(jnp.std(target.astype(jnp.float32), 1))}
    if self.norm_target:
      target = standardize_tokens(target)
    return jnp.mean(cosine_loss(pred, target)), aux


def from_config(config) -> M2D:
  encoder = encoder_from_config(config.model)
  o = config.objective
  predictor = MaskedPredictor(grid=encoder.grid, out_dim=encoder.width,
                              width=int(o.predictor_dim), depth=int(o.predictor_depth),
                              heads=int(o.predictor_heads), dtype=as_dtype(config.model.dtype),
                              remat=bool(config.model.get("remat", False)))
  return M2D(encoder, predictor, norm_target=bool(o.get("norm_pix_loss", True)),
             target_init=str(o.get("target_init", "independent")))
