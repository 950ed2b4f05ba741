"""Frame- and clip-level embeddings of a frozen encoder: the M2D runtime's ``encode_lms``.

A clip's log-mel ``[F, T]`` is normalized, zero-padded at the end to a whole number of patch
columns (``T' = ceil(T / pw)`` time steps) and cut into windows of the encoder's input length
(608 frames by default). Each window is encoded without masking; the last, shorter window of
``tp`` columns with its real patches only and the positional table's first ``tp`` columns, as the
authors' runtime feeds the short window itself with its table cut to those columns (the same
tokens and positions, so the same attention). The tokens of one time step (its ``Fp`` frequency
patches, CLS dropped) are concatenated into a ``Fp * D`` frame embedding
(``b (f t) d -> b t (f d)``), windows are concatenated in time, and the clip embedding is the mean
over time.

The windows of many clips run through :mod:`dwm_jax.evaluate.embed_stream`: packed, several short
ones to a row, into batches of one static shape (the last batch at the next power of two of its
rows), each window kept apart by an attention mask; ``dwm-jax embed`` uses the same loop on files.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Sequence

import numpy as np

from dwm_jax.data.audio_io import AudioError
from dwm_jax.evaluate import embed_stream
from dwm_jax.evaluate.encoder import Encoder

SAMPLE_RATE = 16000
HOP_SECONDS = 0.01  # log-mel hop 160 at 16 kHz: one frame per 10 ms


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


@dataclasses.dataclass(frozen=True)
class _Array:
  """An in-memory raw log-mel as a one-chunk source."""
  key: int
  x: np.ndarray

  def logmel_chunks(self):
    yield self.x


class _Collect:
  """Sink keeping every clip's frames and clip embedding in memory."""

  def __init__(self, n: int):
    self.parts: list[list[np.ndarray]] = [[] for _ in range(n)]
    self.clips: list[np.ndarray | None] = [None] * n

  def frames(self, key: int, start: int, frames: np.ndarray, layers: Any) -> None:
    del start, layers  # blocks come in order
    self.parts[key].append(frames)

  def done(self, result: embed_stream.Result) -> None:
    self.clips[result.key] = result.clip

  def failed(self, key: int, error: AudioError) -> None:
    raise ValueError(f"clip {key}: {error}")  # checked before: cannot happen

  abandoned = failed


def embed_logmels(encoder: Encoder, clips: Sequence[np.ndarray], *, batch_size: int = 32
                  ) -> list[tuple[np.ndarray, np.ndarray]]:
  """Embeds many raw (unnormalized) log-mels ``[F, T_i]``: a list of ``(frame, clip)`` pairs.

  ``frame: [T'_i, Fp * D]`` with ``T'_i = ceil(T_i / pw)``; ``clip: [Fp * D]`` (mean over time).
  ``batch_size``: rows of windows per device call.
  """
  checked = [_check_logmel(encoder, x, i) for i, x in enumerate(clips)]
  sink = _Collect(len(checked))
  embed_stream.run(encoder, [_Array(i, x) for i, x in enumerate(checked)], sink,
                   batch_size=batch_size, shrink_last=True)
  return [(np.concatenate(p) if len(p) > 1 else p[0], c) for p, c in zip(sink.parts, sink.clips)]


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
