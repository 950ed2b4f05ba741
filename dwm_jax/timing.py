"""Wall-clock timing for the benchmark scripts: medians of blocking calls, matmul peak."""
from __future__ import annotations

import statistics
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp


def median_seconds(fn: Callable[[], Any], steps: int, warmup: int = 1) -> float:
  """Median seconds of ``fn()`` (which must block, e.g. end in ``block_until_ready``) over
  ``steps`` calls after ``warmup`` untimed ones (compilation, first-touch allocation)."""
  for _ in range(warmup):
    fn()
  times = []
  for _ in range(steps):
    t = time.perf_counter()
    fn()
    times.append(time.perf_counter() - t)
  return statistics.median(times)


def matmul_flops_per_s(n: int, steps: int, dtype: Any = jnp.float32, chain: int = 8) -> float:
  """FLOP/s of ``n x n`` matmuls in ``dtype``: the practical matmul peak of the default device.

  ``chain`` matmuls run in one call, so the launch overhead stays out of the figure.
  """
  a = jax.random.normal(jax.random.key(0), (n, n), dtype)
  b = jax.random.normal(jax.random.key(1), (n, n), dtype)
  mm = jax.jit(lambda x, y: jax.lax.fori_loop(0, chain, lambda i, acc: (acc @ y) * 0.5, x))
  return chain * 2 * n**3 / median_seconds(lambda: mm(a, b).block_until_ready(), steps)
