"""Hint swap and its schedule, as in the DWM authors' M2D code.

The hint ratio ``h`` blends a strategy's mask toward uniform random masking: ``n = int(K * h)`` of
the masked patches are revealed (chosen uniformly), then ``n`` patches are re-masked, chosen
uniformly from the visible + revealed ones. The count stays K; ``h >= 1`` is plain random masking.

Cost. ``h`` may be traced (the train step computes it from the step counter): the swap runs
under ``lax.cond(n > 0, ...)``, so at ``n == 0`` it costs nothing, draws no noise and never
recompiles when ``h`` changes. For ``n > 0`` it is one selection, not the reference's two, by
sampling the outcome's one free count first. The swap treats every masked patch alike and every
visible one alike, so the law of its result ``R`` is unchanged by any permutation that keeps the
mask; given ``m = |R & mask|`` it is then a uniform ``m``-subset of the masked patches with a
uniform ``(K - m)``-subset of the visible ones. So: draw ``m`` by inverse CDF from a float64
table computed at trace time (one row per possible ``n``, float32 only in its rounding), then
one radix selection that keeps the two uniform subsets (``ops.split_top_k_keys``).

The same holds for a strategy whose stripes or blocks ``U`` hold some other fixed number ``u`` of
patches and are first trimmed or filled to K uniformly (``ops.fill_with_bits``): the fill also
treats every patch of ``U`` alike and every other alike, so the fill and the swap together are
again one count ``m = |R & U|`` and one selection (:func:`fill_and_swap`).
"""
from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np

from dwm_jax.masking import ops


def num_hinted(num_masked: int, hint: float | jnp.ndarray) -> jnp.ndarray:
  """``int(K * hint)`` clipped to ``[0, K]`` (traced-friendly int32 scalar)."""
  h = jnp.asarray(hint, jnp.float32)
  return jnp.clip(jnp.floor(num_masked * h), 0, num_masked).astype(jnp.int32)


def _hypergeometric(log_fact: np.ndarray, total: int, good: np.ndarray | int,
                    draws: int) -> np.ndarray:
  """``P(x good among draws)`` for ``x = 0..draws``: ``[..., draws + 1]`` float64 (``good`` may
  be an array of good counts, one distribution each)."""
  good = np.asarray(good)[..., None]
  x = np.arange(draws + 1)
  bad = total - good
  possible = (x <= good) & (draws - x <= bad)
  a, c = np.clip(x, 0, good), np.clip(draws - x, 0, bad)
  # log C(good, x) + log C(bad, draws - x) - log C(total, draws), impossible ones at 0.
  log_pmf = (log_fact[good] - log_fact[a] - log_fact[good - a] + log_fact[bad] - log_fact[c]
             - log_fact[bad - c] - log_fact[total] + log_fact[draws] + log_fact[total - draws])
  return np.where(possible, np.exp(np.where(possible, log_pmf, 0.0)), 0.0)


@functools.lru_cache(maxsize=32)
def kept_cdf(num_patches: int, num_masked: int, group_size: int) -> np.ndarray:
  """``P(m <= i)`` for every swap size: float32 ``[K + 1, K + 1]``, row ``n``, column ``i``.

  ``m = |R & U|`` where ``U`` holds ``u = group_size`` of the ``N`` patches and ``R`` is ``U``
  trimmed or filled to K uniformly, then swapped by ``n``. With ``s = min(u, K)`` patches of
  ``U`` in the filled mask, the swap reveals ``r`` of them (hypergeometric: ``n`` of the K masked
  patches) and re-masks ``t`` of the ``u - s + r`` patches of ``U`` in its pool (``n`` of ``N - K
  + n``): ``m = s - r + t``. Computed in float64; ``u = K`` is the plain swap.
  """
  n_all, k, u = num_patches, num_masked, group_size
  if not (0 <= k <= n_all and 0 <= u <= n_all):
    raise ValueError(f"kept_cdf needs 0 <= K, u <= N; got N={n_all}, K={k}, u={u}")
  log_fact = np.concatenate([[0.0], np.cumsum(np.log(np.arange(1, n_all + 1)))])
  s = min(u, k)
  pmf = np.zeros((k + 1, k + 1))
  for n in range(k + 1):
    revealed = _hypergeometric(log_fact, k, s, n)                     # [n + 1]: r
    r = np.flatnonzero(revealed)   # one value when U holds the mask or lies inside it
    remasked = _hypergeometric(log_fact, n_all - k + n, u - s + r, n)  # [len(r), n + 1]: t
    m = s - r[:, None] + np.arange(n + 1)[None, :]
    weight = revealed[r, None] * remasked
    ok = weight > 0
    pmf[n] = np.bincount(m[ok], weight[ok], minlength=k + 1)
  cdf = np.cumsum(pmf, axis=1) / pmf.sum(axis=1, keepdims=True)
  cdf[:, s:] = 1.0   # exactly (m <= s): the inverse CDF below then never passes it
  return cdf.astype(np.float32)


def _swap(key: jax.Array, group: jnp.ndarray, group_size: int, num_masked: int,
          n_swap: jnp.ndarray) -> jnp.ndarray:
  """The result of filling ``group: bool [B, ...]`` (``group_size`` per row) to K and swapping
  ``n_swap``, in one selection."""
  b, n = group.shape[0], math.prod(group.shape[1:])
  order, count_bits = jnp.split(ops.random_bits(key, (b, n + 1)), [n], axis=1)
  u_count = ops.bits_to_uniform(count_bits)
  cdf = jnp.asarray(kept_cdf(n, num_masked, group_size))[n_swap]        # [K + 1]
  # Inverse CDF: m = #{i : P(m <= i) <= u} (a binary search; the CDF is non-decreasing and its
  # columns from min(u, K) on are exactly 1 > u). Comparing all K + 1 columns cost 4x more at
  # [2048, 512].
  m = jnp.searchsorted(cdf, u_count[:, 0], side="right",
                       method="scan_unrolled").astype(jnp.int32)          # [B]
  return ops.split_top_k_keys(order.reshape(group.shape), group, m, num_masked - m,
                              group_size=group_size)


def _no_swap(hint: float | jnp.ndarray, num_masked: int) -> bool:
  """A concrete hint (e.g. the default 0.0) that swaps nothing: nothing to trace or compile.
  Same float32 arithmetic as :func:`num_hinted`."""
  return (not isinstance(hint, jax.core.Tracer)
          and np.floor(np.float32(num_masked) * np.float32(hint)) <= 0)


def hint_swap(key: jax.Array, mask: jnp.ndarray, num_masked: int,
              hint: float | jnp.ndarray) -> jnp.ndarray:
  """``mask: bool [B, N]`` (exactly K per row) -> ``bool [B, N]``, exactly K per row.

  ``hint`` may be traced; at ``int(K * hint) == 0`` the mask comes back unchanged at no cost.
  """
  if _no_swap(hint, num_masked):
    return mask
  return _hint_swap(key, mask, num_masked, jnp.asarray(hint, jnp.float32))


def fill_and_swap(key: jax.Array, bits: jnp.ndarray, union: jnp.ndarray, union_size: int,
                  num_masked: int, hint: float | jnp.ndarray) -> jnp.ndarray:
  """``hint_swap(key, ops.fill_with_bits(bits, union, K), K, hint)`` in law, one selection.

  ``union: bool [B, ...]`` holds exactly ``union_size`` patches per row (static); ``bits:
  uint32`` of its shape order the fill. At ``int(K * hint) == 0`` this is exactly the fill; above,
  one selection over ``union`` with its own noise replaces the fill's and the swap's.
  """
  if _no_swap(hint, num_masked):
    return ops.fill_with_bits(bits, union, num_masked)
  return _fill_and_swap(key, bits, union, union_size, num_masked, jnp.asarray(hint, jnp.float32))


# jit: an eager caller would otherwise re-trace and re-compile the cond (whose branches close
# over the mask) at every call; inside a jitted step this is inlined.
@functools.partial(jax.jit, static_argnums=2)
def _hint_swap(key: jax.Array, mask: jnp.ndarray, num_masked: int,
               hint: jnp.ndarray) -> jnp.ndarray:
  n_swap = num_hinted(num_masked, hint)
  return jax.lax.cond(n_swap > 0, lambda: _swap(key, mask, num_masked, num_masked, n_swap),
                      lambda: mask)


@functools.partial(jax.jit, static_argnums=(3, 4))
def _fill_and_swap(key: jax.Array, bits: jnp.ndarray, union: jnp.ndarray, union_size: int,
                   num_masked: int, hint: jnp.ndarray) -> jnp.ndarray:
  n_swap = num_hinted(num_masked, hint)
  return jax.lax.cond(n_swap > 0, lambda: _swap(key, union, union_size, num_masked, n_swap),
                      lambda: ops.fill_with_bits(bits, union, num_masked))


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
