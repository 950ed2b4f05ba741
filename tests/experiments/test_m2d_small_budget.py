"""experiments/m2d_small_budget/run.py: the tiny size end to end (one variant, the MAE quickstart
and a random-init encoder, per-block probes), the variants' configs, the paired summary."""
import csv
import importlib.util
import json
import pathlib

import numpy as np
import pytest

from tests.train.conftest import cache_dir, compile_cache  # noqa: F401  pylint: disable=unused-import


SCRIPT = (pathlib.Path(__file__).resolve().parents[2] / "experiments" / "m2d_small_budget"
          / "run.py")


@pytest.fixture(scope="module")
def script():
  spec = importlib.util.spec_from_file_location("m2d_small_budget_run", SCRIPT)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def test_every_variant_is_a_valid_m2d_config(script):
  from dwm_jax.validate import validate
  for name in script.VARIANTS:
    c = script.variant_config(name, seed=2)
    validate(c, device_count=1, process_count=1)
    assert c.objective.name == "m2d" and c.seed == 2, name
  mae = script.variant_config(script.MAE, seed=1)
  assert mae.objective.name == "mae" and mae.seed == 1
  prev, authors = script.variant_config("previous", 0), script.variant_config("authors", 0)
  assert (prev.objective.target_init, authors.objective.target_init) == ("copy", "independent")
  assert (prev.optim.clip_norm, authors.optim.clip_norm) == (0.0, 3.0)


def test_summary_pairs_by_seed(script):
  def row(v, s, m, a):
    return {"variant": v, "seed": s, "model": m, "average": a, "layer": None}
  rows = []
  for s, (rnd, mae, m2d) in enumerate([(0.60, 0.66, 0.62), (0.70, 0.72, 0.71)]):
    rows += [row(script.MAE, s, "random_init", rnd), row(script.MAE, s, "pretrained", mae),
             row("authors", s, "random_init", rnd), row("authors", s, "pretrained", m2d)]
  out = {r["variant"]: r for r in script.summarize(rows, [0, 1])}
  np.testing.assert_allclose(out["authors"]["vs_random"], [0.02, 0.01])
  np.testing.assert_allclose(out["authors"]["vs_mae"], [-0.04, -0.01])
  assert script.pm(out["authors"]["vs_random"], signed=True) == "+1.5 ± 0.7"


@pytest.mark.slow
@pytest.mark.usefixtures("compile_cache")
def test_tiny_run_end_to_end(script, tmp_path):
  assert script.main(["--tiny", "--out", str(tmp_path), "--variants", "authors",
                      "--seeds", "3"]) == 0
  with open(tmp_path / "results.csv", newline="") as f:
    rows = list(csv.DictReader(f))
  final = {(r["variant"], r["model"]) for r in rows if not r["layer"]}
  assert final == {("mae_quickstart", "pretrained"), ("mae_quickstart", "random_init"),
                   ("authors", "pretrained"), ("authors", "random_init")}
  assert not any(r["layer"] for r in rows)  # per-block probes only with --layers
  for r in rows:
    vals = [float(r[t]) for t in script.TASKS]
    assert all(0.0 <= v <= 1.0 for v in vals) and r["seed"] == "3"
    assert float(r["average"]) == pytest.approx(np.mean(vals))
  record = json.loads((tmp_path / "runs" / "authors" / "seed3" / "budget_run.json").read_text())
  assert record["steps"] == 3 and [c["step"] for c in record["curve"]] == [1, 2, 3]
  assert json.loads(record["config"])["objective"]["name"] == "m2d"
  md = (tmp_path / "results.md").read_text()
  assert "| authors | 3 |" in md and "beats both" in md


def test_truncated_encoder_is_the_first_blocks(script):
  import jax
  from dwm_jax.evaluate.embed import embed_clips
  from dwm_jax.evaluate.encoder import random_encoder
  c = script.quickstart(tiny=True)
  enc = random_encoder(c.model, seed=0)
  clips = [np.asarray(jax.random.normal(jax.random.key(i), (80, 64))) for i in range(2)]
  full = script.truncated(enc, 2)
  assert full.model_cfg.depth == 2 and set(full.params) == set(enc.params)
  np.testing.assert_array_equal(embed_clips(full, clips), embed_clips(enc, clips))
  one = script.truncated(enc, 1)
  assert one.model_cfg.depth == 1 and "block_1" not in one.params and "norm" in one.params
  assert not np.allclose(embed_clips(one, clips), embed_clips(enc, clips))
