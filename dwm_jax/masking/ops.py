"""Exact-count building blocks shared by the strategies (static shapes, no loops over the batch)."""
from __future__ import annotations

import jax
import jax.numpy as jnp


def ranks(x: jnp.ndarray) -> jnp.ndarray:
  """Rank of every entry along the last axis (0 = smallest): ``[B, N] -> int32 [B, N]``.

  Ties are broken by index, so every row holds a permutation of ``0..N-1``.
  """
  order = jnp.argsort(x, axis=-1, stable=True)
  return jnp.argsort(order, axis=-1, stable=True).astype(jnp.int32)


def smallest_mask(x: jnp.ndarray, n: int | jnp.ndarray, max_n: int) -> jnp.ndarray:
  """True at the ``n`` smallest entries of each row: ``[B, N] -> bool [B, N]``.

  ``n`` may be traced (``0 <= n <= max_n``, ``max_n`` static). Same set as ``ranks(x) < n`` (ties
  by lower index), but one ``top_k`` instead of two argsorts: about 4x cheaper on CPU.
  """
  b, m = x.shape
  _, idx = jax.lax.top_k(-x, max_n)
  take = jnp.broadcast_to(jnp.arange(max_n) < n, idx.shape)
  return jnp.zeros((b, m), bool).at[jnp.arange(b)[:, None], idx].set(take)


def top_k_mask(scores: jnp.ndarray, k: int) -> jnp.ndarray:
  """True at the ``k`` largest scores of each row: ``[B, N] -> bool [B, N]``, exactly ``k``."""
  b, n = scores.shape
  _, idx = jax.lax.top_k(scores, k)
  return jnp.zeros((b, n), bool).at[jnp.arange(b)[:, None], idx].set(True)


def uniform_noise(key: jax.Array, shape: tuple[int, ...]) -> jnp.ndarray:
  """float32 uniform noise: low-precision noise ties and biases masks toward low indices."""
  return jax.random.uniform(key, shape, dtype=jnp.float32)


def random_mask(key: jax.Array, batch: int, num_patches: int, num_masked: int) -> jnp.ndarray:
  """Uniform among all exact-``num_masked`` subsets (MAE's argsort of uniform noise)."""
  return top_k_mask(uniform_noise(key, (batch, num_patches)), num_masked)


def fill_to_count(key: jax.Array, mask: jnp.ndarray, num_masked: int) -> jnp.ndarray:
  """Trims or fills each row of ``mask`` to exactly ``num_masked`` True entries, uniformly.

  Rows with too many masked entries lose uniformly chosen ones; rows with too few gain uniformly
  chosen ones from the unmasked entries. Entries already counted are otherwise kept.
  """
  # Masked entries score in [1, 2), unmasked in [0, 1): the top-k keeps as many of the current
  # masked entries as fit (chosen uniformly among them) and fills from the rest uniformly.
  u = uniform_noise(key, mask.shape)
  return top_k_mask(u + mask.astype(jnp.float32), num_masked)
