"""Decoding: mixdown, resampling, and a named reason for every kind of bad file."""
import numpy as np
import pytest
import soundfile as sf

from dwm_jax.data.audio_io import AudioError, find_audio_files, load_audio

from .conftest import write_tone


@pytest.mark.parametrize("rate", [16000, 22050, 44100])
def test_resamples_to_16k_and_keeps_pitch(tmp_path, rate):
  write_tone(tmp_path / "a.wav", rate, seconds=1.0, freq=1000.0)
  x = load_audio(tmp_path / "a.wav")
  assert x.dtype == np.float32 and x.ndim == 1
  assert abs(x.size - 16000) <= 1
  spectrum = np.abs(np.fft.rfft(x))
  assert abs(np.argmax(spectrum) * 16000 / x.size - 1000.0) < 2.0


def test_stereo_is_mixed_down(tmp_path):
  ref = write_tone(tmp_path / "s.flac", 16000, channels=2)
  x = load_audio(tmp_path / "s.flac")
  np.testing.assert_allclose(x, ref.mean(axis=1), atol=2e-4)  # 16-bit quantisation


@pytest.mark.parametrize("content,reason", [(b"", "unreadable"), (b"not audio at all" * 64,
                                                                  "unreadable")])
def test_unreadable(tmp_path, content, reason):
  (tmp_path / "bad.wav").write_bytes(content)
  with pytest.raises(AudioError) as e:
    load_audio(tmp_path / "bad.wav")
  assert e.value.reason == reason and "bad.wav" in str(e.value)


def test_truncated_missing_empty_short_nan(tmp_path):
  write_tone(tmp_path / "ok.wav", 16000)
  data = (tmp_path / "ok.wav").read_bytes()
  (tmp_path / "trunc.wav").write_bytes(data[:30])  # header cut mid-way
  sf.write(str(tmp_path / "empty.wav"), np.zeros(0), 16000)
  sf.write(str(tmp_path / "nan.wav"), np.array([0.1, np.nan, 0.2] * 100, np.float32), 16000,
           subtype="FLOAT")
  reasons = {}
  for name in ("trunc.wav", "missing.wav", "empty.wav", "nan.wav"):
    with pytest.raises(AudioError) as e:
      load_audio(tmp_path / name)
    reasons[name] = e.value.reason
  assert reasons == {"trunc.wav": "unreadable", "missing.wav": "missing", "empty.wav": "empty",
                     "nan.wav": "nan"}
  with pytest.raises(AudioError, match="too short"):
    load_audio(tmp_path / "ok.wav", min_seconds=2.0)


def test_find_audio_files(tmp_path):
  for name in ("b/x.wav", "a.FLAC", "c/d/e.ogg", "notes.txt"):
    (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
    (tmp_path / name).write_bytes(b"")
  assert find_audio_files(tmp_path) == ["a.FLAC", "b/x.wav", "c/d/e.ogg"]
  with pytest.raises(FileNotFoundError):
    find_audio_files(tmp_path / "nope")
