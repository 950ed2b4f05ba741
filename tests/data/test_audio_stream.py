"""The streamed front end equals the whole-file one to the bit, in every format and chunking."""
import numpy as np
import pytest
import soundfile as sf

from dwm_jax.data.audio_io import AudioError, load_audio
from dwm_jax.data.audio_stream import logmel_chunks, logmel_of_waves, wave_chunks
from dwm_jax.data.log_mel import log_mel

from .conftest import write_tone


def drain(gen):
  """``(list of yielded chunks, returned value)`` of a generator."""
  out = []
  while True:
    try:
      out.append(next(gen))
    except StopIteration as e:
      return out, e.value


@pytest.mark.parametrize("samples", [1, 199, 200, 201, 239, 241, 400, 401, 16000, 16159, 52345])
@pytest.mark.parametrize("chunk", [1, 160, 401, 7919, 10**6])
def test_logmel_of_chunks_is_the_whole_log_mel(samples, chunk):
  wave = (np.random.default_rng(samples).standard_normal(samples) * 0.1).astype(np.float32)
  parts, count = drain(logmel_of_waves(iter([wave[a:a + chunk]
                                             for a in range(0, samples, chunk)])))
  assert count == samples
  np.testing.assert_array_equal(np.concatenate(parts, axis=1), log_mel(wave))
  if samples > 2 * chunk + 400:  # frames come out as their samples come in, not at the end
    assert len(parts) > 2


@pytest.mark.parametrize("name,rate,channels,subtype", [
    ("a.wav", 44100, 2, "PCM_16"), ("b.flac", 22050, 1, "PCM_24"), ("c.ogg", 48000, 2, "VORBIS"),
    ("d.wav", 16000, 1, "FLOAT"), ("e.mp3", 32000, 1, "MPEG_LAYER_III")])
@pytest.mark.parametrize("chunk_seconds", [0.37, 10.0])
def test_file_stream_is_load_audio_then_log_mel(tmp_path, name, rate, channels, subtype,
                                                chunk_seconds):
  path = tmp_path / name
  write_tone(path, rate, seconds=2.3, channels=channels, subtype=subtype)
  ref = load_audio(path, 16000)
  waves = list(wave_chunks(path, chunk_seconds=chunk_seconds))
  np.testing.assert_array_equal(np.concatenate(waves), ref)
  parts, count = drain(logmel_chunks(path, chunk_seconds=chunk_seconds))
  assert count == ref.shape[0]
  np.testing.assert_array_equal(np.concatenate(parts, axis=1), log_mel(ref))


def test_bad_files(tmp_path):
  with pytest.raises(AudioError, match="missing"):
    drain(logmel_chunks(tmp_path / "none.wav"))
  (tmp_path / "junk.wav").write_bytes(b"RIFF0000WAVEjunk")
  with pytest.raises(AudioError, match="unreadable"):
    drain(logmel_chunks(tmp_path / "junk.wav"))
  sf.write(str(tmp_path / "empty.wav"), np.zeros((0,), np.float32), 16000)
  with pytest.raises(AudioError, match="empty"):
    drain(logmel_chunks(tmp_path / "empty.wav"))
  x = np.zeros(48000, np.float32)
  x[40000] = np.nan  # in the third chunk: the first two have come out already
  sf.write(str(tmp_path / "nan.wav"), x, 16000, subtype="FLOAT")
  gen = logmel_chunks(tmp_path / "nan.wav", chunk_seconds=1.0)
  assert next(gen).shape[0] == 80
  with pytest.raises(AudioError, match="nan"):
    drain(gen)
