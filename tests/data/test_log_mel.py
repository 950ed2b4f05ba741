"""Front end: filterbank vs librosa, host vs JAX log-mel, M2D frame counts, edge inputs."""
import librosa
import numpy as np
import pytest

from dwm_jax.data.log_mel import EPS, LogMelSpec, log_mel, mel_filterbank, num_frames
from dwm_jax.data.log_mel_jax import log_mel_jax

HTK = LogMelSpec(mel_scale="htk", norm=None)


def wave(seconds=1.0, seed=0):
  rng = np.random.default_rng(seed)
  t = np.arange(int(16000 * seconds)) / 16000
  return (0.3 * np.sin(2 * np.pi * 440 * t) + 0.05 * rng.standard_normal(t.size)).astype(
      np.float32)


@pytest.mark.parametrize("spec,kwargs", [(LogMelSpec(), {}),
                                         (HTK, {"htk": True, "norm": None})])
def test_filterbank_matches_librosa(spec, kwargs):
  ref = librosa.filters.mel(sr=16000, n_fft=400, n_mels=80, fmin=50, fmax=8000, **kwargs)
  fb = mel_filterbank(spec)
  assert fb.shape == (80, 201) and fb.dtype == np.float32
  np.testing.assert_allclose(fb, ref, rtol=1e-5, atol=1e-7)


def test_default_is_m2d_slaney_bank():
  # M2D uses nnAudio's defaults = librosa's Slaney scale with area normalisation.
  fb = mel_filterbank()
  assert not np.allclose(fb, mel_filterbank(HTK))
  assert fb.max() < 0.1  # area-normalised weights, not peak-1 triangles


@pytest.mark.parametrize("spec,kwargs", [(LogMelSpec(), {}),
                                         (HTK, {"htk": True, "norm": None})])
def test_log_mel_matches_librosa_melspectrogram(spec, kwargs):
  x = wave()
  ref = librosa.feature.melspectrogram(
      y=x, sr=16000, n_fft=400, hop_length=160, win_length=400, window="hann", center=True,
      pad_mode="reflect", power=2.0, n_mels=80, fmin=50, fmax=8000, **kwargs)
  np.testing.assert_allclose(log_mel(x, spec), np.log(ref + EPS), atol=1e-4)


@pytest.mark.parametrize("spec", [LogMelSpec(), HTK])
def test_jax_matches_numpy(spec):
  x = np.stack([wave(0.5, 0), wave(0.5, 1) * 0.01, np.zeros(8000, np.float32)])
  host = np.stack([log_mel(w, spec) for w in x])
  dev = np.asarray(log_mel_jax(x, spec))
  assert dev.shape == host.shape == (3, 80, 51) and dev.dtype == np.float32
  np.testing.assert_allclose(dev, host, atol=1e-4)


def test_m2d_frame_counts_and_dtype():
  assert num_frames(160000) == 1001  # 10 s at 16 kHz, center=True
  assert num_frames(97280) == 609
  y = log_mel(np.zeros(160000, np.float32))
  assert y.shape == (80, 1001) and y.dtype == np.float32


def test_silence_and_constant_are_finite():
  for x in (np.zeros(16000), np.full(16000, 0.25)):
    y = log_mel(x.astype(np.float32))
    assert np.all(np.isfinite(y))
  assert np.allclose(log_mel(np.zeros(16000, np.float32)), np.log(EPS))


def test_louder_means_higher_log_mel():
  x = wave()
  base = log_mel(x)
  loud = base > np.log(EPS) + 10  # where eps is negligible, doubling amplitude adds log(4)
  assert loud.mean() > 0.8
  np.testing.assert_allclose((log_mel(2 * x) - base)[loud], np.log(4.0), atol=1e-3)


def test_bad_inputs():
  with pytest.raises(ValueError, match="mono"):
    log_mel(np.zeros((2, 100), np.float32))
  with pytest.raises(ValueError, match="empty"):
    log_mel(np.zeros(0, np.float32))
  with pytest.raises(ValueError, match="mel_scale"):
    LogMelSpec(mel_scale="bark")
