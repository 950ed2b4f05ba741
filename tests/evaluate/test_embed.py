import numpy as np
import pytest

from dwm_jax.evaluate.embed import (embed, embed_clips, embed_logmel, embed_logmels,
                                    frame_timestamps_ms)


def _clip(t, seed=0):
  return np.random.default_rng(seed).normal(-7.0, 4.0, (80, t)).astype(np.float32)


@pytest.mark.parametrize("t", [1, 15, 16, 50, 64, 130])
def test_shapes_any_length(tiny_encoder, t):
  frame, clip = embed_logmel(tiny_encoder, _clip(t))
  assert frame.shape == (-(-t // 16), 5 * 32)
  assert clip.shape == (160,)
  assert np.isfinite(frame).all()
  np.testing.assert_allclose(clip, frame.mean(axis=0), rtol=1e-6)


def test_deterministic_and_batch_independent(tiny_encoder):
  clips = [_clip(t, seed=t) for t in (30, 64, 200, 7)]
  alone = [embed_logmel(tiny_encoder, c) for c in clips]
  again = embed_logmels(tiny_encoder, clips, batch_size=2)
  for (f1, c1), (f2, c2) in zip(alone, again):
    np.testing.assert_allclose(f1, f2, atol=1e-5)
    np.testing.assert_allclose(c1, c2, atol=1e-5)
  np.testing.assert_array_equal(embed_logmel(tiny_encoder, clips[2])[0], alone[2][0])


def test_long_clip_is_its_windows(tiny_encoder):
  """A 150-frame clip = windows [0, 64), [64, 128), [128, 150) encoded separately."""
  x = _clip(150)
  frame, _ = embed_logmel(tiny_encoder, x)
  parts = [embed_logmel(tiny_encoder, x[:, a:b])[0] for a, b in ((0, 64), (64, 128), (128, 150))]
  np.testing.assert_allclose(frame, np.concatenate(parts), atol=1e-5)


def test_short_window_ignores_padding(tiny_encoder):
  """The last window passes only its real patch columns: what follows them cannot matter."""
  x = _clip(150)
  f1, _ = embed_logmel(tiny_encoder, x[:, :144])  # 9 columns: window 2 has one column
  f2, _ = embed_logmel(tiny_encoder, np.concatenate([x[:, :144], x[:, :144]], axis=1))
  np.testing.assert_allclose(f1[:4], f2[:4], atol=1e-5)
  assert not np.allclose(f1[8], f2[8], atol=1e-3)  # column 8 now has window neighbours


def test_content_matters(tiny_encoder):
  a = embed_logmel(tiny_encoder, _clip(64, 1))[1]
  b = embed_logmel(tiny_encoder, _clip(64, 2))[1]
  assert not np.allclose(a, b, atol=1e-4)


def test_bad_input(tiny_encoder):
  with pytest.raises(ValueError, match="F=80"):
    embed_logmel(tiny_encoder, np.zeros((64, 100), np.float32))
  with pytest.raises(ValueError, match="no frames"):
    embed_logmel(tiny_encoder, np.zeros((80, 0), np.float32))
  x = _clip(40)
  x[3, 5] = np.nan
  with pytest.raises(ValueError, match="NaN"):
    embed_logmel(tiny_encoder, x)
  assert embed_clips(tiny_encoder, []).shape == (0, 160)


def test_embed_waveform_any_rate(tiny_encoder):
  """1 s of a stereo 22.05 kHz tone: resampled to 16 kHz -> 101 log-mel frames -> 7 columns."""
  sr = 22050
  t = np.arange(sr) / sr
  wave = np.stack([np.sin(2 * np.pi * 440 * t), 0.5 * np.sin(2 * np.pi * 880 * t)]) * 0.3
  frame, clip = embed(tiny_encoder, wave, sr)
  assert frame.shape == (7, 160) and clip.shape == (160,)
  mono16 = embed(tiny_encoder, np.zeros(16000, np.float32), 16000)[0]
  assert mono16.shape == (7, 160) and np.isfinite(mono16).all()
  with pytest.raises(ValueError, match="NaN"):
    embed(tiny_encoder, np.full(100, np.nan), 16000)


def test_timestamps(tiny_encoder):
  np.testing.assert_allclose(frame_timestamps_ms(tiny_encoder, 3), [80.0, 240.0, 400.0])
