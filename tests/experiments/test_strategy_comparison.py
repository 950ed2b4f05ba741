"""experiments/strategy_comparison/run.py end to end at the tiny size (one strategy + baselines)."""
import csv
import importlib.util
import json
import pathlib

import pytest

SCRIPT = (pathlib.Path(__file__).resolve().parents[2] / "experiments" / "strategy_comparison"
          / "run.py")


@pytest.fixture(scope="module")
def script():
  spec = importlib.util.spec_from_file_location("strategy_comparison_run", SCRIPT)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


@pytest.mark.slow
def test_tiny_run_end_to_end(script, tmp_path):
  # informed: the strategy with the most machinery (encoder features inside the mask sampler).
  assert script.main(["--tiny", "--out", str(tmp_path), "--strategies", "informed",
                      "--seeds", "1"]) == 0
  with open(tmp_path / "results.csv", newline="") as f:
    rows = list(csv.DictReader(f))
  assert [r["model"] for r in rows] == ["informed", "random-init encoder", "log-mel statistics"]
  tasks = ("synthetic_event", "synthetic_pitch", "synthetic_timbre")
  for r in rows:
    vals = [float(r[f"{t}_mean"]) for t in tasks]
    assert all(0.0 <= v <= 1.0 for v in vals)
    assert float(r["average"]) == pytest.approx(sum(vals) / 3)
  informed = rows[0]
  assert float(informed["pretrain_seconds"]) > 0 and float(informed["sec_per_step"]) > 0
  assert 0 < float(informed["mask_share"]) and float(informed["mask_ms"]) > 0
  meta = json.loads((tmp_path / "results.json").read_text())["meta"]
  assert meta["tasks"] == list(tasks) and "3 steps" in meta["setup"]
  assert (tmp_path / "results.png").stat().st_size > 10_000
  assert "| informed |" in (tmp_path / "results.md").read_text()
  assert (tmp_path / "runs" / "informed" / "comparison_run.json").is_file()


def test_bad_arguments(script, tmp_path):
  with pytest.raises(SystemExit):
    script.main(["--tiny", "--out", str(tmp_path), "--strategies", "bogus"])
  with pytest.raises(ValueError, match="no such config field"):
    script.main(["--tiny", "--out", str(tmp_path), "--set", "model.nonexistent=3"])
