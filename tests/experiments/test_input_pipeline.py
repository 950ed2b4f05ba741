"""experiments/input_pipeline/run.py --small end to end, against the test bucket: every row and
table is written, and the cost per clip (independent of timing) is what the layouts promise."""
import csv
import os
import pathlib
import subprocess
import sys

import pytest

REPO = pathlib.Path(__file__).resolve().parents[2]
SCRIPT = REPO / "experiments" / "input_pipeline" / "run.py"


@pytest.mark.slow
def test_input_pipeline_small_run(tmp_path):
  from dwm_jax.testing import gcs_server  # pylint: disable=import-outside-toplevel
  try:
    gcs_server.FakeGcs(str(tmp_path / "probe")).stop()
  except gcs_server.Unavailable as e:
    pytest.skip(f"no GCS-protocol server: {e}")
  # A process of its own, as users run it: its bucket points this process's storage clients at
  # a server that is gone once it ends (tensorstore reads the address once per process), which
  # would leave the session's test bucket unreachable from this worker.
  env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
  proc = subprocess.run([sys.executable, str(SCRIPT), "--small", "--seconds", "8", "--data",
                         str(tmp_path / "data"), "--out", str(tmp_path / "out")],
                        cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
  assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
  with open(tmp_path / "out" / "results.csv") as f:
    rows = list(csv.DictReader(f))
  assert {(r["cpus"], r["layout"], r["where"], r["latency_ms"]) for r in rows} == {
      (cpus, layout, where, lat) for cpus in ("shared", "split") for layout in ("shards", "npy")
      for where, lat in (("local", "0"), ("bucket", "0"), ("bucket", "30"))}
  assert all(float(r["clips_per_s"]) > 0 for r in rows)
  with open(tmp_path / "out" / "cost.csv") as f:
    cost = {(r["layout"], r["where"]): r for r in csv.DictReader(f)}
  crop = 80 * 608 * 2
  shards, npy = cost[("shards", "bucket")], cost[("npy", "bucket")]
  assert crop < float(shards["bytes_per_clip"]) < 1.2 * crop  # its chunks, one request
  assert float(shards["requests_per_clip"]) <= 1.0
  assert float(npy["bytes_per_clip"]) > 80 * 801 * 2  # the whole 8 s clip
  md = (tmp_path / "out" / "results.md").read_text()
  assert "| shards, workers 0, CPUs shared: bucket +30 ms / local disk |" in md
  assert "| 8 x H100 (one host) | shards | 41,400 |" in md
