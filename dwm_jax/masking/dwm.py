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
from dwm_jax.masking.hint import hint_swap
from dwm_jax.masking.registry import register
from dwm_jax.patching import Grid

EPS = 1e-12
METRICS = ("mad", "variance")


def dispersion_sums(patches: jnp.ndarray, metric: str = "mad") -> jnp.ndarray:
  """``P`` times :func:`dispersion`: ``patches: [B, N, P] -> float32 [B, N]``.

  ``mad``: ``sum |x - mean|``; ``variance``: ``sum (x - mean) ** 2``, each in two passes over the
  patch (the mean first), which XLA:CPU runs as one tiled fusion whose second pass hits cache.
  The scale by ``1 / P`` is left out on purpose: any elementwise op fused after the final
  reduction (even that multiply) made XLA:CPU's fused kernel 3-4x slower (measured,
  experiments/mask_cost/README.md), and DWM's weights only matter up to a common factor.
  """
  x = patches.astype(jnp.float32)
  dev = x - jnp.sum(x, axis=-1, keepdims=True) / x.shape[-1]
  if metric == "mad":
    total = jnp.sum(jnp.abs(dev), axis=-1)
  elif metric == "variance":
    total = jnp.sum(dev * dev, axis=-1)
  else:
    raise ValueError(f"unknown dispersion metric {metric!r}; valid: {', '.join(METRICS)}")
  # A select (which the library fusion does not take) ends the fused reduction here, so what
  # follows (the log, the Gumbel noise) runs in a separate cheap [B, N] loop. Sums of
  # non-negative terms are >= 0 (NaN stays NaN), so this changes no value.
  return jnp.where(total >= 0, total, jnp.nan)


def dispersion(patches: jnp.ndarray, metric: str = "mad") -> jnp.ndarray:
  """Per-patch dispersion in float32: ``patches: [B, N, P] -> [B, N]``.

  ``mad``: mean absolute deviation from the patch mean; ``variance``: population variance.
  """
  return dispersion_sums(patches, metric) / patches.shape[-1]


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
  b, n, p = patches.shape
  k_draw, k_hint = jax.random.split(key)
  # Weights P * (dispersion + EPS): the same law as dispersion + EPS (a common factor).
  weights = dispersion_sums(patches, metric) + p * EPS
  mask = weighted_mask_with_noise(ops.uniform_noise(k_draw, (b, n)), weights, num_masked,
                                  probabilistic)
  return hint_swap(k_hint, mask, num_masked, hint)
