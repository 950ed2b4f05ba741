"""Fine-tuning batches: epochs visit every clip, crops are windows of their clip, splits are the
probe's."""
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from dwm_jax.data.labeled import Task
from dwm_jax.evaluate import probe
from dwm_jax.evaluate.finetuning import data


@settings(max_examples=30, deadline=None)
@given(n=st.integers(1, 50), batch=st.integers(1, 16), seed=st.integers(0, 99),
       epoch=st.integers(0, 5))
def test_an_epoch_sees_every_clip(n, batch, seed, epoch):
  spe = data.steps_per_epoch(n, batch)
  idx = np.concatenate([data.batch_indices(n, batch, seed, epoch * spe + i) for i in range(spe)])
  assert len(idx) == spe * batch and set(idx.tolist()) == set(range(n))
  # One permutation; only the last batch wraps around, onto clips seen first in this epoch.
  first = idx[:n]
  assert sorted(first.tolist()) == list(range(n))
  np.testing.assert_array_equal(idx, first[np.arange(len(idx)) % n])


def test_batches_are_a_function_of_seed_and_step():
  a = data.batch_indices(100, 8, seed=3, step=17)
  np.testing.assert_array_equal(a, data.batch_indices(100, 8, seed=3, step=17))
  assert not np.array_equal(a, data.batch_indices(100, 8, seed=4, step=17))
  spe = data.steps_per_epoch(100, 8)
  assert not np.array_equal(data.batch_indices(100, 8, 3, 0), data.batch_indices(100, 8, 3, spe))


def _clips(lengths, f=3, seed=0):
  rng = np.random.default_rng(seed)
  return [rng.normal(size=(f, t)).astype(np.float32) for t in lengths]


def test_crops_are_windows_of_their_clip():
  lengths = [10, 25, 7, 40, 16]
  clips = _clips(lengths)
  ts = data.train_set(clips, np.arange(5), window=16, pad_value=-9.0)
  assert ts.logmel.shape == (5, 3, 40)
  seen_starts = set()
  for step in range(40):
    b = data.train_batch(ts, batch_size=4, window=16, seed=1, step=step)
    idx = data.batch_indices(5, 4, 1, step)
    np.testing.assert_array_equal(b["targets"], idx)
    for x, i in zip(b["logmel"], idx):
      c = clips[i]
      if c.shape[1] <= 16:  # short clips start at 0, padded with pad_value
        np.testing.assert_array_equal(x[:, :c.shape[1]], c)
        assert np.all(x[:, c.shape[1]:] == -9.0)
      else:
        starts = [s for s in range(c.shape[1] - 15) if np.array_equal(c[:, s:s + 16], x)]
        assert starts, "the crop is no window of its clip"
        if i == 3:
          seen_starts.add(starts[0])
  assert len(seen_starts) > 5  # starts vary with the step


@settings(max_examples=30, deadline=None)
@given(lengths=st.lists(st.integers(1, 60), min_size=1, max_size=20), window=st.integers(1, 30),
       seed=st.integers(0, 50), step=st.integers(0, 50))
def test_crop_starts_in_range(lengths, window, seed, step):
  starts = data.crop_starts(np.asarray(lengths), window, seed, step)
  room = np.maximum(np.asarray(lengths) - window, 0)
  assert np.all((starts >= 0) & (starts <= room))
  assert np.all(data.crop_starts(np.asarray(lengths), window, seed, step, random=False) == 0)


def _task(n_train, n_valid, n_test=4):
  clips = _clips([8] * (n_train + n_valid + n_test), seed=2)
  y = np.arange(len(clips)) % 3
  parts = np.cumsum([0, n_train, n_valid, n_test])
  x = {s: clips[parts[i]:parts[i + 1]] for i, s in enumerate(("train", "valid", "test"))}
  ys = {s: y[parts[i]:parts[i + 1]] for i, s in enumerate(("train", "valid", "test"))}
  return Task("t", False, ["a", "b", "c"], x, ys)


@pytest.mark.parametrize("seed", [0, 1])
def test_missing_valid_split_is_the_probes_holdout(seed):
  task = _task(30, 0)
  s = data.split_task(task, seed)
  assert s.held_out and len(s.valid[0]) == 3 and len(s.train[0]) == 27
  feats = np.stack([c.mean(axis=1) for c in task.split("train")[0]])  # what the probe would see
  (ftr, ytr), (fva, yva) = probe.holdout(feats, task.split("train")[1], seed)
  np.testing.assert_array_equal(np.stack([c.mean(axis=1) for c in s.valid[0]]), fva)
  np.testing.assert_array_equal(np.stack([c.mean(axis=1) for c in s.train[0]]), ftr)
  np.testing.assert_array_equal(s.valid[1], yva)


def test_a_valid_split_is_kept():
  s = data.split_task(_task(10, 5), 0)
  assert not s.held_out and len(s.valid[0]) == 5 and len(s.train[0]) == 10


@settings(max_examples=50, deadline=None)
@given(length=st.integers(1, 200), window=st.integers(1, 40))
def test_eval_windows_cover_the_clip_with_full_windows(length, window):
  starts = data.window_starts(length, window)
  covered = np.zeros(length, bool)
  for s in starts:
    covered[s:s + window] = True
    assert s >= 0 and (s + window <= length or (s == 0 and length < window))
  assert covered.all() and starts == sorted(set(starts))
  if length >= window:  # windows only overlap to end at the clip's end
    assert all(b - a == window for a, b in zip(starts[:-2], starts[1:-1]))
    assert starts[-1] == length - window or starts[-1] + window == length


def test_eval_windows_are_crops_padded_like_training():
  clips = _clips([20, 5, 16])
  windows, owner = data.eval_windows(clips, window=16, pad_value=-9.0)
  assert owner.tolist() == [0, 0, 1, 2]
  np.testing.assert_array_equal(windows[0], clips[0][:, :16])
  np.testing.assert_array_equal(windows[1], clips[0][:, 4:20])
  np.testing.assert_array_equal(windows[2][:, :5], clips[1])
  assert np.all(windows[2][:, 5:] == -9.0)
  np.testing.assert_array_equal(windows[3], clips[2])
