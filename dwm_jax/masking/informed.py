"""Informed masking from model features: SG-MAE's self-guided informed masking (SGIM).

Follows the DWM authors' ``object_centric_mask_with_hint`` with its low-cost ``build_C_pca_batched``
partition: the encoder's features of every patch are L2-normalised; the first principal direction
of each example's (centred) features, the cheap stand-in for the normalised-cut Fiedler vector,
splits the patches at the mean projection into two clusters; the two cluster means, normalised,
are the centres; a patch's score is its largest cosine similarity to a centre, and the K patches
with the lowest scores (least typical of either cluster, i.e. the boundary and odd content) are
masked. Then the hint swap.

The feature pass belongs to the train step; here ``features: [B, N, D]`` is an option. The
principal direction comes from a batched power iteration (repeated squaring, matmuls only; no
``eigh``) on the smaller of the ``D x D`` covariance and the ``N x N`` Gram matrix (same leading
direction), in float32. The sign of the direction only swaps the two clusters, which the max
over centres ignores. Tied scores (e.g. all
features equal) are broken uniformly at random; the reference's argsort leaves them arbitrary.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from dwm_jax.masking import ops
from dwm_jax.masking.hint import hint_swap
from dwm_jax.masking.registry import register
from dwm_jax.patching import Grid

NORM_EPS = 1e-12   # F.normalize's eps
COUNT_EPS = 1e-6   # the reference's guard on empty clusters
SQUARINGS = 12     # power iteration by squaring: 4096 steps' worth


def l2_normalize(x: jnp.ndarray) -> jnp.ndarray:
  """``x / max(||x||, eps)`` along the last axis (zero vectors stay zero, no NaN)."""
  norm = jnp.linalg.norm(x, axis=-1, keepdims=True)
  return x / jnp.maximum(norm, NORM_EPS)


def _centred_moment(x: jnp.ndarray) -> tuple[jnp.ndarray, jnp.ndarray, bool]:
  """Centred rows and the smaller of their ``D x D`` covariance and ``N x N`` Gram matrix."""
  xc = x - jnp.mean(x, axis=1, keepdims=True)
  _, n, d = x.shape
  if d <= n:
    return xc, jnp.einsum("bnd,bne->bde", xc, xc), False
  return xc, jnp.einsum("bnd,bmd->bnm", xc, xc), True


def _to_feature_space(xc: jnp.ndarray, vec: jnp.ndarray, gram: bool) -> jnp.ndarray:
  # A Gram eigenvector u maps to the covariance one as xc^T u (same eigenvalue).
  return l2_normalize(jnp.einsum("bnd,bn->bd", xc, vec)) if gram else l2_normalize(vec)


def principal_direction_eigh(x: jnp.ndarray) -> jnp.ndarray:
  """:func:`principal_direction` by ``eigh`` (exact, but minutes per batch on CPU at D = 768)."""
  xc, moment, gram = _centred_moment(x)
  _, vecs = jnp.linalg.eigh(moment)           # ascending eigenvalues
  return _to_feature_space(xc, vecs[..., -1], gram)


# jit: an eager caller would otherwise re-compile the squaring loop at every call.
@functools.partial(jax.jit, static_argnames="squarings")
def principal_direction(x: jnp.ndarray, squarings: int = SQUARINGS) -> jnp.ndarray:
  """First principal direction of each example's rows: ``x: [B, N, D] -> [B, D]`` (unit norm).

  Batched power iteration by repeated squaring: ``M <- M @ M / trace(M @ M)`` ``squarings``
  times is ``2 ** squarings`` power steps (the other directions shrink by ``(l2 / l1) ** 4096``
  at the default 12), with matmuls only (no ``eigh``); every column of the result is then
  parallel to the leading eigenvector, and the one with the largest norm is taken (never
  near-orthogonal to it, so no random start vector is needed). Zero features give zero.
  """
  xc, moment, gram = _centred_moment(x)
  tiny = jnp.finfo(jnp.float32).tiny

  def normalise(m):
    trace = jnp.trace(m, axis1=-2, axis2=-1)[:, None, None]
    return m / jnp.maximum(trace, tiny)

  m = jax.lax.fori_loop(0, squarings, lambda _, m: normalise(m @ m), normalise(moment))
  column = jnp.argmax(jnp.sum(m * m, axis=-2), axis=-1)                    # [B]
  vec = jnp.take_along_axis(m, column[:, None, None], axis=-1)[..., 0]      # [B, M]
  return _to_feature_space(xc, vec, gram)


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
  k_ties, k_hint = jax.random.split(key)
  mask = lowest_k_mask(ops.uniform_noise(k_ties, (b, n)), sgim_scores(features), num_masked)
  return hint_swap(k_hint, mask, num_masked, hint)
