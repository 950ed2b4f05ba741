"""experiments/evar_parity: its task CSVs load as the tasks they claim to be, and its summary's
per-seed fold means, tolerance and replay counts. (The comparison itself needs checkouts of
EVAR's two repositories, which the suite does not have; its results are committed.)"""
import importlib.util
import math
import pathlib
import sys

import pytest

HERE = pathlib.Path(__file__).resolve().parents[2] / "experiments" / "evar_parity"


def _load(name):
  sys.path.insert(0, str(HERE))
  try:
    spec = importlib.util.spec_from_file_location(f"evar_parity_{name}", HERE / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
  finally:
    sys.path.remove(str(HERE))
  return module


def test_synthetic_task_csvs(tmp_path):
  from dwm_jax.data.labeled import load_task
  _load("make_tasks").synthetic_csvs(str(tmp_path), 40)
  multi = load_task(str(tmp_path / "event_timbre.csv"))
  assert multi.multilabel and multi.num_classes == 10
  assert (multi.y["train"].sum(axis=1) == 2).all()  # an event and a timbre per clip
  folds = load_task(str(tmp_path / "synthetic_folds.csv"))
  assert folds.fold_ids == [1, 2, 3, 4, 5] and len(folds.x["train"]) == 40


def test_summary_means_folds_per_seed_then_seeds():
  run = _load("run")
  rows = []
  for seed, (e, j) in {42: ((0.5, 0.7), (0.6, 0.6)), 43: ((0.8, 0.8), (0.9, 0.7))}.items():
    for fold in (1, 2):
      rows.append({"model": "m", "task": "t", "seed": seed, "fold": fold, "evar": e[fold - 1],
                   "dwm_jax_evar": j[fold - 1], "dwm_protocol": 0.9,
                   "replay": e[fold - 1] if (seed, fold) != (43, 2) else 0.1,
                   "replay_same_epochs": True, "replay_same_best": True,
                   "replay_valid_max_diff": 0.0, "scaler_max_diff": 0.0,
                   "evar_seconds": 1.0, "dwm_jax_seconds": 0.5})
  (s,) = run.summarize(rows)
  assert s["folds"] == 2 and s["seeds"] == 2
  assert s["evar_mean"] == pytest.approx(0.7) and s["evar_std"] == pytest.approx(0.1)
  assert s["dwm_jax_mean"] == pytest.approx(0.7) and s["dwm_jax_std"] == pytest.approx(0.1)
  assert s["tolerance"] == pytest.approx(3 * math.sqrt((0.01 + 0.01) / 2)) and s["within"]
  assert s["replay_identical"] == "3/4"
  assert "| m | t (2 folds) | 70.0 ± 10.0 | 70.0 ± 10.0 | +0.0 |" in run.render([s], {"seeds": 2})
