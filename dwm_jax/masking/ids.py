"""Masks <-> index arrays used by encoders (gather visible tokens) and decoders (restore order)."""
from __future__ import annotations

from typing import NamedTuple

import jax.numpy as jnp


class MaskIds(NamedTuple):
  ids_keep: jnp.ndarray     # int32 [B, N - K], visible patches in increasing index order
  ids_masked: jnp.ndarray   # int32 [B, K], masked patches in increasing index order
  ids_restore: jnp.ndarray  # int32 [B, N], position of patch n in concat(ids_keep, ids_masked)


def mask_to_ids(mask: jnp.ndarray, num_masked: int) -> MaskIds:
  """``mask: bool [B, N]`` with exactly ``num_masked`` True per row -> :class:`MaskIds`.

  ``num_masked`` must be static (it fixes the output shapes). Gathering
  ``concat(x[ids_keep], x[ids_masked])`` at ``ids_restore`` gives back ``x`` in patch order.
  """
  n = mask.shape[-1]
  ids_shuffle = jnp.argsort(mask.astype(jnp.int32), axis=-1, stable=True).astype(jnp.int32)
  ids_restore = jnp.argsort(ids_shuffle, axis=-1, stable=True).astype(jnp.int32)
  return MaskIds(ids_shuffle[:, :n - num_masked], ids_shuffle[:, n - num_masked:], ids_restore)


def ids_to_mask(ids_masked: jnp.ndarray, num_patches: int) -> jnp.ndarray:
  """``ids_masked: int [B, K]`` -> ``bool [B, N]``."""
  b = ids_masked.shape[0]
  return jnp.zeros((b, num_patches), bool).at[jnp.arange(b)[:, None], ids_masked].set(True)
