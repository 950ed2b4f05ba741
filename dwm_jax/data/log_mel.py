"""Host (numpy) log-mel front end with M2D's settings.

M2D (``nttcslab/m2d``: ``wav_to_lms.py``, ``m2d/runtime_audio.py``) converts 16 kHz mono audio with
``nnAudio.features.MelSpectrogram(sr=16000, n_fft=400, win_length=400, hop_length=160, n_mels=80,
fmin=50, fmax=8000, center=True, power=2)`` and then ``log(x + torch.finfo().eps)``. nnAudio's
defaults fill in the rest: periodic Hann window, reflect padding of ``n_fft // 2`` on both sides
(``center=True``), and librosa's mel filterbank with ``htk=False, norm=1``, i.e. the Slaney mel
scale with area ("slaney") normalisation. M2D's AudioSet statistics (mean -7.1, std 4.2) were
measured on exactly that filterbank, so it is the default here; ``mel_scale="htk", norm=None``
gives the HTK / torchaudio-style bank instead. Frames: ``1 + num_samples // hop`` (10 s -> 1001).
"""
from __future__ import annotations

import dataclasses
import functools

import numpy as np
import scipy.fft
import scipy.sparse

# torch.finfo().eps (float32 machine epsilon), M2D's log floor.
EPS = float(np.finfo(np.float32).eps)


@dataclasses.dataclass(frozen=True)
class LogMelSpec:
  """Log-mel settings; defaults reproduce M2D's conversion (see the module docstring)."""
  sample_rate: int = 16000
  n_fft: int = 400
  win_length: int = 400
  hop_length: int = 160
  n_mels: int = 80
  fmin: float = 50.0
  fmax: float = 8000.0
  mel_scale: str = "slaney"      # slaney (librosa/nnAudio default, M2D) | htk
  norm: str | None = "slaney"    # slaney area normalisation (M2D) | None (peak 1)
  power: float = 2.0
  center: bool = True            # reflect-pad n_fft // 2 on both sides
  eps: float = EPS

  def __post_init__(self):
    if self.mel_scale not in ("slaney", "htk"):
      raise ValueError(f"mel_scale must be 'slaney' or 'htk', got {self.mel_scale!r}")
    if self.norm not in ("slaney", None):
      raise ValueError(f"norm must be 'slaney' or None, got {self.norm!r}")
    if not 0 < self.win_length <= self.n_fft:
      raise ValueError(f"win_length {self.win_length} must be in (0, n_fft={self.n_fft}]")
    if not 0 <= self.fmin < self.fmax <= self.sample_rate / 2:
      raise ValueError(f"need 0 <= fmin < fmax <= sample_rate / 2, got {self.fmin}, {self.fmax}")


def num_frames(num_samples: int, spec: LogMelSpec = LogMelSpec()) -> int:
  """Frames produced for ``num_samples`` samples (M2D: center=True -> 1 + S // hop)."""
  if spec.center:
    return 1 + num_samples // spec.hop_length
  return 1 + (num_samples - spec.n_fft) // spec.hop_length


def hz_to_mel(hz: np.ndarray, mel_scale: str = "slaney") -> np.ndarray:
  hz = np.asarray(hz, np.float64)
  if mel_scale == "htk":
    return 2595.0 * np.log10(1.0 + hz / 700.0)
  # Slaney: linear below 1 kHz (200/3 Hz per mel), logarithmic above.
  f_sp, min_log_hz = 200.0 / 3, 1000.0
  min_log_mel, logstep = min_log_hz / f_sp, np.log(6.4) / 27.0
  log_part = min_log_mel + np.log(np.maximum(hz, min_log_hz) / min_log_hz) / logstep
  return np.where(hz >= min_log_hz, log_part, hz / f_sp)


def mel_to_hz(mel: np.ndarray, mel_scale: str = "slaney") -> np.ndarray:
  mel = np.asarray(mel, np.float64)
  if mel_scale == "htk":
    return 700.0 * (10.0 ** (mel / 2595.0) - 1.0)
  f_sp, min_log_hz = 200.0 / 3, 1000.0
  min_log_mel, logstep = min_log_hz / f_sp, np.log(6.4) / 27.0
  return np.where(mel >= min_log_mel, min_log_hz * np.exp(logstep * (mel - min_log_mel)), mel * f_sp)


@functools.lru_cache(maxsize=8)
def _filterbank(spec: LogMelSpec) -> np.ndarray:
  fft_freqs = np.linspace(0.0, spec.sample_rate / 2, spec.n_fft // 2 + 1)
  mels = np.linspace(hz_to_mel(spec.fmin, spec.mel_scale), hz_to_mel(spec.fmax, spec.mel_scale),
                     spec.n_mels + 2)
  edges = mel_to_hz(mels, spec.mel_scale)                      # [n_mels + 2]
  widths = np.diff(edges)                                       # [n_mels + 1]
  ramps = edges[:, None] - fft_freqs[None, :]                   # [n_mels + 2, K]
  lower = -ramps[:-2] / widths[:-1, None]
  upper = ramps[2:] / widths[1:, None]
  weights = np.maximum(0.0, np.minimum(lower, upper))           # [n_mels, K]
  if spec.norm == "slaney":
    weights *= (2.0 / (edges[2:] - edges[:-2]))[:, None]
  weights = weights.astype(np.float32)
  weights.setflags(write=False)
  return weights


def mel_filterbank(spec: LogMelSpec = LogMelSpec()) -> np.ndarray:
  """Triangular mel filterbank ``[n_mels, n_fft // 2 + 1]`` float32 (read-only, cached)."""
  return _filterbank(spec)


@functools.lru_cache(maxsize=8)
def _filterbank_csr(spec: LogMelSpec) -> scipy.sparse.csr_matrix:
  return scipy.sparse.csr_matrix(_filterbank(spec))


def _apply_filterbank(power: np.ndarray, spec: LogMelSpec) -> np.ndarray:
  """``power: [T, K]`` -> ``[F, T]``. The bank has ~2K nonzeros of F * K: a sparse product is
  ~0.3 ms for 10 s, while a dense BLAS one is 2-30 ms depending on how its threads contend with
  the data-loader workers."""
  return np.asarray(_filterbank_csr(spec) @ power.T, np.float32)


@functools.lru_cache(maxsize=8)
def _window(spec: LogMelSpec) -> np.ndarray:
  # Periodic Hann (scipy.signal.get_window('hann', N, fftbins=True)), centred in n_fft.
  n = np.arange(spec.win_length)
  w = 0.5 - 0.5 * np.cos(2.0 * np.pi * n / spec.win_length)
  left = (spec.n_fft - spec.win_length) // 2
  w = np.pad(w, (left, spec.n_fft - spec.win_length - left))
  w = w.astype(np.float32)
  w.setflags(write=False)
  return w


def window(spec: LogMelSpec = LogMelSpec()) -> np.ndarray:
  """Analysis window ``[n_fft]`` float32 (periodic Hann of ``win_length``, zero-padded)."""
  return _window(spec)


def pad_for_frames(wave: np.ndarray, spec: LogMelSpec) -> np.ndarray:
  """``wave: [..., S]`` -> padded ``[..., S']`` ready for framing (reflect, as torch/nnAudio)."""
  if not spec.center:
    return wave
  p = spec.n_fft // 2
  if wave.shape[-1] <= p:
    # Reflect padding needs more than p samples; such clips are too short to be meaningful
    # anyway, so fall back to zeros rather than failing.
    mode = "constant"
  else:
    mode = "reflect"
  pad = [(0, 0)] * (wave.ndim - 1) + [(p, p)]
  return np.pad(wave, pad, mode=mode)


def log_mel(wave: np.ndarray, spec: LogMelSpec = LogMelSpec()) -> np.ndarray:
  """Log-mel spectrogram of a mono waveform.

  Args:
    wave: ``[S]`` float samples at ``spec.sample_rate`` (any float/int dtype; ints are not scaled).
    spec: settings.
  Returns:
    ``[n_mels, num_frames(S)]`` float32, ``log(mel_power + eps)``.
  """
  wave = np.asarray(wave, np.float32)
  if wave.ndim != 1:
    raise ValueError(f"log_mel expects a mono waveform [S], got shape {wave.shape}")
  if spec.center and wave.shape[0] < 1:
    raise ValueError("log_mel got an empty waveform")
  if not spec.center and wave.shape[0] < spec.n_fft:
    raise ValueError(f"log_mel needs at least n_fft={spec.n_fft} samples without centering")
  x = pad_for_frames(wave, spec)
  frames = np.lib.stride_tricks.sliding_window_view(x, spec.n_fft)[::spec.hop_length]  # [T, n_fft]
  # scipy.fft keeps float32 and is several times faster than numpy.fft on [T, 400] frames.
  spectrum = scipy.fft.rfft(frames * window(spec), axis=-1)                             # [T, K]
  power = spectrum.real ** 2 + spectrum.imag ** 2
  if spec.power != 2.0:
    power = power ** (spec.power / 2.0)
  mel = _apply_filterbank(power.astype(np.float32), spec)                               # [F, T]
  return np.log(mel + np.float32(spec.eps)).astype(np.float32)
