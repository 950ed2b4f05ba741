"""HEAR timestamps and the fine-hop interleaving, in numpy (no framework)."""
import librosa
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from dwm_jax.evaluate import embed as embed_lib
from dwm_jax.evaluate.hear import core


PW = 16
HOPS = [1, 2, 4, 8, 16]  # log-mel frames dividing the patch width


@settings(max_examples=200, deadline=None)
@given(num_samples=st.integers(1200, 16000 * 600), hop=st.sampled_from(HOPS))
def test_timestamps_are_regular_and_within_the_clip(num_samples, hop):
  raw = core.timestamps_ms(num_samples, PW, hop)
  assert raw.dtype == np.float32 and len(raw) == core.num_timestamps(num_samples, PW, hop) >= 1
  ts, end_ms, step = raw.astype(np.float64), 1000.0 * num_samples / 16000, 10.0 * hop
  assert 0 <= ts[0] < step                          # the first within one hop of 0
  assert ts[-1] <= end_ms < ts[-1] + step           # none past the end, none missing before it
  if len(ts) > 1:
    assert np.max(np.abs(np.diff(ts) - step)) <= 1e-3  # the validator allows 1 ms


def test_column_centres_are_librosa_frame_centres():
  # librosa's center=True frame times (j * hop / sr) are the front end's; a column is the mean
  # of its 16 frames' centres.
  cols = np.arange(25)
  ref = librosa.frames_to_time(cols[:, None] * PW + np.arange(PW), sr=16000, hop_length=160)
  ts = core.timestamps_ms(64000, PW, PW)
  np.testing.assert_allclose(ts, 1000 * ref.mean(axis=1), atol=1e-3)


@pytest.mark.parametrize("seconds,count,last", [(1.07, 7, 1035.0), (1.98, 12, 1835.0),
                                                (4.0, 25, 3915.0)])
def test_validator_clip_lengths(seconds, count, last):
  ts = core.timestamps_ms(int(seconds * 16000), PW, PW)
  assert len(ts) == count and ts[0] == 75.0 and ts[-1] == last


def test_hop_options():
  assert core.allowed_hops_ms(PW) == [160.0, 80.0, 40.0, 20.0, 10.0]
  assert core.hop_frames_for(PW, None) == 16 and core.hop_frames_for(PW, 40) == 4
  for bad in (30, 0, 5, 320, -40):
    with pytest.raises(ValueError, match="hop_ms must be one of"):
      core.hop_frames_for(PW, bad)


@pytest.fixture(scope="module")
def clips():
  rng = np.random.default_rng(1)
  return (rng.normal(size=(2, int(1.98 * 16000))) * 0.1).astype(np.float32)


def test_fine_hop_interleaves_shifted_windows(tiny_encoder, clips):
  default = core.HearCore(tiny_encoder, hop_frames=PW)
  fine = core.HearCore(tiny_encoder, hop_frames=4)
  emb, ts = core.timestamp_embeddings(default, clips)
  emb4, ts4 = core.timestamp_embeddings(fine, clips)
  assert emb4.shape == (2, 49, 160) and ts4.shape == (2, 49)
  np.testing.assert_allclose(np.diff(ts4[0]), 40.0)
  # At the shared timestamps (75, 235, ... ms) the fine frames are the default frames.
  shared = np.searchsorted(ts4[0], ts[0])
  np.testing.assert_array_equal(ts4[0, shared], ts[0])
  np.testing.assert_allclose(emb4[:, shared], emb, rtol=1e-5, atol=1e-5)
  # Every fine frame is the default embedding of the log-mel whose columns start at its own
  # start frame (timestamp / 10 ms - 7.5), the mean (normalized 0) before the clip.
  for i, clip in enumerate(clips):
    mel = embed_lib.to_logmel(clip, 16000)
    for start in (-4, 4, 8):
      shifted = (mel[:, start:] if start >= 0 else np.concatenate(
          [np.full((80, -start), tiny_encoder.norm_mean, np.float32), mel], axis=1))
      ref, _ = embed_lib.embed_logmel(tiny_encoder, shifted)
      at = np.flatnonzero(np.isin(ts4[i], (start + 7.5 + PW * np.arange(len(ref))) * 10.0))
      assert len(at) >= 11
      np.testing.assert_allclose(emb4[i, at], ref[:len(at)], rtol=1e-5, atol=1e-5)
  assert np.abs(emb4).sum(axis=-1).min() > 0  # no position left unfilled


def test_scene_is_the_mean_of_all_default_frames(tiny_encoder, clips):
  hc = core.HearCore(tiny_encoder, hop_frames=4)
  scene = core.scene_embeddings(hc, clips)
  for i, clip in enumerate(clips):
    frames, _ = embed_lib.embed(tiny_encoder, clip, 16000)  # 13 columns, the last past 1980 ms
    np.testing.assert_allclose(scene[i], frames.mean(axis=0), rtol=1e-5, atol=1e-6)


def test_bad_audio(tiny_encoder):
  hc = core.HearCore(tiny_encoder, hop_frames=PW)
  with pytest.raises(ValueError, match="n_sounds, n_samples"):
    core.scene_embeddings(hc, np.zeros(16000, np.float32))
  with pytest.raises(ValueError, match="float samples"):
    core.scene_embeddings(hc, np.zeros((1, 16000), np.int16))
  with pytest.raises(ValueError, match="NaN"):
    core.timestamp_embeddings(hc, np.full((1, 16000), np.nan, np.float32))
  with pytest.raises(ValueError, match="first frame centre"):
    core.timestamp_embeddings(hc, np.zeros((1, 1000), np.float32))
  with pytest.raises(ValueError, match="divide the patch width"):
    core.HearCore(tiny_encoder, hop_frames=3)
