"""experiments/mask_cost/run.py: the host baselines, the target checks and a tiny end-to-end run."""
import csv
import functools
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
  def row(method, x_floor=1.0, ms=1.0, x_random=float("nan"), authors=float("nan"), batch=256):
    return dict(method=method, grid="5x38", batch=batch, x_floor=x_floor, median_ms=ms,
                x_random=x_random, speedup_vs_authors=authors)

  checks = bench.check_targets([
      row(bench.FLOOR),
      row("dwm[mad] h=0", x_floor=2.5, ms=10.0, authors=10.0),        # both limits met exactly
      row("dwm[variance] h=0.5", x_floor=3.01, ms=5.0, authors=9.9),  # both just missed
      row("dwm[mad] h=0", x_floor=1.0, authors=50.0, batch=2048),     # authors only at B=256
      row(bench.PIECE_SELECTION, ms=2.0),
      row(bench.PIECE_NO_SWAP, ms=10.0 / 1.02),                      # dwm h=0 is +2%
      row(bench.PIECE_SWAP.format(0.5), ms=2.1),                      # 1.05 selections
      row("dwm[mad] h=0.5", x_floor=2.0, ms=11.0, authors=20.0),     # the swap adds 1 ms
      row("time h=0", x_random=3.0), row("block h=0.5", x_random=3.2),
      row("random h=0", x_random=1.0), row("informed h=0", x_floor=9.0)])
  by = {text.split(" [")[0].split(":")[0]: ok for text, ok in checks}
  assert by == {
      "dwm[mad] h=0 <= 2.5x floor": True,
      "dwm[mad] h=0 >= 10x faster than the authors' torch DWM": True,
      "dwm[variance] h=0.5 <= 3x floor": False,
      "dwm[variance] h=0.5 >= 10x faster than the authors' torch DWM": False,
      "hint swap at h=0 costs nothing (dwm[mad] h=0 traced <= 1.03x dwm[mad] without swap)":
          True,
      "hint swap h=0.5 <= 1 selection": False,
      "dwm[mad] h=0.5 <= 3x floor": True,
      "dwm[mad] h=0.5 >= 10x faster than the authors' torch DWM": True,
      "time h=0 <= 3x random": True,
      "block h=0.5 <= 3x random": False}, checks
  # The B=2048 dwm row has a floor check but no authors check.
  assert sum("B=2048" in text for text, _ in checks) == 1
  assert any("3.01x" in text for text, _ in checks)
  # The swap's line also says what it adds inside DWM (h=0.5 minus h=0), as selections.
  swap = next(text for text, _ in checks if text.startswith("hint swap h=0.5"))
  assert "1.05 selections (in dwm[mad], h=0.5 minus h=0: +1.000 ms = 0.50 selections)" in swap


def test_rounds_alternate_their_order(bench):
  # Each method follows a different neighbour in alternate rounds (cache state left by the call
  # before must not favour one of two methods compared); repeats left per method are honoured.
  seen = []
  calls = {name: (lambda i, name=name: seen.append(name), n) for name, n in
           (("a", 3), ("b", 3), ("c", 2))}
  times = bench.time_interleaved(calls, warmup=1)
  assert seen[3:] == ["a", "b", "c", "c", "b", "a", "a", "b"]
  assert {name: len(t) for name, t in times.items()} == {"a": 3, "b": 3, "c": 2}
  # A primed method runs once more, untimed, right before each of its timed calls.
  seen.clear()
  times = bench.time_interleaved(calls, warmup=1, primed=frozenset({"b"}))
  assert seen[3:] == ["a", "b", "b", "c", "c", "b", "b", "a", "a", "b", "b"]
  assert {name: len(t) for name, t in times.items()} == {"a": 3, "b": 3, "c": 2}


def test_bad_grid_flag_is_named(bench, capsys):
  with pytest.raises(SystemExit):
    bench.main(["--grids", "5by38"])
  assert "expected FxT like 5x38" in capsys.readouterr().err


def test_end_to_end_tiny_run_writes_csv_markdown_png(bench, tmp_path, capsys):
  strategies = ["random", "dwm", "informed", "time"]
  assert bench.main(["--small", "--batch-sizes", "4,8", "--grids", "5x38", "--repeats", "2",
                     "--host-repeats", "1", "--warmup", "1", "--feature-dim", "8",
                     "--hints", "0,0.5", "--metrics", "mad", "--no-authors",
                     "--strategies", ",".join(strategies), "--out", str(tmp_path)]) == 0
  printed = capsys.readouterr().out
  assert printed.startswith("device: ") and "targets:" in printed

  with open(tmp_path / "results.csv") as f:
    rows = list(csv.DictReader(f))
  assert tuple(rows[0]) == bench.CSV_FIELDS
  pieces = [bench.PIECE_DISPERSION.format("mad"), bench.PIECE_SELECTION,
            bench.PIECE_SWAP.format(0), bench.PIECE_SWAP.format(0.5),
            bench.PIECE_SWAP_SELECTION.format(0.5),
            bench.PIECE_SGIM.format("power"), bench.PIECE_SGIM.format("eigh")]
  # DWM without swap is timed next to DWM at h=0, the row it is compared with.
  jitted = ["random h=0", "random h=0.5", bench.PIECE_NO_SWAP, "dwm[mad] h=0", "dwm[mad] h=0.5",
            "informed h=0", "informed h=0.5", "time h=0", "time h=0.5"]
  methods = [bench.FLOOR, *pieces, *jitted, bench.NP_RANDOM, bench.NP_INVERSE_BLOCK]
  assert [(r["batch"], r["method"]) for r in rows] == [(b, m) for b in ("4", "8")
                                                        for m in methods]
  for r in rows:
    values = {k: float(r[k]) for k in bench.CSV_FIELDS[6:] if r[k] != ""}
    # Every column is measured except the authors' speedup (not timed here).
    assert set(values) == set(bench.CSV_FIELDS[6:]) - {"speedup_vs_authors"}, r
    assert all(math.isfinite(v) and v > 0 for v in values.values()), r
    assert values["p10_ms"] <= values["median_ms"] <= values["p90_ms"]
    assert values["masks_per_s"] == pytest.approx(int(r["batch"]) / values["median_ms"] * 1e3,
                                                  rel=1e-4)
    if r["method"] == bench.FLOOR:
      assert values["x_floor"] == pytest.approx(1.0)
    if r["method"].startswith("random h="):
      assert values["x_random"] == pytest.approx(1.0)
    if r["method"] == bench.NP_RANDOM:
      assert values["speedup_vs_numpy_random"] == pytest.approx(1.0)

  md = (tmp_path / "results.md").read_text()
  table = [line for line in md.splitlines() if line.startswith("| 5x38")]
  assert len(table) == len(rows)
  assert all(line.count("|") == len(bench.MD_COLUMNS) + 1 for line in table)
  targets = [line for line in md.splitlines() if line.startswith(("- PASS", "- FAIL"))]
  # Per batch: dwm vs floor at both hints, the swap at h=0 and at h=0.5, time vs random at both.
  assert len(targets) == 2 * (2 + 2 + 2)
  assert f"of {len(targets)} target checks met" in md
  assert (tmp_path / "mask_cost.png").stat().st_size > 10_000


torch = pytest.importorskip("torch")


@pytest.fixture(scope="module")
def authors():
  spec = importlib.util.spec_from_file_location("authors_dwm", SCRIPT.parent / "authors_dwm.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


@functools.lru_cache(maxsize=None)
def our_dwm(metric: str):
  """Our DWM jitted on the 5 x 38 grid, the hint traced: one compile per metric."""
  import jax
  from dwm_jax import masking
  return jax.jit(lambda key, x, h: masking.sample("dwm", key, x, grid=(5, 38), ratio=0.7, hint=h,
                                                  metric=metric))


@pytest.mark.parametrize("metric", ["mad", "variance"])
@pytest.mark.parametrize("hint", [0.0, 0.5])
def test_authors_dwm_has_our_dwm_law(authors, metric, hint):
  """The authors' torch code (multinomial draw + two-permutation swap) and our jitted DWM
  (Gumbel-top-k + one-selection swap) mask every patch equally often on the same patches."""
  import jax
  import jax.numpy as jnp
  torch.manual_seed(0)
  rows, n, k = 4000, 190, 133
  spread = torch.linspace(0.01, 2.0, n)
  patches = torch.randn(rows, n, 64, generator=torch.Generator().manual_seed(1))
  patches = patches * spread[None, :, None]
  ids, keep = authors.authors_dwm(patches, 0.7, hint, metric)
  assert keep == n - k and ids.shape == (rows, n)
  assert (torch.sort(ids, dim=1).values == torch.arange(n)).all()   # a permutation per row
  theirs = authors.ids_to_mask(ids, keep).numpy()
  assert (theirs.sum(1) == k).all()
  ours = np.asarray(our_dwm(metric)(jax.random.key(0), jnp.asarray(patches.numpy()),
                                    jnp.float32(hint)))
  # Frequencies in 19 bins of 10 patches of rising spread: equal within sampling noise.
  a, b = theirs.reshape(rows, 19, 10).mean((0, 2)), ours.reshape(rows, 19, 10).mean((0, 2))
  sigma = np.sqrt(2 * a * (1 - a) / (rows * 10))
  assert (np.abs(a - b) < 5 * sigma + 1e-3).all(), (a, b)
  assert a[-1] > a[0] + 0.1   # and the law is far from uniform
