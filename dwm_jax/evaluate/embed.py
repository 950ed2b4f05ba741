"""Frame- and clip-level embeddings of a frozen encoder: the M2D runtime's ``encode_lms``.

A clip's log-mel ``[F, T]`` is normalized, zero-padded at the end to a whole number of patch
columns (``T' = ceil(T / pw)`` time steps) and cut into windows of the encoder's input length
(608 frames by default). Each window is encoded without masking. The last, shorter window of
``tp`` columns passes only its real patches (``ids_keep``: the ``Fp * tp`` tokens of its columns,
frequency-major) with the table's first ``tp`` columns: the authors' runtime feeds the short
window itself with its positional table cut to those columns, which is the same token set, order
and positions, so the same attention. The tokens of one time step (its ``Fp`` frequency patches,
CLS dropped) are concatenated into a ``Fp * D`` frame embedding (``b (f t) d -> b t (f d)``),
windows are concatenated in time, and the clip embedding is the mean over time.

Windows of many clips are batched together, grouped by their number of time steps; batches are
padded to power-of-two sizes so a handful of compiled shapes serves any clip length.
"""
from __future__ import annotations

import functools
import json
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from dwm_jax import patching
from dwm_jax.evaluate.encoder import Encoder
from dwm_jax.models.vit import encoder_from_config

SAMPLE_RATE = 16000
HOP_SECONDS = 0.01  # log-mel hop 160 at 16 kHz: one frame per 10 ms

def _forward(encoder: Encoder) -> Callable:
  """Jitted ``(params, pos [N, D], windows [B, F, W], tp) -> [B, tp, Fp * D]``.

  Shared per architecture: parameters and table are arguments, so checkpoints compile once.
  """
  return _forward_for(encoder.config_key)


@functools.lru_cache(maxsize=16)
def _forward_for(config_key: str) -> Callable:
  from dwm_jax.evaluate.encoder import _model_cfg
  cfg = _model_cfg(json.loads(config_key))
  module = encoder_from_config(cfg)
  ps = tuple(cfg.patch_size)
  g = patching.grid_for(tuple(cfg.input_shape), ps)

  def forward(params, pos, windows, tp: int):
    patches = patching.patchify(windows, ps)  # [B, N, P]
    b = windows.shape[0]
    if tp == g.time:
      ids_keep = None
    else:  # real patches of a short window: rows f, columns t < tp (frequency-major order)
      f, t = np.meshgrid(np.arange(g.freq), np.arange(tp), indexing="ij")
      ids_keep = jnp.broadcast_to(jnp.asarray((f * g.time + t).reshape(-1)), (b, g.freq * tp))
    tokens = module.apply({"params": params}, patches, ids_keep, pos_embed=pos)[:, 1:]  # drop CLS
    tokens = tokens.astype(jnp.float32).reshape(b, g.freq, tp, -1)
    return tokens.transpose(0, 2, 1, 3).reshape(b, tp, -1)

  return jax.jit(forward, static_argnums=3)


def _check_logmel(encoder: Encoder, x: np.ndarray, i: int = 0) -> np.ndarray:
  x = np.asarray(x, np.float32)
  f = encoder.input_shape[0]
  if x.ndim != 2 or x.shape[0] != f:
    raise ValueError(f"clip {i}: log-mel must be [F={f}, T], got shape {x.shape}")
  if x.shape[1] == 0:
    raise ValueError(f"clip {i}: log-mel has no frames")
  if not np.isfinite(x).all():
    raise ValueError(f"clip {i}: log-mel contains NaN or Inf")
  return x


def num_frames(encoder: Encoder, num_logmel_frames: int) -> int:
  """``T'``: frame embeddings of a clip of ``T`` log-mel frames (one per patch column)."""
  return -(-int(num_logmel_frames) // encoder.patch_size[1])


def _pow2_at_least(n: int) -> int:
  return 1 << max(0, (n - 1).bit_length())


def embed_logmels(encoder: Encoder, clips: Sequence[np.ndarray], *, batch_size: int = 32
                  ) -> list[tuple[np.ndarray, np.ndarray]]:
  """Embeds many raw (unnormalized) log-mels ``[F, T_i]``: a list of ``(frame, clip)`` pairs.

  ``frame: [T'_i, Fp * D]`` with ``T'_i = ceil(T_i / pw)``; ``clip: [Fp * D]`` (mean over time).
  """
  _, w = encoder.input_shape
  pw = encoder.patch_size[1]
  # Every window as (clip index, offset in time steps, time steps, [F, W] normalized + padded).
  groups: dict[int, list[tuple[int, int, np.ndarray]]] = {}
  steps = []
  for i, x in enumerate(clips):
    x = (_check_logmel(encoder, x, i) - encoder.norm_mean) / encoder.norm_std
    t_steps = num_frames(encoder, x.shape[1])
    steps.append(t_steps)
    # Padding in the normalized domain with 0 (the dataset mean), as M2D pads; only the last
    # patch column of a clip can see it, the rest of a short window is dropped by ids_keep.
    x = np.pad(x, ((0, 0), (0, t_steps * pw - x.shape[1])))
    for start in range(0, x.shape[1], w):
      chunk = x[:, start:start + w]
      tp = chunk.shape[1] // pw
      # Filler up to the window's static shape; ids_keep leaves it out of the encoder.
      chunk = np.pad(chunk, ((0, 0), (0, w - chunk.shape[1])))
      groups.setdefault(tp, []).append((i, start // pw, chunk))

  frames = [np.zeros((t, encoder.embedding_size), np.float32) for t in steps]
  forward = _forward(encoder)
  pos = jnp.asarray(encoder.position_table)  # an argument: imported tables share the compile
  for tp, items in sorted(groups.items()):
    for b0 in range(0, len(items), batch_size):
      part = items[b0:b0 + batch_size]
      bsz = min(batch_size, _pow2_at_least(len(part)))
      batch = np.zeros((bsz,) + part[0][2].shape, np.float32)
      batch[:len(part)] = np.stack([p[2] for p in part])
      out = np.asarray(forward(encoder.params, pos, jnp.asarray(batch), tp))
      for (i, t0, _), emb in zip(part, out):
        frames[i][t0:t0 + tp] = emb
  return [(fr, fr.mean(axis=0)) for fr in frames]


def embed_logmel(encoder: Encoder, x: np.ndarray, *, batch_size: int = 32
                 ) -> tuple[np.ndarray, np.ndarray]:
  """One raw log-mel ``x: [F, T]`` -> ``(frame [T', Fp * D], clip [Fp * D])``."""
  return embed_logmels(encoder, [x], batch_size=batch_size)[0]


def embed_clips(encoder: Encoder, clips: Sequence[np.ndarray], *, batch_size: int = 32
                ) -> np.ndarray:
  """Clip embeddings of many raw log-mels: ``[n, Fp * D]``."""
  if not len(clips):
    return np.zeros((0, encoder.embedding_size), np.float32)
  return np.stack([c for _, c in embed_logmels(encoder, clips, batch_size=batch_size)])


def frame_timestamps_ms(encoder: Encoder, num: int) -> np.ndarray:
  """Centre time (ms) of each of ``num`` frame embeddings: a patch column spans ``pw`` frames."""
  pw = encoder.patch_size[1]
  return (np.arange(num) * pw + pw / 2.0) * HOP_SECONDS * 1000.0


def to_logmel(audio: np.ndarray, sr: int) -> np.ndarray:
  """Waveform ``[samples]`` or ``[channels, samples]`` at rate ``sr`` -> raw log-mel ``[80, T]``.

  Channels are averaged, other rates resampled to 16 kHz (soxr), then the project's front end.
  """
  from dwm_jax.data.audio_io import resample  # numpy front end: no TensorFlow, no grain
  from dwm_jax.data.log_mel import log_mel
  wave = np.asarray(audio, np.float32)
  if wave.ndim == 2:
    wave = wave.mean(axis=0)
  if wave.ndim != 1 or wave.shape[0] == 0:
    raise ValueError(f"audio must be a non-empty [samples] or [channels, samples] array, "
                     f"got shape {np.shape(audio)}")
  if not np.isfinite(wave).all():
    raise ValueError("audio contains NaN or Inf samples")
  if int(sr) <= 0:
    raise ValueError(f"sample rate must be positive, got {sr}")
  return log_mel(resample(wave, int(sr), SAMPLE_RATE))


def embed(encoder: Encoder, audio: np.ndarray, sr: int, *, batch_size: int = 32
          ) -> tuple[np.ndarray, np.ndarray]:
  """A waveform (``[samples]`` or ``[channels, samples]``, any rate) -> ``(frame, clip)``."""
  return embed_logmel(encoder, to_logmel(audio, sr), batch_size=batch_size)
