"""Hypergeometric counts: exact float64 tables at trace time, and a per-row sampler in the graph.

``x ~ HG(total, good, draws)``: how many of ``draws`` patches taken without replacement from
``total`` are among ``good`` marked ones. The hint swap needs such counts to sample the outcome of
reveal-then-re-mask before its one selection (``hint.py``).

:func:`sample` draws one count per row with per-row ``good`` and ``draws`` (e.g. a fill whose
size differs between rows): inversion that visits the support outward from the mode (``M, M - 1,
M + 1, ...``), the pmf carried by its ratio recurrence from the mode's probability, which comes
from a float64 table. Any fixed visiting order gives an exact inversion sampler; this one stops
after about ``2 |x - M| + 1`` values, a few standard deviations (``<= sqrt(draws) / 2``), so a
loop over ``[B]`` vectors of some tens of steps replaces a ``[B, total]`` CDF.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np


def log_factorials(n: int) -> np.ndarray:
  """``log(i!)`` for ``i = 0..n``, float64 ``[n + 1]``."""
  return np.concatenate([[0.0], np.cumsum(np.log(np.arange(1, n + 1)))])


def pmf(log_fact: np.ndarray, total: int, good: np.ndarray | int, draws: int) -> np.ndarray:
  """``P(x)`` for ``x = 0..draws``: float64 ``[..., draws + 1]`` (``good`` may be an array of
  good counts, one distribution each; ``log_fact`` from :func:`log_factorials`, ``>= total``)."""
  good = np.asarray(good)[..., None]
  x = np.arange(draws + 1)
  bad = total - good
  lo, hi = np.maximum(0, draws - bad), np.minimum(good, draws)
  # Impossible outcomes at 0 (their log evaluated at a clipped, possible x and discarded).
  log_p = _log_pmf(log_fact, total, good, draws, np.clip(x, lo, hi))
  return np.where((x >= lo) & (x <= hi), np.exp(log_p), 0.0)


def _log_pmf(log_fact: np.ndarray, total, good, draws, x) -> np.ndarray:
  """``log C(good, x) + log C(total - good, draws - x) - log C(total, draws)`` (arrays
  broadcast; ``x`` possible)."""
  bad = total - good
  return (log_fact[good] - log_fact[x] - log_fact[good - x] + log_fact[bad] - log_fact[draws - x]
          - log_fact[bad - draws + x] - log_fact[total] + log_fact[draws] + log_fact[total - draws])


def _mode(total, good, draws):
  """The mode ``floor((draws + 1)(good + 1) / (total + 2))`` (numpy or jnp integers)."""
  return (draws + 1) * (good + 1) // (total + 2)


@functools.lru_cache(maxsize=16)
def mode_probabilities(total: int) -> np.ndarray:
  """``P(x = mode)`` for every ``(good, draws)``: float32 ``[total + 1, total + 1]`` from float64."""
  g, d = np.meshgrid(np.arange(total + 1), np.arange(total + 1), indexing="ij")
  return np.exp(_log_pmf(log_factorials(total), total, g, d, _mode(total, g, d))).astype(np.float32)


def sample(u: jnp.ndarray, total: int, good: jnp.ndarray, draws: jnp.ndarray) -> jnp.ndarray:
  """One ``HG(total, good, draws)`` count per row: ``u: float32 [B]`` uniform in [0, 1),
  ``good, draws: int [B]`` in ``[0, total]`` -> ``int32 [B]``.

  Exact up to float32 rounding of the probabilities (about 1e-7 per step of the recurrence, so
  about 1e-6 over the values a row visits). Its loop stops when every row's count is found, so
  its trip count depends on the data: a host round trip per step on GPUs (see
  ``ops.HOST_PREDICATE_PLATFORMS``), where callers should avoid it.
  """
  good = jnp.asarray(good, jnp.int32)
  draws = jnp.asarray(draws, jnp.int32)
  lo = jnp.maximum(0, draws - (total - good))
  hi = jnp.minimum(good, draws)
  mode = jnp.clip(_mode(total, good, draws), lo, hi)
  p_mode = jnp.asarray(mode_probabilities(total))[good, draws]
  bad = total - good
  left = u - p_mode                       # probability still to pass; found once it is < 0

  def step(state):
    down, up, p_down, p_up, left, x, found = state
    # One value below, then one above (where the support goes on); ratios of the pmf:
    # P(i - 1) / P(i) = i (bad - draws + i) / ((good - i + 1)(draws - i + 1)).
    go_down = ~found & (down > lo)
    i = down.astype(jnp.float32)
    ratio = i * (bad - draws + down).astype(jnp.float32) / (
        (good - down + 1) * (draws - down + 1)).astype(jnp.float32)
    p_down = jnp.where(go_down, p_down * ratio, p_down)
    down = jnp.where(go_down, down - 1, down)
    left = jnp.where(go_down, left - p_down, left)
    hit = go_down & (left < 0)
    x, found = jnp.where(hit, down, x), found | hit
    # P(i + 1) / P(i) = (good - i)(draws - i) / ((i + 1)(bad - draws + i + 1)).
    go_up = ~found & (up < hi)
    ratio = ((good - up) * (draws - up)).astype(jnp.float32) / (
        (up + 1) * (bad - draws + up + 1)).astype(jnp.float32)
    p_up = jnp.where(go_up, p_up * ratio, p_up)
    up = jnp.where(go_up, up + 1, up)
    left = jnp.where(go_up, left - p_up, left)
    hit = go_up & (left < 0)
    x = jnp.where(hit, up, x)
    # Rounding can leave a sliver of u past the whole support: the last value visited takes it.
    exhausted = (down <= lo) & (up >= hi)
    x = jnp.where(~found & ~hit & exhausted, jnp.where(go_up, up, down), x)
    return down, up, p_down, p_up, left, x, found | hit | exhausted

  def going(state):
    return ~jnp.all(state[-1])

  found = left < 0
  state = (mode, mode, p_mode, p_mode, left, mode, found | ((mode <= lo) & (mode >= hi)))
  return jax.lax.while_loop(going, step, state)[5]
