"""On-device (JAX) log-mel, the same computation as :func:`dwm_jax.data.log_mel.log_mel`."""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from dwm_jax.data.log_mel import LogMelSpec, mel_filterbank, num_frames, window


@functools.partial(jax.jit, static_argnames=("spec",))
def log_mel_jax(wave: jax.Array, spec: LogMelSpec = LogMelSpec()) -> jax.Array:
  """Batched log-mel.

  Args:
    wave: ``[B, S]`` float waveforms at ``spec.sample_rate`` (S > n_fft // 2 when centering).
    spec: settings (static; hashable frozen dataclass).
  Returns:
    ``[B, n_mels, num_frames(S)]`` float32.
  """
  wave = jnp.asarray(wave, jnp.float32)
  if wave.ndim != 2:
    raise ValueError(f"log_mel_jax expects [B, S], got shape {wave.shape}")
  s = wave.shape[1]
  if spec.center:
    p = spec.n_fft // 2
    if s <= p:
      raise ValueError(f"log_mel_jax needs more than n_fft // 2 = {p} samples, got {s}")
    wave = jnp.pad(wave, ((0, 0), (p, p)), mode="reflect")
  t = num_frames(s, spec)
  # Static gather indices: frame i covers samples [i * hop, i * hop + n_fft).
  idx = np.arange(t)[:, None] * spec.hop_length + np.arange(spec.n_fft)[None, :]  # [T, n_fft]
  frames = wave[:, idx] * jnp.asarray(window(spec))                              # [B, T, n_fft]
  spectrum = jnp.fft.rfft(frames, axis=-1)                                       # [B, T, K]
  power = jnp.real(spectrum) ** 2 + jnp.imag(spectrum) ** 2
  if spec.power != 2.0:
    power = power ** (spec.power / 2.0)
  mel = jnp.einsum("fk,btk->bft", jnp.asarray(mel_filterbank(spec)), power,
                   precision=jax.lax.Precision.HIGHEST)
  return jnp.log(mel + spec.eps)
