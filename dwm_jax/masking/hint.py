"""Hint swap and its schedule, as in the DWM authors' M2D code.

The hint ratio ``h`` blends a strategy's mask toward uniform random masking: ``int(K * h)`` of the
masked patches are revealed (chosen uniformly), then as many patches are re-masked, chosen
uniformly from the visible + revealed ones. The count stays K; ``h >= 1`` is plain random masking.
``h`` may be traced: counts are compared against ranks, so a schedule never recompiles.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from dwm_jax.masking import ops


def num_hinted(num_masked: int, hint: float | jnp.ndarray) -> jnp.ndarray:
  """``int(K * hint)`` clipped to ``[0, K]`` (traced-friendly int32 scalar)."""
  h = jnp.asarray(hint, jnp.float32)
  return jnp.clip(jnp.floor(num_masked * h), 0, num_masked).astype(jnp.int32)


def hint_swap(key: jax.Array, mask: jnp.ndarray, num_masked: int,
              hint: float | jnp.ndarray) -> jnp.ndarray:
  """``mask: bool [B, N]`` (exactly K per row) -> ``bool [B, N]``, exactly K per row."""
  u_reveal, u_remask = ops.uniforms(key, mask.shape[0], mask.shape[1], mask.shape[1])
  return swap_with_noise(u_reveal, u_remask, mask, num_masked, hint)


def swap_with_noise(u_reveal: jnp.ndarray, u_remask: jnp.ndarray, mask: jnp.ndarray,
                    num_masked: int, hint: float | jnp.ndarray) -> jnp.ndarray:
  """:func:`hint_swap` with its two uniform noises ``float32 [B, N]`` given."""
  n_swap = num_hinted(num_masked, hint)
  # The n smallest noises among the masked entries (visible ones pushed past them with +inf).
  revealed = ops.smallest_mask(jnp.where(mask, u_reveal, jnp.inf), n_swap, num_masked)
  kept = mask & ~revealed
  remasked = ops.smallest_mask(jnp.where(kept, jnp.inf, u_remask), n_swap, num_masked)
  return kept | remasked


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
