"""Hint swap and its schedule, as in the DWM authors' M2D code.

The hint ratio ``h`` blends a strategy's mask toward uniform random masking: ``n = int(K * h)`` of
the masked patches are revealed (chosen uniformly), then ``n`` patches are re-masked, chosen
uniformly from the visible + revealed ones. The count stays K; ``h >= 1`` is plain random masking.

Cost. ``h`` may be traced (the train step computes it from the step counter): the swap runs
under ``lax.cond(n > 0, ...)``, so at ``n == 0`` it costs nothing, draws no noise and never
recompiles when ``h`` changes. Compiled for GPUs there is no cond: XLA:GPU copies a cond's
predicate to the host and waits for the stream, once per train step here. There the swap
always runs; at ``n == 0`` its count is certain and it returns the mask (or the fill) itself.
For ``n > 0`` it is one selection, not the reference's two, by sampling the outcome's one free
count first. The swap treats every masked patch alike and every
visible one alike, so the law of its result ``R`` is unchanged by any permutation that keeps the
mask; given ``m = |R & mask|`` it is then a uniform ``m``-subset of the masked patches with a
uniform ``(K - m)``-subset of the visible ones. So: draw ``m`` by inverse CDF from a float64
table computed at trace time (one row per possible ``n``, float32 only in its rounding), then
one radix selection that keeps the two uniform subsets (``ops.split_top_k_keys``).

The same holds for a strategy whose stripes or blocks ``U`` are first trimmed or filled to K
uniformly (``ops.fill_with_bits``): the fill also treats every patch of ``U`` alike and every
other alike, so the fill and the swap together are again one count ``m = |R & U|`` and one
selection (:func:`fill_and_swap`), ordered by the fill's own random bits. When every row's ``U``
holds the same ``u`` patches (stripes), ``m`` comes from a table as above. When ``u`` differs per
row (BEiT's blocks, at most K), ``m`` is the plain swap's count less the filled patches among
those it takes out, a hypergeometric count drawn per row (:mod:`hypergeometric`).
"""
from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np

from dwm_jax.masking import hypergeometric, ops


def num_hinted(num_masked: int, hint: float | jnp.ndarray) -> jnp.ndarray:
  """``int(K * hint)`` clipped to ``[0, K]`` (traced-friendly int32 scalar)."""
  h = jnp.asarray(hint, jnp.float32)
  return jnp.clip(jnp.floor(num_masked * h), 0, num_masked).astype(jnp.int32)


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
  log_fact = hypergeometric.log_factorials(n_all)
  s = min(u, k)
  pmf = np.zeros((k + 1, k + 1))
  for n in range(k + 1):
    revealed = hypergeometric.pmf(log_fact, k, s, n)                     # [n + 1]: r
    r = np.flatnonzero(revealed)   # one value when U holds the mask or lies inside it
    remasked = hypergeometric.pmf(log_fact, n_all - k + n, u - s + r, n)  # [len(r), n + 1]: t
    m = s - r[:, None] + np.arange(n + 1)[None, :]
    weight = revealed[r, None] * remasked
    ok = weight > 0
    pmf[n] = np.bincount(m[ok], weight[ok], minlength=k + 1)
  cdf = np.cumsum(pmf, axis=1) / pmf.sum(axis=1, keepdims=True)
  cdf[:, s:] = 1.0   # exactly (m <= s): the inverse CDF below then never passes it
  return cdf.astype(np.float32)


def _swap(order: jnp.ndarray, u_count: jnp.ndarray, group: jnp.ndarray, group_size: int | None,
          num_masked: int, n_swap: jnp.ndarray) -> jnp.ndarray:
  """The result of filling ``group: bool [B, ...]`` to K and swapping ``n_swap``, in one
  selection ordered by ``order: uint32`` (random bits of ``group``'s shape), its counts drawn by
  ``u_count: float32 [B, 1]`` (``[B, 2]`` for ``group_size=None``). ``group_size``: every row's
  count, or ``None`` for counts that differ per row (each at most K)."""
  b, n = group.shape[0], math.prod(group.shape[1:])
  size = num_masked if group_size is None else group_size
  cdf = jnp.asarray(kept_cdf(n, num_masked, size))[n_swap]              # [K + 1]
  # Inverse CDF: m = #{i : P(m <= i) <= u} (a binary search; the CDF is non-decreasing and its
  # columns from min(u, K) on are exactly 1 > u). Comparing all K + 1 columns cost 4x more at
  # [2048, 512].
  m = jnp.searchsorted(cdf, u_count[:, 0], side="right",
                       method="scan_unrolled").astype(jnp.int32)          # [B]
  if group_size is None:
    # m above is the plain swap's (of a full mask). With ``f = K - |group|`` filled patches,
    # the swap takes ``K - m`` of the K masked ones out, a hypergeometric number of them filled.
    filled = num_masked - jnp.sum(group.reshape(b, n), axis=1, dtype=jnp.int32)
    removed = num_masked - m
    m = (num_masked - filled) - removed + hypergeometric.sample(
        u_count[:, 1], num_masked, filled, removed)
  return ops.split_top_k_keys(order, group, m, num_masked - m, group_size=group_size)


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


def fill_and_swap(key: jax.Array, bits: jnp.ndarray, union: jnp.ndarray,
                  union_size: int | None, num_masked: int,
                  hint: float | jnp.ndarray) -> jnp.ndarray:
  """``hint_swap(key, ops.fill_with_bits(bits, union, K), K, hint)`` in law, one selection.

  ``union: bool [B, ...]`` holds exactly ``union_size`` patches per row (static), or, with
  ``union_size=None``, at most K per row (e.g. BEiT's blocks); ``bits: uint32`` of its shape
  order the fill. At ``int(K * hint) == 0`` this is exactly the fill; above, one selection over
  ``union``, ordered by the same bits, replaces the fill's and the swap's, and ``key`` draws only
  its counts. Per-row sizes draw one of them in a short data-dependent loop
  (:func:`hypergeometric.sample`): compiled for GPUs they take the fill and then the swap.
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

  def swapped():
    b, n = mask.shape
    order, count_bits = jnp.split(ops.random_bits(key, (b, n + 1)), [n], axis=1)
    return _swap(order, ops.bits_to_uniform(count_bits), mask, num_masked, num_masked, n_swap)

  # At n_swap == 0 the swap gives the mask back: GPUs run it rather than wait on a cond.
  return ops.shortcut_off_host_predicate_platforms(n_swap == 0, lambda: mask, swapped)


@functools.partial(jax.jit, static_argnums=(3, 4))
def _fill_and_swap(key: jax.Array, bits: jnp.ndarray, union: jnp.ndarray,
                   union_size: int | None, num_masked: int, hint: jnp.ndarray) -> jnp.ndarray:
  n_swap = num_hinted(num_masked, hint)

  def filled():
    return ops.fill_with_bits(bits, union, num_masked)

  def swapped():
    # The fill's bits order the selection: they are independent of the union and the fill is
    # not drawn, so only the counts need new noise.
    u_count = ops.bits_to_uniform(ops.random_bits(key, (union.shape[0], 2)))
    if union_size is not None:
      return _swap(bits, u_count, union, union_size, num_masked, n_swap)

    def fill_then_swap():
      # On GPUs, where the per-row count's loop would stop the stream at every step. The fill
      # spent ``bits``, so the swap orders by new ones.
      order = ops.random_bits(jax.random.fold_in(key, 1), bits.shape)
      return _swap(order, u_count, filled(), num_masked, num_masked, n_swap)

    return ops.on_host_predicate_platforms(
        fill_then_swap, lambda: _swap(bits, u_count, union, None, num_masked, n_swap))

  # At n_swap == 0 the swap gives the fill itself: GPUs run it rather than wait on a cond.
  return ops.shortcut_off_host_predicate_platforms(n_swap == 0, filled, swapped)


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
