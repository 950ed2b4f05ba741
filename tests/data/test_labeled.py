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


def test_fold_csv_is_leave_one_fold_out(tmp_path):
  """EVAR's fold layout (ESC-50: file_name,fold,...,label): every clip trains in the other folds
  and is tested in its own."""
  rows = []
  for i in range(12):
    write_tone(tmp_path / f"c{i}.wav", 16000, seconds=0.3, freq=200 + 50 * i)
    rows.append((f"c{i}.wav", i % 3 + 1, i, "abc"[i % 2 + (i % 4 == 3)]))
  task = load_task(str(write_csv(tmp_path / "esc.csv", rows,
                                 header=("file_name", "fold", "target", "label"))))
  assert task.fold_ids == [1, 2, 3] and task.folds.tolist() == [i % 3 + 1 for i in range(12)]
  assert all(a is b for a, b in zip(task.x["train"], task.x["test"]))  # no crops: shared
  with pytest.raises(ValueError, match=r"has folds \[1, 2, 3\]"):
    task.split("train")
  f2 = task.fold(2)
  held = [i for i in range(12) if i % 3 + 1 == 2]
  assert [x.shape for x in f2.x["test"]] == [task.x["train"][i].shape for i in held]
  np.testing.assert_array_equal(f2.y["test"], task.y["train"][held])
  np.testing.assert_array_equal(f2.y["train"], np.delete(task.y["train"], held))
  assert len(f2.x["train"]) == 8 and f2.x["valid"] == [] and f2.folds is None
  bad = rows + [("c0.wav", 4, 0, "only_in_fold_4")]
  with pytest.raises(ValueError, match="labels in fold 4 absent from the other folds"):
    load_task(str(write_csv(tmp_path / "bad.csv", bad, header=("file_name", "fold", "target",
                                                                 "label"))))


def test_unit_crops_follow_evar(tmp_path):
  """unit_sec: clips zero-padded or cropped as waveforms; test at 0, train/valid per seed."""
  from dwm_jax.data.evar_tasks import unit_clip
  from dwm_jax.data.log_mel import log_mel
  from dwm_jax.data.audio_io import load_audio
  lengths = {"short.wav": 0.4, "long.wav": 1.7, "long_test.wav": 1.7}
  for name, sec in lengths.items():
    write_tone(tmp_path / name, 16000, seconds=sec, freq=300 + 400 * sec)
  rows = [("short.wav", "a", "train"), ("long.wav", "b", "train"), ("short.wav", "a", "valid"),
          ("long_test.wav", "b", "test")]
  task = load_task(str(write_csv(tmp_path / "u.csv", rows)), unit_sec=1.0)
  short, long, long_test = (load_audio(tmp_path / n) for n in lengths)
  unit = 16000
  np.testing.assert_array_equal(task.x["train"][0], log_mel(np.pad(short, (0, unit - 6400))))
  np.testing.assert_array_equal(task.x["test"][0], log_mel(long_test[:unit]))  # test: at 0
  assert task.x["test"][0].shape == (80, 101)
  a, b, again = task.for_seed(42), task.for_seed(43), task.for_seed(42)
  assert task.for_seed(42) is not task and a.crop is None
  np.testing.assert_array_equal(a.x["train"][1], again.x["train"][1])  # seeded
  assert not np.array_equal(a.x["train"][1], b.x["train"][1])          # redrawn per seed
  assert a.x["test"][0] is task.x["test"][0] and a.x["train"][0] is task.x["train"][0]
  # The crop is a window of the wave, its start drawn in [0, S - unit) from (seed, CSV row).
  start = int(np.random.default_rng([42, 1]).integers(len(long) - unit))
  np.testing.assert_array_equal(a.x["train"][1], log_mel(long[start:start + unit]))
  # .npy log-mels are cropped in frames and padded with the log of digital silence.
  lm = np.arange(80 * 30, dtype=np.float32).reshape(80, 30)
  padded = unit_clip(lm, unit)
  assert padded.shape == (80, 101) and np.all(padded[:, 30:] == np.log(np.float32(1.1920929e-07)))
  np.testing.assert_array_equal(padded[:, :30], lm)
  no_crop = load_task(str(tmp_path / "u.csv"))
  assert no_crop.for_seed(42) is no_crop and no_crop.x["train"][1].shape == (80, 171)


def test_evar_task_names_read_evars_layout(tmp_path):
  """--task esc50 --data-root DIR: DIR/evar/metadata/esc50.csv, audio in DIR/work/16k/esc50/."""
  audio = tmp_path / "work" / "16k" / "esc50" / "audio"
  rows = []
  for i in range(10):
    write_tone(audio / f"{i}.wav", 16000, seconds=0.5, freq=300 + 80 * i)
    rows.append((f"audio/{i}.wav", i % 5 + 1, i % 2, ["dog", "rain"][i % 2]))
  (tmp_path / "evar" / "metadata").mkdir(parents=True)
  write_csv(tmp_path / "evar" / "metadata" / "esc50.csv", rows,
            header=("file_name", "fold", "target", "label"))
  task = load_task("esc50", data_root=str(tmp_path), unit_sec=5.0)
  assert task.name == "esc50" and task.fold_ids == [1, 2, 3, 4, 5]
  assert task.x["train"][0].shape == (80, 501)  # padded to ESC-50's 5 s
  with pytest.raises(ValueError, match="EVAR task name: give EVAR's root folder"):
    load_task("esc50")
