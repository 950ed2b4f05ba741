"""experiments/mask_cost/run.py: the host baselines, the target checks and a tiny end-to-end run."""
import csv
import importlib.util
import math
import pathlib

import numpy as np
import pytest

from dwm_jax import patching

SCRIPT = pathlib.Path(__file__).resolve().parents[2] / "experiments" / "mask_cost" / "run.py"


@pytest.fixture(scope="module")
def bench():
  spec = importlib.util.spec_from_file_location("mask_cost_run", SCRIPT)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def visible_neighbours(mask: np.ndarray, grid: patching.Grid) -> float:
  """Mean count of horizontally/vertically adjacent visible pairs per row."""
  vis = ~mask.reshape(-1, grid.freq, grid.time)
  return float((vis[:, 1:] & vis[:, :-1]).sum((1, 2)).mean()
               + (vis[:, :, 1:] & vis[:, :, :-1]).sum((1, 2)).mean())


@pytest.mark.parametrize("grid,ratio", [((5, 38), 0.7), ((8, 64), 0.8), ((1, 7), 0.5)])
def test_numpy_baselines_mask_exactly_k(bench, grid, ratio):
  g = patching.Grid(*grid)
  k = patching.num_masked(g.num_patches, ratio)
  rng = np.random.default_rng(0)
  for mask in (bench.numpy_random(rng, 16, g.num_patches, k),
               bench.numpy_inverse_block(rng, 16, g, k)):
    assert mask.shape == (16, g.num_patches) and mask.dtype == bool
    np.testing.assert_array_equal(mask.sum(1), k)


def test_numpy_baselines_have_their_reference_structure(bench):
  g = patching.Grid(5, 38)
  k = patching.num_masked(g.num_patches, 0.7)
  rng = np.random.default_rng(1)
  rand = bench.numpy_random(rng, 400, g.num_patches, k)
  block = bench.numpy_inverse_block(rng, 400, g, k)
  # Random: every position masked at the ratio; inverse block: visible patches in blocks.
  assert np.abs(rand.mean(0) - k / g.num_patches).max() < 0.12
  assert visible_neighbours(block, g) > 2 * visible_neighbours(rand, g)


def test_check_targets_thresholds(bench):
  def row(method, kind, x_floor, sp_r, sp_ib, batch=256):
    return dict(method=method, kind=kind, grid="5x38", batch=batch, x_floor=x_floor,
                speedup_vs_numpy_random=sp_r, speedup_vs_numpy_inverse_block=sp_ib)

  checks = bench.check_targets([
      row("floor (1 read)", "floor", 1.0, 100, 100),
      row("dwm", "jit", 4.9, 12, 30),
      row("random", "jit", 0.5, 9.9, 50),
      row("dwm", "jit", 5.1, 1, 1, batch=32),
      row("numpy random", "numpy", 9, 1, 0.5)])
  assert [ok for _, ok in checks] == [True, True, False, False]
  assert "B=32" in checks[3][0] and "5.10x" in checks[3][0]


def test_bad_grid_flag_is_named(bench, capsys):
  with pytest.raises(SystemExit):
    bench.main(["--grids", "5by38"])
  assert "expected FxT like 5x38" in capsys.readouterr().err


def test_end_to_end_tiny_run_writes_csv_markdown_png(bench, tmp_path, capsys):
  strategies = ["random", "dwm", "informed"]
  assert bench.main(["--small", "--batch-sizes", "4,256", "--grids", "5x38", "--repeats", "2",
                     "--host-repeats", "1", "--warmup", "1", "--feature-dim", "8",
                     "--strategies", ",".join(strategies), "--out", str(tmp_path)]) == 0
  printed = capsys.readouterr().out
  assert printed.startswith("device: ") and "targets:" in printed

  with open(tmp_path / "results.csv") as f:
    rows = list(csv.DictReader(f))
  assert tuple(rows[0]) == bench.CSV_FIELDS
  methods = [bench.FLOOR, *strategies, bench.NP_RANDOM, bench.NP_INVERSE_BLOCK]
  assert [(r["batch"], r["method"]) for r in rows] == [(b, m) for b in ("4", "256")
                                                        for m in methods]
  for r in rows:
    values = {k: float(r[k]) for k in bench.CSV_FIELDS[6:]}  # every numeric column
    assert all(math.isfinite(v) and v > 0 for v in values.values()), r
    assert values["p10_ms"] <= values["median_ms"] <= values["p90_ms"]
    assert values["masks_per_s"] == pytest.approx(int(r["batch"]) / values["median_ms"] * 1e3,
                                                  rel=1e-4)
    if r["method"] == bench.FLOOR:
      assert values["x_floor"] == pytest.approx(1.0)
    if r["method"] == "random":
      assert values["x_random"] == pytest.approx(1.0)
    if r["method"] == bench.NP_RANDOM:
      assert values["speedup_vs_numpy_random"] == pytest.approx(1.0)

  md = (tmp_path / "results.md").read_text()
  table = [line for line in md.splitlines() if line.startswith("| 5x38")]
  assert len(table) == len(rows)
  assert all(line.count("|") == 10 for line in table)
  targets = [line for line in md.splitlines() if line.startswith(("- PASS", "- FAIL"))]
  # dwm vs floor at both batches; each jitted strategy vs the NumPy baselines at batch 256.
  assert len(targets) == 2 + len(strategies)
  assert (tmp_path / "mask_cost.png").stat().st_size > 10_000
