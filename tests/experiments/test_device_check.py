"""experiments/device_check/run.py --small end to end: every section measured and written."""
import csv
import os
import pathlib
import subprocess
import sys

import pytest

REPO = pathlib.Path(__file__).resolve().parents[2]
SCRIPT = REPO / "experiments" / "device_check" / "run.py"


@pytest.mark.slow
def test_device_check_small_on_cpu(tmp_path):
  env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
         "XLA_FLAGS": "--xla_force_host_platform_device_count=1"}
  proc = subprocess.run([sys.executable, str(SCRIPT), "--small", "--steps", "2", "--out",
                         str(tmp_path)], cwd=REPO, env=env, capture_output=True, text=True,
                        timeout=900)
  assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
  rows = list(csv.DictReader(open(tmp_path / "results.csv")))
  steps = {r["remat"]: r for r in rows if r["measure"] == "vit_step"}
  assert set(steps) == {"False", "True"}
  for r in steps.values():
    assert float(r["step_ms"]) > 0 and 0 < float(r["mfu"]) < 1.5
    assert float(r["temp_mib_per_clip"]) > 0 and float(r["gflop_per_clip"]) > 0
  # remat keeps fewer activations for the backward pass and recomputes (more FLOPs).
  assert float(steps["True"]["residual_mib_per_clip"]) < float(steps["False"]["residual_mib_per_clip"])
  assert float(steps["True"]["gflop_per_clip"]) > float(steps["False"]["gflop_per_clip"])
  # The log lines' MFU (the loop's metrics.jsonl) next to the bare step's against the same
  # peak: same units and definition (on this shared CPU the two timings are noisy).
  looped = next(r for r in rows if r["measure"] == "loop_mfu")
  bare = steps["False"]
  assert float(looped["log_peak_tflops"]) == pytest.approx(float(bare["log_peak_tflops"]))
  assert 0 < float(looped["mfu"]) < 1.5 and 0 < float(bare["mfu_log_peak"]) < 1.5
  assert 0.2 < float(looped["mfu"]) / float(bare["mfu_log_peak"]) < 5
  sub = next(r for r in rows if r["measure"] == "subprocesses")
  assert sub["mask_cost_rc"] == "0" and sub["loop_overhead_rc"] in ("0", "1")
  text = (tmp_path / "results.md").read_text()
  for section in ("## ViT-B M2D train step", "## Mask cost", "## Loop vs bare step",
                  "matmul peak measured here", "## The log lines' MFU"):
    assert section in text
  assert (tmp_path / "mask_cost" / "results.csv").is_file()
  assert (tmp_path / "loop_overhead" / "results.csv").is_file()
