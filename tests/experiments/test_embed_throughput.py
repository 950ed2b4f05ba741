"""experiments/embed_throughput/run.py --small end to end: every collection measured, written."""
import csv
import importlib.util
import pathlib

import pytest

SCRIPT = pathlib.Path(__file__).resolve().parents[2] / "experiments" / "embed_throughput" / "run.py"


@pytest.mark.slow
def test_embed_throughput_small(tmp_path):
  spec = importlib.util.spec_from_file_location("embed_throughput_run", SCRIPT)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  assert module.main(["--small", "--steps", "2", "--out", str(tmp_path)]) == 0
  with open(tmp_path / "results.csv") as f:
    rows = list(csv.DictReader(f))
  assert [(r["collection"], r["files"]) for r in rows] == [("10s", "4"), ("1s", "8"),
                                                          ("3min", "1")]
  for r in rows:
    assert float(r["audio_h"]) == pytest.approx(int(r["files"]) * {"10s": 10, "1s": 1,
                                                                   "3min": 180}[r["collection"]]
                                                / 3600)
    assert 0 < float(r["packing"]) <= 1 and float(r["bare_windows_per_s"]) > 0
    assert float(r["e2e_audio_h_per_s"]) > 0 and float(r["e2e_vs_bare"]) > 0
  # 80 x 64 windows are 4 columns: a 1 s clip (7 columns) is a whole window and a 3-column one,
  # alone in its row (3 + 3 > 4): 7 of 8 columns real.
  assert float(rows[1]["packing"]) == pytest.approx(7 / 8)
  assert "| tiny | 80x64 | 3min | 1 |" in (tmp_path / "results.md").read_text()
