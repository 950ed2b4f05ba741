"""Audio files as streams of log-mel chunks: a file of any length in bounded memory.

The stream equals the whole-file front end to the bit: concatenated, the chunks of
:func:`logmel_chunks` are ``log_mel(load_audio(path))``. libsndfile decodes blocks of
``chunk_seconds`` (MP3 files whole: see :func:`wave_chunks`); channels are averaged per sample;
soxr's streaming resampler gives its one-shot output; each log-mel frame is computed by
:func:`dwm_jax.data.log_mel.log_mel` from the same 400 samples (reflect-padded at both ends,
``center=True``). Memory: a few blocks, whatever the length (MP3: the decoded file).
"""
from __future__ import annotations

import contextlib
import dataclasses
import functools
import os
from pathlib import Path
from typing import Generator, Iterator

import numpy as np
import soundfile as sf
import soxr

from dwm_jax import paths
from dwm_jax.data.audio_io import AudioError
from dwm_jax.data.log_mel import LogMelSpec, log_mel

CHUNK_SECONDS = 10.0


@contextlib.contextmanager
def _open(path: str | os.PathLike) -> Iterator[sf.SoundFile]:
  """An open ``sf.SoundFile`` (a bucket object is read as it is decoded, not downloaded first)."""
  with contextlib.ExitStack() as stack:
    if paths.is_remote(path):
      try:
        handle = stack.enter_context(paths.open(path, "rb"))
      except FileNotFoundError as e:
        raise AudioError(path, "missing") from e
    else:
      if not Path(path).is_file():
        raise AudioError(path, "missing")
      handle = str(path)
    try:
      f = stack.enter_context(sf.SoundFile(handle))
    except Exception as e:  # libsndfile raises LibsndfileError/RuntimeError/TypeError variously
      raise AudioError(path, "unreadable", f"{type(e).__name__}: {e}") from e
    yield f


def wave_chunks(path: str | os.PathLike, sample_rate: int = 16000, *,
                chunk_seconds: float = CHUNK_SECONDS) -> Iterator[np.ndarray]:
  """Mono float32 ``[n]`` chunks at ``sample_rate``: ``load_audio(path, sample_rate)`` in parts.

  Raises :class:`AudioError` (missing, unreadable, empty, nan, too short) as ``load_audio``, a
  failure in the middle of a file too (after the chunks before it).
  """
  with _open(path) as f:
    rate = f.samplerate
    # libsndfile 1.2.2 decodes MP3 read in parts wrongly (samples off by up to 0.6 at part
    # boundaries, whatever the part size): an MP3 file is decoded in one read, as load_audio does.
    block = -1 if f.format in ("MP3", "MPEG") else max(1, int(chunk_seconds * rate))
    resampler = (None if rate == sample_rate else
                 soxr.ResampleStream(rate, sample_rate, 1, dtype="float32", quality="HQ"))
    emitted = 0

    def read():
      try:
        return f.read(block, dtype="float32", always_2d=True)
      except Exception as e:  # pylint: disable=broad-except  (a damaged block)
        raise AudioError(path, "unreadable", f"{type(e).__name__}: {e}") from e

    data = read()
    if data.shape[0] == 0:
      raise AudioError(path, "empty")
    while data.shape[0]:
      following = read()  # one block ahead: the resampler must know the last one
      if not np.all(np.isfinite(data)):
        raise AudioError(path, "nan", "decoded samples contain NaN or Inf")
      mono = np.ascontiguousarray(data[:, 0] if data.shape[1] == 1 else data.mean(axis=1),
                                  np.float32)
      if resampler is not None:
        mono = resampler.resample_chunk(mono, last=following.shape[0] == 0).astype(np.float32)
      if mono.shape[0]:
        emitted += mono.shape[0]
        yield mono
      data = following
  if emitted == 0:
    raise AudioError(path, "too short", f"0 samples at {sample_rate} Hz")


@functools.lru_cache(maxsize=8)
def _framing(spec: LogMelSpec) -> LogMelSpec:
  return dataclasses.replace(spec, center=False)


def logmel_of_waves(waves: Iterator[np.ndarray], spec: LogMelSpec = LogMelSpec()
                    ) -> Generator[np.ndarray, None, int]:
  """Wave chunks -> log-mel chunks ``[F, n]`` (frames as soon as their samples are in); returns
  the number of samples. Concatenated: ``log_mel(np.concatenate(waves), spec)``."""
  if not spec.center:
    raise ValueError("the log-mel stream implements center=True framing only")
  p, hop, n_fft = spec.n_fft // 2, spec.hop_length, spec.n_fft
  framing = _framing(spec)  # frames of the samples given, no padding
  head: list[np.ndarray] | None = []  # the first samples, until the left reflection is possible
  buf = np.zeros(0, np.float32)  # padded samples from the next frame's first one
  tail = np.zeros(0, np.float32)  # the last p + 1 samples: the right reflection
  total = emitted = 0

  def frames_of(x: np.ndarray, m: int) -> np.ndarray:
    return log_mel(x[:(m - 1) * hop + n_fft], framing)

  for chunk in waves:
    total += chunk.shape[0]
    tail = np.concatenate([tail, chunk])[-(p + 1):]
    if head is not None:
      head.append(chunk)
      if total <= p:
        continue
      wave = np.concatenate(head)
      head = None
      buf = np.concatenate([wave[p:0:-1], wave])  # np.pad(wave, p, "reflect"), left side
    else:
      buf = np.concatenate([buf, chunk])
    m = (buf.shape[0] - n_fft) // hop + 1 if buf.shape[0] >= n_fft else 0
    if m > 0:
      yield frames_of(buf, m)
      emitted += m
      buf = buf[m * hop:]
  if total == 0:
    return 0
  if head is not None:  # too short to reflect: the whole-file function pads with zeros
    yield log_mel(np.concatenate(head), spec)
    return total
  count = 1 + total // hop
  if count > emitted:
    yield frames_of(np.concatenate([buf, tail[-2::-1]]), count - emitted)
  return total


def logmel_chunks(path: str | os.PathLike, spec: LogMelSpec = LogMelSpec(), *,
                  chunk_seconds: float = CHUNK_SECONDS) -> Generator[np.ndarray, None, int]:
  """An audio file as raw log-mel chunks ``[F, n]``; returns its number of samples at
  ``spec.sample_rate``. Concatenated: ``log_mel(load_audio(path, spec.sample_rate), spec)``."""
  return (yield from logmel_of_waves(
      wave_chunks(path, spec.sample_rate, chunk_seconds=chunk_seconds), spec))
