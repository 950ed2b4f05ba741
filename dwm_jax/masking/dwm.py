"""Dispersion-weighted masking (DWM), following the authors' M2D ``random_weighted_mask_with_hint``.

Audio spectra are sparse along frequency, so a patch's dispersion (how much its values spread)
says where the content is. Each patch's weight is ``w = dispersion + 1e-12`` and the K masked
patches are a weighted draw without replacement, P(next = i) proportional to ``w_i`` among those
not yet drawn. Gumbel-top-k (top-K of ``log w + Gumbel``) has exactly that law and runs as one
vectorised top-k. ``probabilistic=False`` masks the K most dispersed patches (the ablation).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from dwm_jax.masking import ops
from dwm_jax.masking.hint import swap_with_noise
from dwm_jax.masking.registry import register
from dwm_jax.patching import Grid

EPS = 1e-12
METRICS = ("mad", "variance")


def dispersion(patches: jnp.ndarray, metric: str = "mad") -> jnp.ndarray:
  """Per-patch dispersion in float32: ``patches: [B, N, P] -> [B, N]``.

  ``mad``: mean absolute deviation from the patch mean; ``variance``: population variance.
  """
  x = patches.astype(jnp.float32)
  dev = x - jnp.mean(x, axis=-1, keepdims=True)
  if metric == "mad":
    return jnp.mean(jnp.abs(dev), axis=-1)
  if metric == "variance":
    return jnp.mean(dev * dev, axis=-1)
  raise ValueError(f"unknown dispersion metric {metric!r}; valid: {', '.join(METRICS)}")


def weighted_mask(key: jax.Array, weights: jnp.ndarray, num_masked: int,
                  probabilistic: bool = True) -> jnp.ndarray:
  """Weighted sample of ``num_masked`` patches without replacement: ``[B, N] -> bool [B, N]``."""
  return weighted_mask_with_noise(ops.uniform_noise(key, weights.shape), weights, num_masked,
                                  probabilistic)


def weighted_mask_with_noise(u: jnp.ndarray, weights: jnp.ndarray, num_masked: int,
                             probabilistic: bool = True) -> jnp.ndarray:
  """:func:`weighted_mask` with its uniform noise ``u: float32 [B, N]`` given."""
  logw = jnp.log(weights.astype(jnp.float32))
  if not probabilistic:
    return ops.top_k_mask(logw, num_masked)
  # Gumbel(0, 1) by inversion, as jax.random.gumbel does (u >= tiny keeps it finite).
  gumbel = -jnp.log(-jnp.log(jnp.maximum(u, jnp.finfo(jnp.float32).tiny)))
  return ops.top_k_mask(logw + gumbel, num_masked)


@register("dwm", metric="mad", probabilistic=True)
def dwm_masking(key: jax.Array, patches: jnp.ndarray, *, grid: Grid, num_masked: int,
                hint: float | jnp.ndarray = 0.0, ratio: float | None = None,
                metric: str = "mad", probabilistic: bool = True) -> jnp.ndarray:
  """Dispersion-weighted masking. ``patches: [B, N, P]`` -> ``bool [B, N]``, then hint swap."""
  del grid, ratio
  if metric not in METRICS:
    raise ValueError(f"unknown dispersion metric {metric!r}; valid: {', '.join(METRICS)}")
  b, n, _ = patches.shape
  u_draw, u_reveal, u_remask = ops.uniforms(key, b, n, n, n)
  weights = dispersion(patches, metric) + EPS
  mask = weighted_mask_with_noise(u_draw, weights, num_masked, probabilistic)
  return swap_with_noise(u_reveal, u_remask, mask, num_masked, hint)
