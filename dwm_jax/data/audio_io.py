"""Audio decoding: any libsndfile format to 16 kHz mono float32, with named failure reasons.

Files may be local or bucket objects (``gs://...``, read through :mod:`dwm_jax.paths`).
"""
from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr

from dwm_jax import paths

# Formats libsndfile decodes (mp3 needs libsndfile >= 1.1, which soundfile >= 0.12 wheels bundle).
AUDIO_EXTENSIONS = (".wav", ".flac", ".ogg", ".mp3", ".aiff", ".aif", ".opus")


class AudioError(Exception):
  """A file that cannot be used as audio; ``reason`` is one of ``REASONS``."""
  REASONS = ("missing", "unreadable", "empty", "too short", "nan", "silent")

  def __init__(self, path: str | os.PathLike, reason: str, detail: str = ""):
    assert reason in self.REASONS, reason
    self.path, self.reason, self.detail = str(path), reason, detail
    super().__init__(f"{path}: {reason}" + (f" ({detail})" if detail else ""))


def find_audio_files(root: str | os.PathLike,
                     extensions: tuple[str, ...] = AUDIO_EXTENSIONS) -> list[str]:
  """Sorted paths (relative to ``root``, POSIX separators) of audio files under ``root``."""
  exts = tuple(e.lower() for e in extensions)
  if paths.is_remote(root):
    if not paths.isdir(root):
      raise FileNotFoundError(f"audio folder not found: {root}")
    return [p for p in paths.walk_files(root) if os.path.splitext(p)[1].lower() in exts]
  root = Path(root)
  if not root.is_dir():
    raise FileNotFoundError(f"audio folder not found: {root}")
  found = [p.relative_to(root).as_posix() for p in root.rglob("*")
           if p.suffix.lower() in exts and p.is_file()]
  return sorted(found)


def to_mono(samples: np.ndarray) -> np.ndarray:
  """``[S]`` or ``[S, C]`` -> ``[S]`` by averaging channels (M2D / librosa mixdown)."""
  if samples.ndim == 1:
    return samples
  return samples.mean(axis=1)


def resample(wave: np.ndarray, orig_rate: int, target_rate: int) -> np.ndarray:
  """``[S]`` at ``orig_rate`` -> ``[S']`` at ``target_rate`` (soxr, high quality)."""
  if orig_rate == target_rate:
    return wave
  return soxr.resample(wave, orig_rate, target_rate, quality="HQ").astype(np.float32)


def load_audio(path: str | os.PathLike, sample_rate: int = 16000, *,
               min_seconds: float = 0.0) -> np.ndarray:
  """Decode, mix down and resample one file.

  Args:
    path: audio file.
    sample_rate: output rate.
    min_seconds: shorter decoded clips raise ``AudioError(reason="too short")``.
  Returns:
    ``[S]`` float32 mono samples at ``sample_rate``, nominally in [-1, 1].
  Raises:
    AudioError: missing, unreadable (not audio, truncated header, ...), empty, too short, or
      containing NaN/Inf.
  """
  if paths.is_remote(path):
    try:
      source = io.BytesIO(paths.read_bytes(path))  # libsndfile decodes from memory
    except FileNotFoundError as e:
      raise AudioError(path, "missing") from e
  else:
    path = Path(path)
    if not path.is_file():
      raise AudioError(path, "missing")
    source = str(path)
  try:
    samples, rate = sf.read(source, dtype="float32", always_2d=False)
  except Exception as e:  # libsndfile raises LibsndfileError/RuntimeError/TypeError variously.
    raise AudioError(path, "unreadable", f"{type(e).__name__}: {e}") from e
  if samples.size == 0:
    raise AudioError(path, "empty")
  if not np.all(np.isfinite(samples)):
    raise AudioError(path, "nan", "decoded samples contain NaN or Inf")
  wave = resample(np.ascontiguousarray(to_mono(samples), np.float32), int(rate), sample_rate)
  if wave.shape[0] < max(1, int(round(min_seconds * sample_rate))):
    raise AudioError(path, "too short", f"{wave.shape[0] / sample_rate:.3f} s < {min_seconds} s")
  return wave


def write_wav(path: str | os.PathLike, wave: np.ndarray, sample_rate: int = 16000) -> None:
  """Write ``[S]`` or ``[S, C]`` float samples as 16-bit PCM WAV, creating parent folders."""
  path = Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  sf.write(str(path), np.clip(wave, -1.0, 1.0), sample_rate, subtype="PCM_16")
