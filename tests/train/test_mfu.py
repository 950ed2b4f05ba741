"""MFU: the peak table, XLA's FLOP count, and the figures the log lines and metrics.jsonl carry,
checked against XLA's cost analysis of the compiled train step."""
import json
import logging
import os
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dwm_jax.data import pipeline
from dwm_jax.train import loop, memory, mfu
from dwm_jax.train import mesh as mesh_lib
from dwm_jax.train import setup as setup_lib

from .conftest import tiny_config


@pytest.mark.parametrize("kind, bf16, f32", [
    ("NVIDIA A100-SXM4-80GB", 312, 156), ("NVIDIA A100 80GB PCIe", 312, 156),
    ("NVIDIA H100 80GB HBM3", 989, 494.5), ("NVIDIA H100 PCIe", 756, 378),
    ("NVIDIA H100 NVL", 835, 417.5), ("NVIDIA H200", 989, 494.5),
    ("NVIDIA H200 NVL", 835, 417.5), ("NVIDIA GH200 480GB", 989, 494.5),
    ("NVIDIA B200", 2250, 1100), ("NVIDIA L4", 121, 60),
    ("TPU v4", 275, 275), ("TPU v5 lite", 197, 197), ("TPU v5e", 197, 197),
    ("TPU v5", 459, 459), ("TPU v5p", 459, 459), ("TPU v6 lite", 918, 918),
    ("NVIDIA L40S", None, None), ("TPU v4 lite", None, None), ("cpu", None, None)])
def test_peak_table_by_device_kind(kind, bf16, f32):
  want = (None, None) if bf16 is None else (bf16 * 1e12, f32 * 1e12)
  assert (mfu.table_peak_flops(kind, "bfloat16"), mfu.table_peak_flops(kind, "float32")) == want


def test_peak_override_table_and_measured():
  class Device:
    device_kind, platform = "NVIDIA H100 80GB HBM3", "gpu"
  assert mfu.peak_flops("bfloat16", 123.0) == (123e12, "peak_tflops")
  assert mfu.peak_flops("bfloat16", device=Device()) == (
      989e12, "NVIDIA H100 80GB HBM3 bfloat16 table")
  peak, source = mfu.peak_flops("float32")  # this CPU: a matmul on its devices at once
  assert source == "float32 matmul measured on cpu" and 1e8 < peak < 1e13


def test_step_flops_is_xlas_count():
  m, k, n = 64, 32, 48
  compiled = jax.jit(lambda a, b: a @ b).lower(
      jax.ShapeDtypeStruct((m, k), jnp.float32), jax.ShapeDtypeStruct((k, n), jnp.float32)
  ).compile()
  assert mfu.step_flops(compiled) == 2 * m * k * n
  assert mfu.utilization(2e9, 0.5, 8e9) == {"tflops_per_device": 4e-3, "mfu": 0.5}
  assert mfu.utilization(None, 0.5, 8e9) == {}


@pytest.mark.usefixtures("compile_cache")
def test_log_lines_and_metrics_carry_xla_flops_mfu_and_data_wait(tmp_path, caplog):
  config = tiny_config()
  config.log_every_steps, config.peak_tflops = 2, 0.5
  with caplog.at_level(logging.INFO, logger="dwm_jax.train"):
    summary = loop.train(config, str(tmp_path))
  # XLA's count of the same compiled step, made here independently of the loop.
  setup = setup_lib.build(config, pipeline.dataset_size(config.data))
  compiled, _ = memory.compile_step(setup, mesh_lib.data_mesh())
  flops = float(compiled.cost_analysis()["flops"])
  assert flops > 0

  rows = [json.loads(line) for line in open(os.path.join(tmp_path, "metrics.jsonl"))]
  assert [r["step"] for r in rows] == [2, 4, 6, 8]
  lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("step ")]
  assert len(lines) == 4
  for row, line in zip(rows, lines):
    assert row["tflops_per_device"] * 1e12 * row["step_time"] == pytest.approx(flops, rel=1e-9)
    assert row["mfu"] == pytest.approx(row["tflops_per_device"] / 0.5, rel=1e-9)
    assert row["step_time"] * row["steps_per_sec"] == pytest.approx(1.0)
    assert row["clips_per_sec"] == pytest.approx(8 * row["steps_per_sec"])
    assert row["clips_per_sec_per_device"] == pytest.approx(row["clips_per_sec"] / 2)
    assert 0.0 <= row["data_wait"] <= 1.0
    # The console line shows the same figures.
    shown = re.search(r"\| (\d+) ms/step, ([\d.]+) clips/s \(([\d.]+) per device\), "
                      r"([\d.e+-]+) TFLOP/s per device, MFU ([\d.]+)%, data wait (\d+)% \|", line)
    assert shown, line
    assert float(shown.group(1)) == pytest.approx(1e3 * row["step_time"], abs=0.5)
    assert float(shown.group(5)) == pytest.approx(100 * row["mfu"], abs=0.05)
    assert float(shown.group(6)) == pytest.approx(100 * row["data_wait"], abs=0.5)
  totals = summary["throughput"]
  assert totals["timed_steps"] == 7  # steps 2-8: the launch's first step is warm-up
  assert totals["mfu"] == pytest.approx(flops / totals["step_time"] / 0.5e12, rel=1e-9)
  assert summary["launch"]["flops_per_step"] == flops
  assert np.isfinite(summary["launch"]["startup_seconds"])
