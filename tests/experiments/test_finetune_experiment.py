"""experiments/finetune/run.py end to end at the tiny size (probe and fine-tuning, one seed), on
the synthetic suite and on the rendered real-audio tasks."""
import csv
import importlib.util
import json
import pathlib

import pytest

from dwm_jax.data import rendered

SCRIPT = pathlib.Path(__file__).resolve().parents[2] / "experiments" / "finetune" / "run.py"


@pytest.fixture(scope="module")
def script():
  spec = importlib.util.spec_from_file_location("finetune_experiment_run", SCRIPT)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


@pytest.mark.slow
def test_tiny_run_end_to_end(script, tmp_path, capsys):
  assert script.main(["--tiny", "--suite", "synthetic", "--out", str(tmp_path), "--work",
                      str(tmp_path / "work")]) == 0
  with open(tmp_path / "results.csv", newline="") as f:
    rows = list(csv.DictReader(f))
  assert [r["method"] for r in rows] == ["linear probe", "fine-tuned"]
  tasks = ("synthetic_event", "synthetic_pitch", "synthetic_timbre")
  for r in rows:
    vals = [float(r[f"{t}_mean"]) for t in tasks]
    assert all(0.0 <= v <= 1.0 for v in vals)
    assert float(r["average"]) == pytest.approx(sum(vals) / 3)
  meta = json.loads((tmp_path / "results.json").read_text())["meta"]
  assert meta["seeds"] == 1 and meta["splits"]["synthetic_event"]["test"] > 0
  ft = json.loads((tmp_path / "finetune.json").read_text())
  assert set(ft) == set(tasks)
  table = (tmp_path / "results.md").read_text()
  assert "| fine-tuned |" in table and table in capsys.readouterr().out


MISSING = rendered.available()[1]


@pytest.mark.slow
@pytest.mark.skipif(bool(MISSING), reason="; ".join(MISSING))
def test_tiny_real_audio_run(script, tmp_path, capsys):
  assert script.main(["--tiny", "--out", str(tmp_path), "--work", str(tmp_path / "work")]) == 0
  result = json.loads((tmp_path / "results.json").read_text())
  assert result["meta"]["splits"] == {"words": {"train": 30, "valid": 10, "test": 20},
                                      "instruments": {"train": 30, "valid": 10, "test": 20}}
  for method in ("linear probe", "fine-tuned"):
    for task in ("words", "instruments"):
      [score] = result["per_seed"][method][task]
      assert result["results"][method][task]["mean"] == score and 0.0 <= score <= 1.0
  table = (tmp_path / "results.md").read_text()
  assert "- words: linear probe " in table and table in capsys.readouterr().out
