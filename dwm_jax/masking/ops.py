"""Exact-count building blocks shared by the strategies (static shapes, no loops over the batch)."""
from __future__ import annotations

import functools
import math
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from dwm_jax.masking import threefry


def ranks(x: jnp.ndarray) -> jnp.ndarray:
  """Rank of every entry along the last axis (0 = smallest): ``[B, N] -> int32 [B, N]``.

  Ties are broken by index, so every row holds a permutation of ``0..N-1``.
  """
  order = jnp.argsort(x, axis=-1, stable=True)
  return jnp.argsort(order, axis=-1, stable=True).astype(jnp.int32)


def orderable_keys(x: jnp.ndarray) -> jnp.ndarray:
  """Maps float32 to uint32 so that unsigned order equals float order: ``[B, N] -> uint32``."""
  bits = jax.lax.bitcast_convert_type(x.astype(jnp.float32), jnp.uint32)
  return jnp.where(bits >> 31 == 1, ~bits, bits | jnp.uint32(0x80000000))


def count_dtype(n: int) -> jnp.dtype:
  """Narrowest integer that holds a count of ``n`` entries: int16 counts vectorise better."""
  return jnp.int16 if n < 2**15 else jnp.int32


# Where a while loop's data-dependent predicate is a round trip to the host: XLA:GPU copies it
# back and waits for the stream on every pass (``WhileThunk``) and for every ``cond`` branch
# index, unless the trip count is known at compile time. There the selections run a fixed
# number of passes and skip the tie test; CPU and TPU evaluate predicates where they compute.
HOST_PREDICATE_PLATFORMS = ("cuda", "rocm")


def _radix_search(count, k: jnp.ndarray, size: jnp.ndarray, prefix: jnp.ndarray | None = None,
                  first_bit: int = 0) -> tuple[jnp.ndarray, jnp.ndarray]:
  """The k-th largest key of every row and side, fixed one bit at a time from the top.

  ``count: uint32 [B, S] -> int32 [B, S]`` counts each side's keys at or above a threshold (one
  fused pass over the row); ``k, size: int32 [B, S]`` are the wanted and available counts.
  ``prefix: uint32 [B, S]`` holds bits every side's keys share above ``first_bit`` (bit 0 is the
  top one), e.g. a side flag in the top bit. Returns ``(kth: uint32 [B, S], exact)``. On CPU and
  TPU the loop stops once every prefix already bounds exactly ``k`` keys (the k-th and
  (k+1)-th largest differ above the bits left): about ``log2(N * B)`` passes for random keys,
  not 32. On GPUs it runs all of them (a known trip count: no host round trip per pass). Either
  way the mask ``keys >= kth`` is the same. ``exact`` says no row has a tie at its k-th key.
  """
  def fix_bit(state):
    i, prefix, n = state
    candidate = prefix | (jnp.uint32(1) << (31 - i).astype(jnp.uint32))
    c = count(candidate)
    take = c >= k
    return i + 1, jnp.where(take, candidate, prefix), jnp.where(take, c, n)

  def undecided(state):
    i, _, n = state
    return (i < 32) & jnp.any(n != k)

  if prefix is None:
    prefix = jnp.zeros(k.shape, jnp.uint32)
  start = (jnp.int32(first_bit), prefix, size)

  # Not unrolled: the unrolled 32 passes made XLA:CPU compile for minutes on small rows (e.g.
  # [16, 8]) and ran no faster at [2048, 190] (6.0 ms rolled vs 7.0 ms unrolled, 2-core CPU).
  # n = #(keys >= prefix) >= k throughout; after the last pass the prefix is the k-th key; once
  # n == k it stays so, and keys >= prefix is already the final set.
  def early_stop():
    return jax.lax.while_loop(undecided, fix_bit, start)[1:]

  def all_passes():
    return jax.lax.fori_loop(first_bit, 32, lambda _, state: fix_bit(state), start)[1:]

  kth, n = on_host_predicate_platforms(all_passes, early_stop)
  return kth, jnp.all(n == k)


def on_host_predicate_platforms(there: Callable[[], Any], elsewhere: Callable[[], Any]) -> Any:
  """``there()`` when compiled for a :data:`HOST_PREDICATE_PLATFORMS` platform, else
  ``elsewhere()`` (both traced; only the target's branch is compiled)."""
  return jax.lax.platform_dependent(
      **{p: there for p in HOST_PREDICATE_PLATFORMS}, default=elsewhere)


def shortcut_off_host_predicate_platforms(use: jnp.ndarray, shortcut: Callable[[], Any],
                                          general: Callable[[], Any]) -> Any:
  """``lax.cond(use, shortcut, general)``, except compiled for a
  :data:`HOST_PREDICATE_PLATFORMS` platform, where a cond's predicate is a host round trip:
  there ``general()`` alone, which must equal ``shortcut()`` wherever ``use`` holds."""
  return on_host_predicate_platforms(general, lambda: jax.lax.cond(use, shortcut, general))


# jit: eager callers (tools, tests) then compile the loop once per shape, not once per call.
@jax.jit
def _largest_mask_keys(keys: jnp.ndarray, k: int | jnp.ndarray) -> jnp.ndarray:
  """True at the ``k`` largest ``keys: uint32 [B, ...]`` per row (over all trailing axes, in
  row-major order), ties to the lower index.

  Radix select (:func:`_radix_search`), then the mask is one comparison, plus a tie fill where
  a row has a tie at its k-th key. On CPU this is several times cheaper than XLA's sort-based
  ``top_k`` (see experiments/mask_cost) and it accepts a traced ``k`` with static shapes.
  Keys built from per-row broadcasts (e.g. ``[B, Fp, 1] | [B, 1, Tp]``) are best passed in that
  shape: as ``[B, Fp * Tp]`` XLA:CPU emits their fusion with index arithmetic that does not
  vectorise (4-5x slower with the random bits fused in, measured).
  """
  # The keys are computed once, before the loop (they are its operand), never fused into a
  # pass. The barrier says so to backends that keep it; XLA:CPU removes it before fusion.
  keys = jax.lax.optimization_barrier(keys)
  shape = keys.shape
  b, n = shape[0], math.prod(shape[1:])
  k = jnp.broadcast_to(jnp.asarray(k, jnp.int32), (b, 1))
  dtype = count_dtype(n)

  def per_row(x):  # [B, 1] -> [B, 1, ..., 1]
    return x.reshape((b,) + (1,) * (keys.ndim - 1))

  def count(t):
    return jnp.sum(keys.reshape(b, n) >= t, axis=-1, keepdims=True,
                   dtype=dtype).astype(jnp.int32)

  kth, exact = _radix_search(count, k, jnp.full((b, 1), n, jnp.int32))

  def fill_ties():
    # Keys above the k-th are in; keys equal to it fill the room left, in index order.
    flat = keys.reshape(b, n)
    above = flat > kth
    tied = flat == kth
    room = k - jnp.sum(above, axis=-1, keepdims=True, dtype=jnp.int32)
    return (above | (tied & (jnp.cumsum(tied, axis=-1, dtype=jnp.int32) <= room))).reshape(shape)

  # Without ties the cumsum of the tie fill is skipped on CPU: it cost as much as the whole
  # search (measured, 1.7-2x). The fill is right either way, so GPUs run it (no host round trip
  # for the branch).
  return shortcut_off_host_predicate_platforms(exact, lambda: keys >= per_row(kth), fill_ties)


@functools.partial(jax.jit, static_argnames="group_size")
def _largest_mask_keys_split(bits: jnp.ndarray, group: jnp.ndarray, k_in: jnp.ndarray,
                             k_out: jnp.ndarray, group_size: int | None = None) -> jnp.ndarray:
  """The ``k_in`` largest ``bits >> 1`` where ``group`` and the ``k_out`` largest where not.

  ``bits: uint32 [B, ...]``, ``group: bool`` of that shape, ``k_in, k_out: int [B, 1]`` (traced).
  The group goes into the keys' top bit (``keys = bits >> 1 | group << 31``), so every inside
  key is above every outside one and a threshold says its side by its top bit: each pass
  compares the keys alone with the two sides' thresholds and sums one packed count (1 for an
  inside key at or above its threshold, ``base`` for an outside key below its own), no group
  or weight read. ``base`` exceeds any inside count; ``group_size`` (static), when every row's
  group has that many entries, gives the smallest, and with it 16-bit counts on larger rows.
  """
  shape = bits.shape
  b, n = shape[0], math.prod(shape[1:])
  # Computed once, before the loop (its operand), in the caller's shape: a [B, Fp, Tp] group
  # flattened first made XLA:CPU's key kernel index-bound (see _largest_mask_keys).
  keys = jax.lax.optimization_barrier(flagged_keys(bits, group)).reshape(b, n)
  group = group.reshape(b, n)
  base = group_size + 1 if group_size is not None else 1 << max(n, 1).bit_length()
  outside_max = n - group_size if group_size is not None else n
  k = jnp.concatenate([jnp.asarray(k_in, jnp.int32), jnp.asarray(k_out, jnp.int32)], axis=1)
  # The packed count in 16 bits where it fits: narrower sums vectorise better (at [2048, 512]
  # with K = 358 masked, 16 against 32 bits cut the swap's passes by a third, measured).
  pass_dtype = jnp.uint16 if (base - 1) + outside_max * base < 2**16 else jnp.int32
  if group_size is not None:
    size_in = jnp.full((b, 1), group_size, jnp.int32)
  else:
    size_in = jnp.sum(group, axis=-1, keepdims=True, dtype=jnp.int32)
  size = jnp.concatenate([size_in, n - size_in], axis=1)

  def count(t):  # [B, 2] thresholds (inside >= 2**31 > outside) -> [B, 2] counts
    # Arithmetic, not selects: XLA:CPU vectorises it better (the selection at 0.99-1.37 plain
    # ones against 1.04-1.44 with nested selects at [256 | 2048, 190 | 512], measured).
    w = ((keys >= t[:, :1]).astype(pass_dtype)
         + (keys < t[:, 1:]).astype(pass_dtype) * pass_dtype(base))
    packed = jnp.sum(w, axis=-1, keepdims=True, dtype=pass_dtype).astype(jnp.int32)
    return jnp.concatenate([packed % base, size[:, 1:] - packed // base], axis=1)

  # Each side's search starts below its flag bit.
  prefix = jnp.broadcast_to(jnp.array([1 << 31, 0], jnp.uint32), (b, 2))
  kth, exact = _radix_search(count, k, size, prefix, first_bit=1)
  kth = jnp.where(group, kth[:, :1], kth[:, 1:])

  def fill_ties():
    # Keys above the k-th are in; ties fill each side's room left, in index order (the running
    # packed count, unpacked per side).
    weight = jnp.where(group, 1, base).astype(jnp.int32)
    above = keys > kth
    tied = keys == kth
    taken = jnp.sum(jnp.where(above, weight, 0), axis=-1, keepdims=True, dtype=jnp.int32)
    room = k - jnp.concatenate([taken % base, taken // base], axis=1)
    running = jnp.cumsum(jnp.where(tied, weight, 0), axis=-1, dtype=jnp.int32)
    return above | (tied & (jnp.where(group, running % base, running // base)
                            <= jnp.where(group, room[:, :1], room[:, 1:])))

  mask = shortcut_off_host_predicate_platforms(exact, lambda: keys >= kth, fill_ties)
  return mask.reshape(shape)


def split_top_k_keys(bits: jnp.ndarray, group: jnp.ndarray, k_in: int | jnp.ndarray,
                     k_out: int | jnp.ndarray, group_size: int | None = None) -> jnp.ndarray:
  """``k_in`` entries inside ``group`` plus ``k_out`` outside it, per row, by largest key.

  ``bits: uint32 [B, ...]`` (e.g. :func:`random_bits`) are the keys; their top 31 bits order
  each side (``bits >> 1``), ties to the lower row-major index. ``group: bool`` of the same
  shape; counts scalars or ``int [B]`` / ``[B, 1]`` (may be traced; ``0 <= k_in <= |group|``,
  ``0 <= k_out <= N - |group|`` per row). One radix loop: the cost of one selection, not two.
  ``group_size``: pass it when every row's ``group`` holds exactly that many entries (e.g. an
  exact-count mask): the passes then count in 16 bits on rows up to about ``2**16 / K`` wide.
  """
  b = bits.shape[0]
  k_in = jnp.broadcast_to(jnp.asarray(k_in, jnp.int32).reshape(-1, 1), (b, 1))
  k_out = jnp.broadcast_to(jnp.asarray(k_out, jnp.int32).reshape(-1, 1), (b, 1))
  return _largest_mask_keys_split(bits, group, k_in, k_out, group_size=group_size)


def smallest_mask(x: jnp.ndarray, n: int | jnp.ndarray, max_n: int | None = None) -> jnp.ndarray:
  """True at the ``n`` smallest entries of each row: ``[B, N] -> bool [B, N]``.

  ``n`` may be traced (``0 <= n <= N``). Same set as ``ranks(x) < n`` (ties by lower index).
  ``max_n`` is accepted for backward compatibility and unused.
  """
  del max_n
  return _largest_mask_keys(~orderable_keys(x), n)


def top_k_mask(scores: jnp.ndarray, k: int | jnp.ndarray) -> jnp.ndarray:
  """True at the ``k`` largest scores of each row: ``[B, N] -> bool [B, N]``, exactly ``k``.

  Ties go to the lower index, as with ``jax.lax.top_k``.
  """
  return _largest_mask_keys(orderable_keys(scores), k)


def top_k_keys(keys: jnp.ndarray, k: int | jnp.ndarray) -> jnp.ndarray:
  """True at the ``k`` largest ``keys: uint32 [B, ...]`` per row, counted over all trailing axes
  (ties to the lower row-major index): a bool mask of the keys' shape."""
  return _largest_mask_keys(keys, k)


def uniform_noise(key: jax.Array, shape: tuple[int, ...]) -> jnp.ndarray:
  """float32 uniform noise, ``jax.random.uniform``'s values (low-precision noise would tie and
  bias masks toward low indices)."""
  return bits_to_uniform(random_bits(key, shape))


def random_bits(key: jax.Array, shape: tuple[int, ...]) -> jnp.ndarray:
  """uint32 random keys for uniform subsets: all 32 bits random.

  Ordering raw bits instead of float32 uniforms (23 random bits in a narrow exponent range) makes
  ties rarer and lets the radix select stop after about ``log2(N * B)`` passes instead of ~25.
  The values of ``jax.random.bits``, hashed faster on CPU (:mod:`dwm_jax.masking.threefry`).
  """
  return threefry.random_bits(key, shape)


def bits_to_uniform(bits: jnp.ndarray) -> jnp.ndarray:
  """uint32 -> float32 uniform in [0, 1) from the top 23 bits (as ``jax.random.uniform``)."""
  mantissa = (bits >> jnp.uint32(9)) | jnp.uint32(0x3F800000)
  return jax.lax.bitcast_convert_type(mantissa, jnp.float32) - 1.0


def draws(key: jax.Array, batch: int, *sizes: int) -> list[jnp.ndarray]:
  """Independent uint32 random keys ``[B, s]``, one per size, cut from a single draw.

  Every PRNG call site is a threefry kernel that XLA compiles separately (about a second on CPU)
  and launches separately; a strategy draws all its noise at once.
  """
  bits = random_bits(key, (batch, sum(sizes)))
  return jnp.split(bits, np.cumsum(sizes)[:-1].tolist(), axis=1)


def uniforms(key: jax.Array, batch: int, *sizes: int) -> list[jnp.ndarray]:
  """Independent float32 uniforms ``[B, s]``, one per size, cut from a single draw."""
  return [bits_to_uniform(b) for b in draws(key, batch, *sizes)]


def random_mask(key: jax.Array, batch: int, num_patches: int, num_masked: int) -> jnp.ndarray:
  """Uniform among all exact-``num_masked`` subsets (MAE's argsort of uniform noise)."""
  return top_k_keys(random_bits(key, (batch, num_patches)), num_masked)


def fill_with_bits(bits: jnp.ndarray, mask: jnp.ndarray, num_masked: int) -> jnp.ndarray:
  """:func:`fill_to_count` with its random keys ``bits: uint32`` (the shape of ``mask``, ``[B,
  ...]``) given."""
  # Masked entries get the top bit: the top-k keeps as many of the current masked entries as fit
  # (chosen uniformly among them by the other 31 random bits) and fills from the rest uniformly.
  return top_k_keys(flagged_keys(bits, mask), num_masked)


def flagged_keys(bits: jnp.ndarray, flag: jnp.ndarray) -> jnp.ndarray:
  """``bits >> 1 | flag << 31``: keys ordered by ``flag`` first, then by the top 31 ``bits``
  (``uint32`` and ``bool`` of one shape)."""
  return (bits >> jnp.uint32(1)) | (flag.astype(jnp.uint32) << jnp.uint32(31))


def fill_to_count(key: jax.Array, mask: jnp.ndarray, num_masked: int) -> jnp.ndarray:
  """Trims or fills each row of ``mask`` to exactly ``num_masked`` True entries, uniformly.

  Rows with too many masked entries lose uniformly chosen ones; rows with too few gain uniformly
  chosen ones from the unmasked entries. Entries already counted are otherwise kept.
  """
  return fill_with_bits(random_bits(key, mask.shape), mask, num_masked)
