"""experiments/strategy_comparison/run.py: the tiny size end to end over two pretraining seeds,
and the aggregation over seeds (mean ± std, the difference to random paired by seed)."""
import csv
import importlib.util
import json
import pathlib

import numpy as np
import pytest

# The launcher tests' persistent compilation cache: the second seed's runs are cache hits.
from tests.train.conftest import cache_dir, compile_cache  # noqa: F401  pylint: disable=unused-import


SCRIPT = (pathlib.Path(__file__).resolve().parents[2] / "experiments" / "strategy_comparison"
          / "run.py")
TASKS = ("synthetic_event", "synthetic_pitch", "synthetic_timbre")


@pytest.fixture(scope="module")
def script():
  spec = importlib.util.spec_from_file_location("strategy_comparison_run", SCRIPT)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


@pytest.mark.slow
@pytest.mark.usefixtures("compile_cache")
def test_tiny_run_over_two_seeds_end_to_end(script, tmp_path):
  # informed: the strategy with the most machinery (encoder features inside the mask sampler).
  assert script.main(["--tiny", "--out", str(tmp_path), "--strategies", "random,informed",
                      "--seeds", "0,1", "--probe-seeds", "1"]) == 0
  with open(tmp_path / "results_seeds.csv", newline="") as f:
    per_seed = list(csv.DictReader(f))
  models = ["random", "informed", "random-init encoder", "log-mel statistics"]
  assert sorted((r["model"], r["seed"]) for r in per_seed) == sorted(
      (m, s) for m in models for s in ("0", "1"))
  for r in per_seed:
    vals = [float(r[f"{t}_mean"]) for t in TASKS]
    assert all(0.0 <= v <= 1.0 for v in vals)
    assert float(r["average"]) == pytest.approx(sum(vals) / 3)
  # Another pretraining seed is another run: different parameters, so different embeddings.
  for s in ("random", "informed"):
    assert (tmp_path / "runs" / s / "seed1" / "comparison_run.json").is_file()
  seeded = {(r["model"], r["seed"]): r for r in per_seed}
  assert any(seeded[("informed", "0")][f"{t}_mean"] != seeded[("informed", "1")][f"{t}_mean"]
             for t in TASKS) or seeded[("informed", "0")]["final_loss"] != seeded[
                 ("informed", "1")]["final_loss"]

  with open(tmp_path / "results.csv", newline="") as f:
    summary = {r["model"]: r for r in csv.DictReader(f)}
  assert list(summary) == models
  informed = summary["informed"]
  avgs = [float(seeded[("informed", s)]["average"]) for s in ("0", "1")]
  assert float(informed["average"]) == pytest.approx(np.mean(avgs))
  assert float(informed["average_std"]) == pytest.approx(np.std(avgs, ddof=1))
  diffs = [float(seeded[("informed", s)]["average"]) - float(seeded[("random", s)]["average"])
           for s in ("0", "1")]
  assert float(informed["vs_ref_mean"]) == pytest.approx(np.mean(diffs))
  assert int(informed["vs_ref_n"]) == 2 and summary["random"]["vs_ref_n"] == ""
  assert float(informed["pretrain_seconds"]) > 0 and float(informed["sec_per_step"]) > 0
  assert 0 < float(informed["mask_share"]) and float(informed["mask_ms"]) > 0
  meta = json.loads((tmp_path / "results.json").read_text())["meta"]
  assert meta["tasks"] == list(TASKS) and meta["seeds"] == [0, 1] and "3 steps" in meta["setup"]
  assert (tmp_path / "results.png").stat().st_size > 10_000
  md = (tmp_path / "results.md").read_text()
  assert "| informed |" in md and "seed 1" in md and "[" in md


def test_aggregate_pairs_the_difference_by_seed(script):
  # Seed-to-seed swings (0.10) dwarf the strategy's effect (+0.01, every seed): the paired
  # difference shows the effect with no spread; the per-strategy std shows the swing.
  def row(model, seed, avg):
    return {"model": model, "seed": seed, "average": avg, "t_mean": avg, "t_std": 0.0}
  rows = [row("random", 0, 0.60), row("random", 1, 0.70), row("random", 2, 0.50),
          row("DWM (MAD)", 0, 0.61), row("DWM (MAD)", 1, 0.71), row("DWM (MAD)", 2, 0.51)]
  out = {r["model"]: r for r in script.aggregate(rows, ["t"])}
  dwm = out["DWM (MAD)"]
  assert dwm["average"] == pytest.approx(0.61) and dwm["average_std"] == pytest.approx(0.1)
  assert dwm["vs_ref_mean"] == pytest.approx(0.01) and dwm["vs_ref_std"] == pytest.approx(0.0,
                                                                                          abs=1e-12)
  assert (dwm["vs_ref_positive"], dwm["vs_ref_n"], dwm["seeds"]) == (3, 3, 3)
  assert "vs_ref_mean" not in out["random"]


def test_bad_arguments(script, tmp_path):
  with pytest.raises(SystemExit):
    script.main(["--tiny", "--out", str(tmp_path), "--strategies", "bogus"])
  with pytest.raises(SystemExit):
    script.main(["--tiny", "--out", str(tmp_path), "--seeds", "0,x"])
  with pytest.raises(SystemExit):
    script.main(["--tiny", "--out", str(tmp_path), "--seeds", "1,1"])
  with pytest.raises(ValueError, match="no such config field"):
    script.main(["--tiny", "--out", str(tmp_path), "--set", "model.nonexistent=3"])
