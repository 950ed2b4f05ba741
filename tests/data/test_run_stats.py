"""Normalization statistics computed at the start of a run from random training crops
(``data.stats_crops``), recorded in the workdir and in the run's config."""
import csv
import json

import numpy as np
import pytest

from dwm_jax.config import base_config
from dwm_jax.data import pipeline
from dwm_jax.data.pipeline import PAD_VALUE, crop_stats, stats_crops, with_run_stats
from dwm_jax.data.sources import NpySource

FRAMES = 64
LENGTHS = [40, 64, 100, 150, 200, 90, 30, 70]  # two clips shorter than a crop


@pytest.fixture(scope="module")
def id_set(tmp_path_factory):
  """Clip ``i`` holds ``1000 i + frame`` (plus a per-bin offset): a crop names its clip and start."""
  root = tmp_path_factory.mktemp("ids")
  names = []
  for i, frames in enumerate(LENGTHS):
    x = 1000.0 * i + np.arange(frames)[None, :] + 0.01 * np.arange(80)[:, None]
    names.append(f"{i:02d}.npy")
    np.save(root / names[-1], x.astype(np.float32))
  with open(root / "files.csv", "w", newline="") as f:
    csv.writer(f).writerows([["file_name"]] + [[n] for n in names])
  return root


def run_config(root, crops=200, seed=0):
  c = base_config()
  c.model.input_shape = (80, FRAMES)
  c.data.source, c.data.csv = "npy", str(root / "files.csv")
  c.data.stats_crops, c.seed, c.data.prefetch = crops, seed, 0
  return c


def test_crops_are_random_windows_of_random_clips(id_set):
  source = NpySource(str(id_set / "files.csv"))
  crops = list(stats_crops(source, num_crops=300, frames=FRAMES, seed=1))
  assert len(crops) == 300
  clips, starts = [], []
  for x in crops:
    assert x.shape == (80, FRAMES)
    clip, start = int(x[0, 0] // 1000), int(round(x[0, 0] % 1000))
    full = source[clip]
    n = full.shape[1]
    if n < FRAMES:  # the whole clip, then silence (the pipeline's padding)
      np.testing.assert_array_equal(x[:, :n], full)
      np.testing.assert_array_equal(x[:, n:], PAD_VALUE)
    else:
      np.testing.assert_array_equal(x, full[:, start:start + FRAMES])
      starts.append((clip, start))
    clips.append(clip)
  assert set(clips) == set(range(len(LENGTHS)))  # drawn with replacement over every clip
  assert len(set(s for c, s in starts if c == 4)) > 5  # starts vary within a long clip


def test_stats_are_numpys_over_the_same_crops(id_set):
  source = NpySource(str(id_set / "files.csv"))
  crops = np.stack(list(stats_crops(source, num_crops=200, frames=FRAMES, seed=2)))
  st = crop_stats(run_config(id_set).data, input_shape=(80, FRAMES), seed=2, num_crops=200)
  values = crops.astype(np.float64)
  assert st.mean == pytest.approx(values.mean(), rel=1e-12)
  assert st.std == pytest.approx(values.std(), rel=1e-12)
  assert (st.num_clips, st.num_values) == (200, values.size)


def test_crops_are_deterministic_per_seed_and_thread_count(id_set):
  source = NpySource(str(id_set / "files.csv"))
  take = lambda seed, threads: np.stack(list(stats_crops(  # noqa: E731
      source, num_crops=64, frames=FRAMES, seed=seed, threads=threads)))
  a = take(5, 1)
  np.testing.assert_array_equal(a, take(5, 1))
  np.testing.assert_array_equal(a, take(5, 4))
  assert not np.array_equal(a, take(6, 1))
  with pytest.raises(ValueError, match="at least one crop"):
    next(stats_crops(source, num_crops=0, frames=FRAMES, seed=0))


def test_run_stats_are_recorded_in_the_config_and_the_workdir(id_set, tmp_path, monkeypatch):
  config = run_config(id_set, crops=150, seed=3)
  resolved = with_run_stats(config, str(tmp_path))
  want = crop_stats(config.data, input_shape=(80, FRAMES), seed=3, num_crops=150)
  assert (resolved.data.norm_mean, resolved.data.norm_std) == (want.mean, want.std)
  assert pipeline.norm_stats(resolved.data) == (want.mean, want.std)  # what export / probe read
  assert config.data.norm_mean == -7.1  # the caller's config is not modified
  record = json.loads((tmp_path / "stats.json").read_text())
  assert (record["mean"], record["std"], record["num_clips"]) == (want.mean, want.std, 150)
  assert record["computed_from"]["crops"] == 150 and record["computed_from"]["seed"] == 3

  # A rerun in the same workdir (a resume) reads the recorded values instead of recomputing.
  def fail(*a, **k):
    raise AssertionError("recomputed")
  monkeypatch.setattr(pipeline, "crop_stats", fail)
  again = with_run_stats(config, str(tmp_path))
  assert again.to_dict() == resolved.to_dict()
  # Another seed is another run: it does not reuse the record.
  with pytest.raises(AssertionError, match="recomputed"):
    with_run_stats(run_config(id_set, crops=150, seed=4), str(tmp_path))
  # Given statistics (a file, or stats_crops = 0) are used as they are.
  monkeypatch.undo()
  given = run_config(id_set, crops=0)
  assert with_run_stats(given, str(tmp_path / "other")) is given
  given = run_config(id_set)
  given.data.stats = str(tmp_path / "stats.json")
  assert with_run_stats(given, str(tmp_path / "other")) is given
  assert not (tmp_path / "other").exists()


def test_without_write_nothing_is_written(id_set, tmp_path):
  resolved = with_run_stats(run_config(id_set, crops=20), str(tmp_path), write=False)
  assert resolved.data.norm_std > 0 and not (tmp_path / "stats.json").exists()
