"""BEiT block masking (``microsoft/unilm``, ``beit/masking_generator.py``), exact count.

Rectangles are added until K patches are masked. Matched from ``MaskingGenerator`` (``height`` =
frequency rows ``Fp``, ``width`` = time columns ``Tp``):

* one block call (``_mask``) makes up to 10 attempts; each draws ``area ~ U(min_num_patches,
  max_mask)`` with ``max_mask = min(K - count, max_num_patches)``, ``aspect = exp(U(log lo,
  log hi))``, ``h = round(sqrt(area * aspect))``, ``w = round(sqrt(area / aspect))`` (round half to
  even, as Python's ``round``), and only proceeds when ``w < Tp and h < Fp`` (strict, so a block
  never spans a whole axis); ``top ~ U{0..Fp-h}``, ``left ~ U{0..Tp-w}``;
* the attempt is accepted when the rectangle adds ``0 < new <= max_mask`` patches (so the count
  never overshoots K); a call ends at its first accepted attempt;
* blocks are added while ``count < K``; a call with 10 rejected attempts stops the row.

The reference may stop short of K (always on grids with one row or one column, where no block
fits); the remainder is filled uniformly among the unmasked patches, as the issue requires.

Vectorised over the batch: one ``while_loop`` step is one attempt for every row, with per-row
state (mask as bit rows, count, failed attempts in the current call, done). It stops when every
row is done; it is bounded by ``10 * (K + 1)`` steps (each accepted block adds at least one
patch). The last rows to finish take the most steps, so once at most a quarter of the rows go
on they continue in a batch that size (gathered, then scattered back). On GPUs, where a loop's
data-dependent predicate is a host round trip, the stop is checked once per chunk of 16
attempts instead of at every attempt (the same process, its noise cut at other steps).

Hint: the usual hint swap (``hint.py``), drawn together with the fill as one selection
(``hint.fill_and_swap``); at ``hint >= 1`` it is plain random masking.
"""
from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp

from dwm_jax.masking import ops
from dwm_jax.masking.hint import fill_and_swap
from dwm_jax.masking.registry import register
from dwm_jax.patching import Grid

ATTEMPTS = 10  # per block call, as in BEiT
CHUNK = 16     # attempts whose noise is drawn at once
STAGE_SHRINK = 4     # the rows still going move to a batch this many times smaller ...
STAGE_MIN_ROWS = 16  # ... down to this many rows


def beit_blocks(key: jax.Array, batch: int, grid: Grid, num_masked: int | jnp.ndarray, *,
                min_num_patches: float = 4, max_num_patches: int | None = None,
                min_aspect: float = 0.3, max_aspect: float | None = None) -> jnp.ndarray:
  """BEiT's block mask per row (may hold fewer than ``num_masked``): ``bool [B, N]``.

  ``num_masked`` may be traced: the loop never needs it as a shape, so eager callers compile the
  loop once per grid rather than once per ratio.
  """
  if not min_aspect > 0.0:
    raise ValueError(f"block min_aspect must be > 0, got {min_aspect}")
  max_aspect = max_aspect or 1.0 / min_aspect
  if not min_aspect <= max_aspect:
    raise ValueError(f"block aspect range must satisfy 0 < min_aspect <= max_aspect, got "
                     f"({min_aspect}, {max_aspect})")
  return _beit_blocks(key, jnp.asarray(num_masked, jnp.int32), batch=batch, grid=grid,
                      min_num_patches=float(min_num_patches), max_num_patches=max_num_patches,
                      log_aspect=(math.log(min_aspect), math.log(max_aspect)))


@functools.partial(jax.jit, static_argnames=("batch", "grid", "min_num_patches",
                                             "max_num_patches", "log_aspect"))
def _beit_blocks(key: jax.Array, num_masked: jnp.ndarray, *, batch: int, grid: Grid,
                 min_num_patches: float, max_num_patches: int | None,
                 log_aspect: tuple[float, float]) -> jnp.ndarray:
  max_patches = num_masked if max_num_patches is None else jnp.int32(max_num_patches)
  log_lo, log_hi = log_aspect
  height, width = grid.freq, grid.time
  words = -(-width // 32)
  rows = jnp.arange(height)[None, :]                                   # [1, H]
  word_start = (32 * jnp.arange(words))[None, :]                       # [1, W32]

  def low_bits(m):  # m in [0, 32] -> uint32 with the m low bits set
    m = m.astype(jnp.uint32)
    return jnp.where(m >= 32, jnp.uint32(0xFFFFFFFF),
                     (jnp.uint32(1) << jnp.minimum(m, 31)) - jnp.uint32(1))

  def rectangle(noise, count):
    """Attempt ``noise: [4, B]`` at ``count`` -> ``(cols [B, W32], in_rows [B, H], fits,
    max_mask)``: the rectangle as bit rows, columns ``[left, left + w)`` of each 32-column word
    on the rows ``[top, top + h)`` (popcounts on words instead of compares on bools)."""
    u_area, u_aspect, u_top, u_left = noise
    max_mask = jnp.minimum(num_masked - count, max_patches).astype(jnp.float32)
    area = min_num_patches + (max_mask - min_num_patches) * u_area
    aspect = jnp.exp(log_lo + (log_hi - log_lo) * u_aspect)
    h = jnp.round(jnp.sqrt(area * aspect)).astype(jnp.int32)
    w = jnp.round(jnp.sqrt(area / aspect)).astype(jnp.int32)
    fits = (w < width) & (h < height)
    top = jnp.floor(u_top * jnp.maximum(height - h + 1, 1)).astype(jnp.int32)
    left = jnp.floor(u_left * jnp.maximum(width - w + 1, 1)).astype(jnp.int32)
    top, left, h, w = (v[:, None] for v in (top, left, h, w))
    cols = (low_bits(jnp.clip(left + w - word_start, 0, 32))
            & ~low_bits(jnp.clip(left - word_start, 0, 32)))
    in_rows = (rows >= top) & (rows < top + h)
    return cols, in_rows, fits, max_mask

  def attempt(state, drawn):
    step, key, mask, count, fails, done = state
    cols, in_rows, fits, max_mask = drawn
    rect = jnp.where(in_rows[:, :, None], cols[:, None, :], jnp.uint32(0))   # [B, H, W32]
    n_new = jnp.sum(jax.lax.population_count(rect & ~mask), axis=(1, 2), dtype=jnp.int32)
    ok = ~done & fits & (n_new > 0) & (n_new <= max_mask)
    # mask | rect, not mask | new: the new bits are then only counted, never stored.
    mask = mask | jnp.where(ok[:, None, None], rect, jnp.uint32(0))
    count = count + jnp.where(ok, n_new, 0)
    fails = jnp.where(ok, 0, fails + (~done).astype(jnp.int32))
    done = done | (count >= num_masked) | (fails >= ATTEMPTS)
    return step + 1, key, mask, count, fails, done

  def attempt_then_next(state, drawn, next_noise):
    """One attempt, then the next attempt's rectangle from the new count. The rectangle is
    loop state, so it is computed once per row: computed inside the attempt, XLA:CPU fused the
    per-row arithmetic into every word of the [B, H, W32] update (1.2-1.5x slower, measured)."""
    state = attempt(state, drawn)
    return state, rectangle(next_noise, state[3])

  bound = ATTEMPTS * (num_masked + 1)

  def run(step, key, per_row, until):
    """Attempts on ``per_row = (mask, count, fails, done)`` until <= ``until`` rows go on."""
    size = per_row[0].shape[0]

    def running(state):
      step, *_, done = state
      return (step < bound) & (jnp.sum(~done, dtype=jnp.int32) > until)

    def chunk(state):
      # The noise of CHUNK attempts in one draw: a PRNG call per attempt cost more than the
      # attempt itself (measured, experiments/mask_cost/README.md).
      step, key, *rest = state
      key, sub = jax.random.split(key)
      noise = ops.uniform_noise(sub, (CHUNK, 4, size))
      first = step

      start = ((step, key, *rest), rectangle(noise[0], rest[1]))

      def more(inner):
        return running(inner[0]) & (inner[0][0] < first + CHUNK)

      def step_in_chunk(i, inner):
        return attempt_then_next(*inner, noise[jnp.minimum(i + 1, CHUNK - 1)])

      def until_done():
        return jax.lax.while_loop(more, lambda inner: step_in_chunk(inner[0][0] - first, inner),
                                  start)[0]

      def whole_chunk():
        # A known trip count (no host round trip per attempt on GPUs); attempts on done rows
        # change nothing, and no row needs more than ``bound`` attempts.
        return jax.lax.fori_loop(0, CHUNK, step_in_chunk, start)[0]

      return ops.on_host_predicate_platforms(whole_chunk, until_done)

    step, key, *per_row = jax.lax.while_loop(running, chunk, (step, key, *per_row))
    return step, key, tuple(per_row)

  # The loop runs until the slowest row is done, and its cost is per row and step: once few rows
  # go on, they continue in a batch STAGE_SHRINK times smaller (their state gathered, then
  # scattered back). Each row's attempts are the same process whichever stage runs them.
  sizes = [batch]
  while sizes[-1] // STAGE_SHRINK >= STAGE_MIN_ROWS:
    sizes.append(sizes[-1] // STAGE_SHRINK)
  zeros = jnp.zeros((batch,), jnp.int32)
  per_row = (jnp.zeros((batch, height, words), jnp.uint32), zeros, zeros,
             jnp.zeros((batch,), bool))
  step, stages = jnp.int32(0), []
  for i in range(len(sizes)):
    until = sizes[i + 1] if i + 1 < len(sizes) else 0
    step, key, per_row = run(step, key, per_row, until)
    if until:
      going = jnp.argsort(per_row[3], stable=True)[:until]   # the rows not done come first
      stages.append((going, per_row))
      per_row = tuple(x[going] for x in per_row)
  for going, full in reversed(stages):
    per_row = tuple(f.at[going].set(r) for f, r in zip(full, per_row))
  bits = per_row[0]
  col = jnp.arange(width)
  mask = (bits[:, :, col // 32] >> (col % 32).astype(jnp.uint32)) & jnp.uint32(1)
  return mask.astype(bool).reshape(batch, grid.num_patches)


@register("block", min_num_patches=4, max_num_patches=None, min_aspect=0.3, max_aspect=None)
def block_masking(key: jax.Array, patches: jnp.ndarray, *, grid: Grid, num_masked: int,
                  hint: float | jnp.ndarray = 0.0, ratio: float | None = None,
                  min_num_patches: float = 4, max_num_patches: int | None = None,
                  min_aspect: float = 0.3, max_aspect: float | None = None) -> jnp.ndarray:
  """BEiT block masking finished to K. ``patches: [B, N, P]`` (shape only) -> ``bool [B, N]``.

  Options as BEiT's ``MaskingGenerator``: ``min_num_patches`` (smallest block area drawn),
  ``max_num_patches`` (largest, default K), ``min_aspect`` / ``max_aspect`` (default
  ``1 / min_aspect``) bound the log-uniform height/width ratio.
  """
  del ratio
  b, n, _ = patches.shape
  k_blocks, k_fill, k_hint = jax.random.split(key, 3)
  blocks = beit_blocks(k_blocks, b, grid, num_masked, min_num_patches=min_num_patches,
                       max_num_patches=max_num_patches, min_aspect=min_aspect,
                       max_aspect=max_aspect)
  # BEiT never masks more than K, so the fill and the hint swap are one selection at h > 0.
  return fill_and_swap(k_hint, ops.random_bits(k_fill, (b, n)), blocks, None, num_masked, hint)
