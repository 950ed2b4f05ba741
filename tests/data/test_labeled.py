"""Evaluation tasks: EVAR CSVs (single/multi-label, skips, errors) and the synthetic tasks."""
import csv
import logging

import numpy as np
import pytest

from dwm_jax.data import synthetic
from dwm_jax.data.labeled import load_task, synthetic_tasks
from dwm_jax.data.log_mel import log_mel

from .conftest import NUM_CLIPS, write_tone


def write_csv(path, rows, header=("file_name", "label", "split")):
  with open(path, "w", newline="") as f:
    w = csv.writer(f)
    w.writerow(header)
    w.writerows(rows)
  return path


def test_synth_csv_task_matches_generator(synth_dir):
  task = load_task(str(synth_dir / "event.csv"))
  assert task.name == "event" and not task.multilabel
  split = synthetic.splits(NUM_CLIPS, seed=3)
  expect = {s: [] for s in ("train", "valid", "test")}
  for i in range(NUM_CLIPS):
    wave, lab = synthetic.synthesize_clip(i, seed=3, seconds=1.2)
    expect[split[i]].append((synthetic.EVENT_NAMES[lab["event"]], log_mel(wave)))
  n_loud = 0
  for s in ("train", "valid", "test"):
    xs, ys = task.split(s)
    assert [task.classes[int(y)] for y in ys] == [name for name, _ in expect[s]]
    for x, (_, ref) in zip(xs, expect[s]):
      assert x.shape == ref.shape == (80, 121) and x.dtype == np.float32
      # Through 16-bit WAV: quantisation noise (log-mel about -20) perturbs a bin by about
      # 2 * sqrt(noise / signal), so bound the error tightly where the signal is well above it.
      loud = ref > -8.0
      np.testing.assert_allclose(x[loud], ref[loud], atol=0.01)
      n_loud += loud.sum()
  assert n_loud > 0.2 * NUM_CLIPS * 80 * 121  # the tight bound covers much of the data
  assert task.y["train"].dtype == np.int64


def test_multilabel_npy_and_missing_files(tmp_path, caplog):
  for i in range(6):
    write_tone(tmp_path / f"w{i}.wav", 16000, seconds=0.5 + 0.1 * i, freq=200 + 100 * i)
  np.save(tmp_path / "p.npy", np.zeros((80, 30), np.float32))
  rows = [("w0.wav", "dog,cat", "train"), ("w1.wav", "cat", "train"),
          ("w2.wav", "bird, dog", "train"), ("p.npy", "cat", "valid"),
          ("w4.wav", "dog", "test"), ("w5.wav", "bird,cat", "test"),
          ("gone.wav", "dog", "train"), ("gone2.wav", "cat", "test")]
  with caplog.at_level(logging.WARNING):
    task = load_task(str(write_csv(tmp_path / "tags.csv", rows)))
  assert task.multilabel and task.classes == ["bird", "cat", "dog"]
  np.testing.assert_array_equal(task.y["train"], [[0, 1, 1], [0, 1, 0], [1, 0, 1]])
  np.testing.assert_array_equal(task.y["test"], [[0, 0, 1], [1, 1, 0]])
  assert task.y["train"].dtype == np.float32
  assert [x.shape[1] for x in task.x["train"]] == [51, 61, 71]
  assert task.x["valid"][0].shape == (80, 30)
  assert task.skipped == {"missing": 2}
  assert "gone.wav" in caplog.text and "skipped 2 of 8" in caplog.text


def test_csv_errors(tmp_path):
  write_tone(tmp_path / "a.wav", 16000, seconds=0.3)
  with pytest.raises(FileNotFoundError):
    load_task(str(tmp_path / "none.csv"))
  bad_cols = write_csv(tmp_path / "c.csv", [("a.wav", "x")], header=("file_name", "label"))
  with pytest.raises(ValueError, match=r"missing column\(s\) \['split'\]"):
    load_task(str(bad_cols))
  bad_split = write_csv(tmp_path / "s.csv", [("a.wav", "x", "train"), ("a.wav", "x", "dev")])
  with pytest.raises(ValueError, match="unknown split.*dev"):
    load_task(str(bad_split))
  unseen = write_csv(tmp_path / "u.csv", [("a.wav", "x", "train"), ("a.wav", "y", "test")])
  with pytest.raises(ValueError, match="absent from train.*'y'"):
    load_task(str(unseen))
  no_test = write_csv(tmp_path / "t.csv", [("a.wav", "x", "train")])
  with pytest.raises(ValueError, match="test split is empty"):
    load_task(str(no_test))


def test_synthetic_tasks():
  tasks = synthetic_tasks(30, seed=1, seconds=0.8)
  assert [t.name for t in tasks] == ["synthetic_event", "synthetic_pitch", "synthetic_timbre"]
  assert [t.classes for t in tasks] == [list(synthetic.EVENT_NAMES),
                                        list(synthetic.PITCH_NAMES), list(synthetic.TIMBRE_NAMES)]
  split = synthetic.splits(30, seed=1)
  assert [len(tasks[0].x[s]) for s in ("train", "valid", "test")] == [
      split.count(s) for s in ("train", "valid", "test")] == [21, 4, 5]
  train_idx = [i for i in range(30) if split[i] == "train"]
  for t, key in zip(tasks, ("event", "pitch", "timbre")):
    assert t.x is tasks[0].x  # log-mels shared between the three tasks
    labels = [synthetic.synthesize_clip(i, seed=1, seconds=0.8)[1][key] for i in train_idx]
    np.testing.assert_array_equal(t.y["train"], labels)
  again = synthetic_tasks(30, seed=1, seconds=0.8)
  np.testing.assert_array_equal(again[0].x["test"][0], tasks[0].x["test"][0])
