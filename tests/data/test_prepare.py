"""`dwm-jax prepare`: mixed rates/channels plus bad files -> outputs, skip report, resume."""
import csv
import json

import numpy as np
import pytest

from dwm_jax.data import prepare as prep
from dwm_jax.data.audio_io import load_audio
from dwm_jax.data.log_mel import log_mel, num_frames

from .conftest import GOOD, write_mixed_folder

@pytest.fixture
def src(tmp_path):
  return write_mixed_folder(tmp_path / "src")


def read_csv(path):
  with open(path, newline="") as f:
    return [r["file_name"] for r in csv.DictReader(f)]


def test_prepare_outputs_report_and_resume(src, tmp_path, capsys):
  out = tmp_path / "out"
  assert prep.main([str(src), str(out), "--workers", "0", "--no-progress"]) == 0
  printed = capsys.readouterr().out
  report = json.loads((out / "prepare_report.json").read_text())
  assert report["converted"] == 4 and report["skipped"] == 4 and report["already_done"] == 0
  assert report["skipped_by_reason"] == {"unreadable": 1, "empty": 1, "silent": 1,
                                         "too short": 1}
  assert {s["file"]: s["reason"] for s in report["skipped_files"]} == {
      "bad/corrupt.wav": "unreadable", "bad/empty.wav": "empty", "bad/silent.wav": "silent",
      "bad/short.wav": "too short"}
  assert report["seconds_converted"] == pytest.approx(4.0, abs=1e-3)
  assert "skipped (silent): 1" in printed and "4 converted" in printed

  names = read_csv(out / "files.csv")
  assert names == sorted(n.rsplit(".", 1)[0] + ".npy" for n in GOOD)
  for name in GOOD:
    x = np.load(out / (name.rsplit(".", 1)[0] + ".npy"))
    assert x.dtype == np.float16 and x.shape == (80, num_frames(16000))
    ref = log_mel(load_audio(src / name))
    np.testing.assert_allclose(x.astype(np.float32), ref, atol=0.02)  # float16 rounding

  stats = json.loads((out / "stats.json").read_text())
  allv = np.concatenate([np.load(out / n).astype(np.float64).ravel() for n in names])
  assert stats["mean"] == pytest.approx(allv.mean(), rel=1e-6)
  assert stats["std"] == pytest.approx(allv.std(), rel=1e-6)
  assert stats["num_clips"] == 4

  # Rerun: everything done is skipped (and not rewritten); the report and stats still cover it.
  mtimes = {n: (out / n).stat().st_mtime_ns for n in names}
  again = prep.prepare(src, out, workers=0, progress=False)
  assert again["converted"] == 0 and again["already_done"] == 4 and again["skipped"] == 4
  assert {n: (out / n).stat().st_mtime_ns for n in names} == mtimes
  assert json.loads((out / "stats.json").read_text())["mean"] == pytest.approx(stats["mean"])
  assert read_csv(out / "files.csv") == names


def test_prepare_parallel_workers_float32(src, tmp_path):
  out = tmp_path / "out"
  report = prep.prepare(src, out, workers=2, dtype="float32", progress=False)
  assert report["converted"] == 4 and report["skipped"] == 4
  x = np.load(out / "r22/b.npy")
  assert x.dtype == np.float32
  np.testing.assert_allclose(x, log_mel(load_audio(src / "r22/b.flac")), atol=1e-5)


def test_prepare_errors(tmp_path):
  with pytest.raises(FileNotFoundError):
    prep.prepare(tmp_path / "missing", tmp_path / "out", progress=False)
  (tmp_path / "empty").mkdir()
  with pytest.raises(FileNotFoundError, match="no audio files"):
    prep.prepare(tmp_path / "empty", tmp_path / "out", progress=False)
