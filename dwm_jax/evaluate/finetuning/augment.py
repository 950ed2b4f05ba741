"""Fine-tuning augmentations: pure, batch-vectorised JAX functions of an explicit key.

- :func:`mixup`: EVAR's per-clip mixup (lambda ~ Beta(a, a) per clip, partner = a random
  permutation of the batch), applied to raw log-mels in the power domain,
  ``log(l e^x + (1 - l) e^x')``: what mixing the waveforms (as EVAR does) gives in expectation
  for independent sounds, where mixing log values would not. Targets mix linearly.
- :func:`spec_augment`: torchaudio's ``mask_along_axis_iid`` (per-clip masks): a band of width
  ``trunc(v)``, ``v ~ U[0, param)``, starting at ``trunc(v0)``, ``v0 ~ U[0, size - v)``, set to
  ``value``. EVAR's ``ft_freq_mask`` / ``ft_time_mask`` are torchaudio's Frequency/TimeMasking.
- :func:`keep_columns`: the structured patch dropout of M2D's ``training_mask``: each clip keeps a
  random subset of its time columns (all frequency patches of each), so the M2D clip embedding
  (frequency tokens of a time step concatenated, mean over time) stays defined; the encoder runs
  on the kept tokens only, which also makes the step cheaper.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp


def mixup(key: jax.Array, logmel: jnp.ndarray, targets: jnp.ndarray, alpha: float
          ) -> tuple[jnp.ndarray, jnp.ndarray, jnp.ndarray]:
  """Mixes every clip with a partner from the same batch.

  Args:
    key: randomness (lambdas and the partner permutation).
    logmel: raw (unnormalized) log-mels ``[B, F, T]``.
    targets: ``[B, C]`` one-hot or multi-hot (soft) targets.
    alpha: Beta(alpha, alpha) parameter, > 0.

  Returns:
    ``(mixed logmel [B, F, T], mixed targets [B, C], lambda [B])``.
  """
  k_lam, k_perm = jax.random.split(key)
  b = logmel.shape[0]
  lam = jax.random.beta(k_lam, alpha, alpha, (b,), jnp.float32)
  perm = jax.random.permutation(k_perm, b)
  l3 = lam[:, None, None]
  # logaddexp handles lambda in {0, 1} (log 0 = -inf) exactly.
  x = jnp.logaddexp(jnp.log(l3) + logmel, jnp.log1p(-l3) + logmel[perm])
  y = lam[:, None] * targets + (1.0 - lam[:, None]) * targets[perm]
  return x, y, lam


def band_mask(uniforms: jnp.ndarray, size: int, param: int) -> jnp.ndarray:
  """torchaudio's per-clip band from two uniforms: ``uniforms: [B, 2]`` -> ``bool [B, size]``.

  ``v = u0 * param``, ``v0 = u1 * (size - v)``; masked: ``trunc(v0) <= i < trunc(v0) + trunc(v)``
  (torch's ``.long()`` truncates toward zero; ``v0`` is negative only when ``param > size``).
  """
  v = uniforms[:, 0] * param
  v0 = uniforms[:, 1] * (size - v)
  start = jnp.trunc(v0)
  end = start + jnp.trunc(v)
  i = jnp.arange(size, dtype=uniforms.dtype)
  return (i[None] >= start[:, None]) & (i[None] < end[:, None])


def spec_augment(key: jax.Array, x: jnp.ndarray, *, freq_mask: int, time_mask: int,
                 num_freq_masks: int = 1, num_time_masks: int = 1,
                 value: float = 0.0) -> jnp.ndarray:
  """Frequency then time bands of ``x: [B, F, T]`` set to ``value`` (per clip, iid).

  Uniforms are drawn as ``[num_masks, B, 2]`` per axis (frequency from the first half of
  ``key``, time from the second), so a band's draw depends only on its clip and index.
  """
  b, f, t = x.shape
  k_f, k_t = jax.random.split(key)
  masked = jnp.zeros((b, f, t), bool)
  if freq_mask > 0 and num_freq_masks > 0:
    u = jax.random.uniform(k_f, (num_freq_masks, b, 2), jnp.float32)
    for m in range(num_freq_masks):
      masked |= band_mask(u[m], f, freq_mask)[:, :, None]
  if time_mask > 0 and num_time_masks > 0:
    u = jax.random.uniform(k_t, (num_time_masks, b, 2), jnp.float32)
    for m in range(num_time_masks):
      masked |= band_mask(u[m], t, time_mask)[:, None, :]
  return jnp.where(masked, jnp.asarray(value, x.dtype), x)


def keep_columns(key: jax.Array, batch: int, columns: int, keep: int) -> jnp.ndarray:
  """``keep`` distinct time columns per clip, uniformly, in increasing order: ``int [B, keep]``."""
  noise = jax.random.uniform(key, (batch, columns))
  chosen = jnp.argsort(noise, axis=1)[:, :keep]
  return jnp.sort(chosen, axis=1).astype(jnp.int32)


def column_token_ids(cols: jnp.ndarray, freq: int, time: int) -> jnp.ndarray:
  """Token ids of whole time columns, frequency-major: ``cols: [B, k]`` -> ``int [B, freq * k]``.

  Row ``f``'s patches of columns ``cols`` come first, then row ``f + 1``'s (``n = f * Tp + t``).
  """
  rows = jnp.arange(freq, dtype=jnp.int32)[None, :, None] * time
  return (rows + cols[:, None, :]).reshape(cols.shape[0], -1)
