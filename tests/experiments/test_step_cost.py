"""experiments/step_cost/run.py end to end at a tiny input: rows, CSV, table and plot."""
import csv
import importlib.util
import math
import pathlib

import pytest



SCRIPT = pathlib.Path(__file__).resolve().parents[2] / "experiments" / "step_cost" / "run.py"


def test_step_cost_tiny_run(tmp_path, monkeypatch):
  spec = importlib.util.spec_from_file_location("step_cost_run", SCRIPT)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  full = module.config_for

  def small_config(*args, **kwargs):  # the script's plumbing at a fraction of the compile time
    c = full(*args, **kwargs)
    c.model.depth, c.objective.predictor_depth, c.objective.predictor_dim = 1, 1, 64
    return c

  monkeypatch.setattr(module, "config_for", small_config)
  assert module.main(["--sizes", "tiny", "--strategies", "random,dwm", "--steps", "2",
                      "--batch", "2", "--frames", "64", "--out", str(tmp_path)]) == 0
  with open(tmp_path / "results.csv") as f:
    rows = list(csv.DictReader(f))
  assert [r["strategy"] for r in rows] == ["random", "dwm"]
  for r in rows:
    assert int(r["rounds"]) == 2 and int(r["batch"]) == 2
    step, mask_only = float(r["step_s"]), float(r["mask_only_s"])
    assert 0 < mask_only < step  # sampling alone is a part of the step
    assert math.isclose(float(r["mask_only_share"]), mask_only / step, rel_tol=1e-6)
    assert 0 < float(r["mfu"]) and math.isfinite(float(r["mask_share"]))
  assert float(rows[0]["vs_random"]) == 1.0 and float(rows[0]["extra_vs_random"]) == 0.0
  table = (tmp_path / "results.md").read_text()
  assert "| tiny | dwm | 2 |" in table and "mask alone share" in table
  assert (tmp_path / "step_time.png").stat().st_size > 0
