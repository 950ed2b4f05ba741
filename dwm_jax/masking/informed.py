"""Informed masking from model features: SG-MAE's self-guided informed masking (SGIM).

Follows the DWM authors' ``object_centric_mask_with_hint`` with its low-cost ``build_C_pca_batched``
partition: the encoder's features of every patch are L2-normalised; the first principal direction
of each example's (centred) features, the cheap stand-in for the normalised-cut Fiedler vector,
splits the patches at the mean projection into two clusters; the two cluster means, normalised,
are the centres; a patch's score is its largest cosine similarity to a centre, and the K patches
with the lowest scores (least typical of either cluster, i.e. the boundary and odd content) are
masked. Then the hint swap.

The feature pass belongs to the train step; here ``features: [B, N, D]`` is an option. The
principal direction comes from ``eigh`` of the smaller of the ``D x D`` covariance and the
``N x N`` Gram matrix (same leading direction), batched over B, in float32. The sign of the
direction only swaps the two clusters, which the max over centres ignores. Tied scores (e.g. all
features equal) are broken uniformly at random; the reference's argsort leaves them arbitrary.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from dwm_jax.masking import ops
from dwm_jax.masking.hint import swap_with_noise
from dwm_jax.masking.registry import register
from dwm_jax.patching import Grid

NORM_EPS = 1e-12   # F.normalize's eps
COUNT_EPS = 1e-6   # the reference's guard on empty clusters


def l2_normalize(x: jnp.ndarray) -> jnp.ndarray:
  """``x / max(||x||, eps)`` along the last axis (zero vectors stay zero, no NaN)."""
  norm = jnp.linalg.norm(x, axis=-1, keepdims=True)
  return x / jnp.maximum(norm, NORM_EPS)


def principal_direction(x: jnp.ndarray) -> jnp.ndarray:
  """First principal direction of each example's rows: ``x: [B, N, D] -> [B, D]`` (unit norm)."""
  xc = x - jnp.mean(x, axis=1, keepdims=True)
  _, n, d = x.shape
  if d <= n:
    cov = jnp.einsum("bnd,bne->bde", xc, xc)
    _, vecs = jnp.linalg.eigh(cov)           # ascending eigenvalues
    return vecs[..., -1]
  gram = jnp.einsum("bnd,bmd->bnm", xc, xc)
  _, vecs = jnp.linalg.eigh(gram)
  v = jnp.einsum("bnd,bn->bd", xc, vecs[..., -1])
  return l2_normalize(v)


def cluster_centres(x: jnp.ndarray) -> jnp.ndarray:
  """Two normalised centres from the principal split at the mean projection: ``[B, 2, D]``."""
  proj = jnp.einsum("bnd,bd->bn", x, principal_direction(x))
  side = (proj > jnp.mean(proj, axis=1, keepdims=True)).astype(x.dtype)[..., None]  # [B, N, 1]
  c1 = jnp.sum(x * side, axis=1) / (jnp.sum(side, axis=1) + COUNT_EPS)
  c2 = jnp.sum(x * (1 - side), axis=1) / (jnp.sum(1 - side, axis=1) + COUNT_EPS)
  return l2_normalize(jnp.stack([c1, c2], axis=1))


def sgim_scores(features: jnp.ndarray) -> jnp.ndarray:
  """Cosine of every patch to its nearest centre: ``features: [B, N, D] -> float32 [B, N]``."""
  x = l2_normalize(features.astype(jnp.float32))
  return jnp.max(jnp.einsum("bnd,bcd->bnc", x, cluster_centres(x)), axis=-1)


def lowest_k_mask(u: jnp.ndarray, scores: jnp.ndarray, k: int) -> jnp.ndarray:
  """True at the ``k`` lowest scores of each row, ties broken by uniform noise ``u: [B, N]``."""
  # A stable sort of the scores after a uniform shuffle orders equal scores uniformly.
  perm = jnp.argsort(u, axis=-1)
  order = jnp.argsort(jnp.take_along_axis(scores, perm, axis=-1), axis=-1, stable=True)
  masked = jnp.take_along_axis(perm, order[:, :k], axis=-1)
  b, n = scores.shape
  return jnp.zeros((b, n), bool).at[jnp.arange(b)[:, None], masked].set(True)


@register("informed", features=None)
def informed_masking(key: jax.Array, patches: jnp.ndarray, *, grid: Grid, num_masked: int,
                     hint: float | jnp.ndarray = 0.0, ratio: float | None = None,
                     features: jnp.ndarray | None = None) -> jnp.ndarray:
  """SGIM masking. ``features: [B, N, D]`` (required option) -> ``bool [B, N]``, then hint swap.

  ``patches: [B, N, P]`` only fixes the shape; the scores come from ``features``.
  """
  del grid, ratio
  if features is None:
    raise ValueError("masking strategy 'informed' needs features=[B, N, D] (the encoder's output "
                     "for every patch, e.g. sample('informed', ..., features=feats)); for a "
                     "model-free preview pass features=patches")
  b, n, _ = patches.shape
  if features.ndim != 3 or features.shape[:2] != (b, n):
    raise ValueError(f"informed features must be [B, N, D] = [{b}, {n}, D], got shape "
                     f"{features.shape}")
  u_ties, u_reveal, u_remask = ops.uniforms(key, b, n, n, n)
  mask = lowest_k_mask(u_ties, sgim_scores(features), num_masked)
  return swap_with_noise(u_reveal, u_remask, mask, num_masked, hint)
