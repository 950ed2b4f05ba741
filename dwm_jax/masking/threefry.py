"""``jax.random.bits`` bit for bit, lowered on CPU as one fused elementwise kernel.

JAX lowers its threefry2x32 hash on CPU as a rolled loop (5 steps of 4 rounds) over whole arrays,
which XLA:CPU runs as separate passes. The masks draw their noise every train step, and there
the rolled hash cost as much as an exact-count selection: uint32 ``[256, 191]`` in 0.44 ms against
0.17 ms for the same 20 rounds unrolled, ``[2048, 191]`` in 2.7 against 0.51 ms (2-core CPU,
experiments/mask_cost/README.md). So on CPU this emits the unrolled rounds on the same counters
as JAX's partitionable threefry (the default); on other platforms JAX's own lowering runs (a
fused kernel on GPU). Both give the same bits for the same key.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

_ROTATIONS = ((13, 15, 26, 6), (17, 29, 16, 24))
_PARITY = np.uint32(0x1BD11BDA)


def _rotate_left(x: jnp.ndarray, d: int) -> jnp.ndarray:
  return (x << np.uint32(d)) | (x >> np.uint32(32 - d))


def hash_2x32(k1: jnp.ndarray, k2: jnp.ndarray, x0: jnp.ndarray,
              x1: jnp.ndarray) -> tuple[jnp.ndarray, jnp.ndarray]:
  """Threefry-2x32 (20 rounds, Salmon et al. 2011) of the counter pairs ``(x0, x1)``, unrolled."""
  ks = (k1, k2, k1 ^ k2 ^ _PARITY)
  x0, x1 = x0 + ks[0], x1 + ks[1]
  for i in range(5):
    for r in _ROTATIONS[i % 2]:
      x0 = x0 + x1
      x1 = x0 ^ _rotate_left(x1, r)
    x0 = x0 + ks[(i + 1) % 3]
    x1 = x1 + ks[(i + 2) % 3] + np.uint32(i + 1)
  return x0, x1


def _is_threefry(key: jax.Array) -> bool:
  if not jnp.issubdtype(key.dtype, jax.dtypes.prng_key):
    key = jax.random.wrap_key_data(key)   # a raw uint32 key: the default implementation
  return str(jax.random.key_impl(key)) == "threefry2x32"


def random_bits(key: jax.Array, shape: tuple[int, ...]) -> jnp.ndarray:
  """``jax.random.bits(key, shape, uint32)``, the same values: ``-> uint32 shape``.

  Falls back to ``jax.random.bits`` itself for other PRNG implementations, for the legacy
  (non-partitionable) threefry mode and above 2**32 values.
  """
  shape = tuple(int(s) for s in shape)
  size = int(np.prod(shape, dtype=np.int64))
  if (not jax.config.jax_threefry_partitionable or size >= 2**32 or not _is_threefry(key)):
    return jax.random.bits(key, shape, jnp.uint32)

  def unrolled(key):
    data = jax.random.key_data(key)
    # JAX's counters: the flat index as a uint64, split in (high, low) words; high is 0 here.
    low = jax.lax.iota(jnp.uint32, size).reshape(shape)
    b0, b1 = hash_2x32(data[..., 0], data[..., 1], jnp.zeros(shape, jnp.uint32), low)
    return b0 ^ b1

  return jax.lax.platform_dependent(
      key, cpu=unrolled, default=lambda key: jax.random.bits(key, shape, jnp.uint32))
