"""Hint swap and its schedule, as in the DWM authors' M2D code.

The hint ratio ``h`` blends a strategy's mask toward uniform random masking: ``n = int(K * h)`` of
the masked patches are revealed (chosen uniformly), then ``n`` patches are re-masked, chosen
uniformly from the visible + revealed ones. The count stays K; ``h >= 1`` is plain random masking.

Cost. ``h`` may be traced (the train step computes it from the step counter): the swap runs
under ``lax.cond(n > 0, ...)``, so at ``n == 0`` it costs nothing, draws no noise and never
recompiles when ``h`` changes. For ``n > 0`` it is one selection, not the reference's two, by
sampling the outcome's one free count first. Let ``j`` be how many of the ``n`` re-masked patches
were among the revealed ones: ``j`` is hypergeometric (``n`` draws from ``N - K + n`` patches of
which ``n`` were revealed), and given ``j`` the result holds a uniform ``(K - n + j)``-subset of the
masked patches and a uniform ``(n - j)``-subset of the visible ones, independently (every
outcome with the same ``j`` is equally likely under the two-step swap). So: draw ``j`` by inverse
CDF from a float64 table computed at trace time (one row per possible ``n``, float32 only in its
rounding), then one radix selection that keeps the two uniform subsets (``ops.split_top_k_keys``).
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from dwm_jax.masking import ops


def num_hinted(num_masked: int, hint: float | jnp.ndarray) -> jnp.ndarray:
  """``int(K * hint)`` clipped to ``[0, K]`` (traced-friendly int32 scalar)."""
  h = jnp.asarray(hint, jnp.float32)
  return jnp.clip(jnp.floor(num_masked * h), 0, num_masked).astype(jnp.int32)


@functools.lru_cache(maxsize=32)
def overlap_cdf(num_patches: int, num_masked: int) -> np.ndarray:
  """``P(j <= i)`` for every swap size: float32 ``[K + 1, K + 1]``, row ``n``, column ``i``.

  ``j`` = revealed patches among the ``n`` re-masked: hypergeometric, ``n`` draws without
  replacement from ``N - K + n`` patches of which ``n`` are revealed. Computed in float64.
  """
  visible = num_patches - num_masked
  log_fact = np.concatenate([[0.0], np.cumsum(np.log(np.arange(1, num_patches + 1)))])
  n = np.arange(num_masked + 1)[:, None]
  i = np.arange(num_masked + 1)[None, :]
  possible = (i <= n) & (n - i <= visible)
  a, c = np.clip(i, 0, n), np.clip(n - i, 0, visible)
  # log C(n, i) + log C(visible, n - i), impossible outcomes at -inf.
  log_pmf = (log_fact[n] - log_fact[a] - log_fact[n - a]
             + log_fact[visible] - log_fact[c] - log_fact[visible - c])
  log_pmf = np.where(possible, log_pmf, -np.inf)
  pmf = np.exp(log_pmf - log_pmf.max(axis=1, keepdims=True))
  cdf = np.cumsum(pmf, axis=1) / pmf.sum(axis=1, keepdims=True)
  cdf[i >= n] = 1.0   # exactly: the inverse CDF below then never passes j = n
  return cdf.astype(np.float32)


def _swap(key: jax.Array, mask: jnp.ndarray, num_masked: int, n_swap: jnp.ndarray) -> jnp.ndarray:
  b, n = mask.shape
  order, count_bits = jnp.split(ops.random_bits(key, (b, n + 1)), [n], axis=1)
  u_count = ops.bits_to_uniform(count_bits)
  cdf = jnp.asarray(overlap_cdf(n, num_masked))[n_swap]                  # [K + 1]
  # Inverse CDF: j = #{i : P(j <= i) <= u} (a binary search; the CDF is non-decreasing and its
  # last column is exactly 1 > u). Comparing all K + 1 columns cost 4x more at [2048, 512].
  j = jnp.searchsorted(cdf, u_count[:, 0], side="right",
                       method="scan_unrolled").astype(jnp.int32)          # [B]
  return ops.split_top_k_keys(order, mask, num_masked - n_swap + j, n_swap - j,
                              group_size=num_masked)


def hint_swap(key: jax.Array, mask: jnp.ndarray, num_masked: int,
              hint: float | jnp.ndarray) -> jnp.ndarray:
  """``mask: bool [B, N]`` (exactly K per row) -> ``bool [B, N]``, exactly K per row.

  ``hint`` may be traced; at ``int(K * hint) == 0`` the mask comes back unchanged at no cost.
  """
  if not isinstance(hint, jax.core.Tracer):
    # A concrete hint (e.g. the default 0.0) that swaps nothing: nothing to trace or compile.
    # Same float32 arithmetic as num_hinted.
    if np.floor(np.float32(num_masked) * np.float32(hint)) <= 0:
      return mask
  return _hint_swap(key, mask, num_masked, jnp.asarray(hint, jnp.float32))


# jit: an eager caller would otherwise re-trace and re-compile the cond (whose branches close
# over the mask) at every call; inside a jitted step this is inlined.
@functools.partial(jax.jit, static_argnums=2)
def _hint_swap(key: jax.Array, mask: jnp.ndarray, num_masked: int,
               hint: jnp.ndarray) -> jnp.ndarray:
  n_swap = num_hinted(num_masked, hint)
  return jax.lax.cond(n_swap > 0, lambda: _swap(key, mask, num_masked, n_swap), lambda: mask)


def hint_schedule(epoch: float | jnp.ndarray, total_epochs: float, *, start_epoch: float = 50.0,
                  k: float = 2.0, fixed: float | None = None) -> jnp.ndarray:
  """The authors' hint ratio schedule (``train_audio.py``).

  ``h = 1`` (plain random masking) while ``epoch < start_epoch``, then
  ``h = 1 - (epoch / total_epochs) ** k``. ``fixed`` (``abs_hint_ratio``) pins ``h``.
  ``epoch`` may be fractional and traced.
  """
  if fixed is not None:
    return jnp.asarray(fixed, jnp.float32)
  e = jnp.asarray(epoch, jnp.float32)
  h = 1.0 - (e / total_epochs) ** k
  return jnp.where(e < start_epoch, 1.0, jnp.clip(h, 0.0, 1.0)).astype(jnp.float32)
