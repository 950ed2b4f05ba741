"""The device check: one script to run the day a GPU or TPU host is lent (under 8 minutes).

It measures, in one process on the default device:

1. **mask cost**: ``experiments/mask_cost/run.py`` at batches 256 and 2048 on the 5 x 38 grid
   (every strategy against the one-read floor), run as a subprocess;
2. **ViT-B M2D step** in bfloat16 at ``--batch-per-device`` clips per device: step time, clips/s,
   XLA's FLOPs of the step, MFU against the chip's bf16 matmul throughput measured in the same
   run and against the peak the training log lines use (``dwm_jax.train.mfu``: the chip's table
   entry, or a matmul measured at start where there is none), and XLA's memory per clip with
   and without ``model.remat`` (the compiled step's temporaries) next to the activations kept
   for the backward pass (the VJP's residuals);
   **the log lines' MFU**: the same step run by the training loop (``loop.train`` on
   device-resident batches), its MFU read back from ``metrics.jsonl``, next to the bare step's
   against the same peak: the two agree when the loop adds nothing to the step;
3. **loop vs bare step**: ``experiments/loop_overhead/run.py`` at the same size (the full loop's
   clips/s against the bare compiled step's), as a subprocess;
4. **embedding throughput**: ``experiments/embed_throughput/run.py``: audio hours/s of
   ``dwm-jax embed`` with the quickstart encoder and ViT-B (bare program and end to end), as a
   subprocess.

  python experiments/device_check/run.py                  # on the lent machine
  python experiments/device_check/run.py --small          # the CPU-sized version (tests run it)
Writes ``results.csv`` (one row per measurement), ``results.md`` and the sub-benchmarks' own
tables under ``--out`` (default ``experiments/device_check/results/<backend>/``).
"""
from __future__ import annotations

import argparse
import csv
import itertools
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from configs import m2d
from dwm_jax import timing
from dwm_jax.train import compile_cache, loop, memory, mfu
from dwm_jax.train import mesh as mesh_lib
from dwm_jax.train import setup as setup_lib
from dwm_jax.train import state as state_lib

HERE = Path(__file__).resolve().parent
EXPERIMENTS = HERE.parent


def step_config(model: str, batch: int, dtype: str, remat: bool, frames: int):
  c = m2d.get_config(f"model={model},data=synthetic")
  c.model.input_shape = (80, frames)
  c.model.dtype = dtype
  c.model.remat = remat
  c.batch_size = batch
  c.data.num_workers = 0
  c.total_steps, c.steps_per_epoch = 10_000, 100
  if model == "tiny":  # the CPU-sized check: one block each, still the same code path
    c.model.depth, c.objective.predictor_depth = 1, 1
  return c


def step_measurements(model: str, batch_per_device: int, dtype: str, frames: int,
                      steps: int, peak: float) -> list[dict]:
  mesh = mesh_lib.data_mesh()
  batch = batch_per_device * mesh.devices.size
  rows = []
  for remat in (False, True):
    setup = setup_lib.build(step_config(model, batch, dtype, remat, frames), batch * 100)
    t0 = time.perf_counter()
    compiled, plan = memory.compile_step(setup, mesh)
    compile_s = time.perf_counter() - t0
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, list) else cost
    flops = float(cost.get("flops", float("nan"))) if cost else float("nan")
    state = jax.jit(lambda k, s=setup: state_lib.create_train_state(s, k),
                    out_shardings=mesh_lib.replicated(mesh))(jax.random.key(0))
    f, t = setup.input_shape
    x = np.random.default_rng(0).normal(size=(batch, f, t)).astype(np.float32)
    data = mesh_lib.put_batch({"logmel": x}, mesh)
    key = mesh_lib.put_replicated(jax.random.key(1), mesh)

    def one():
      nonlocal state
      state, metrics, _ = compiled(state, data, key)
      jax.block_until_ready(metrics["loss"])

    step_s = timing.median_seconds(one, steps)
    # XLA's FLOP count is of the per-device program: the whole step is that times the devices.
    step_flops = flops * mesh.devices.size
    log_peak, log_peak_source = mfu.peak_flops(dtype)
    rows.append(dict(
        measure="vit_step", model=model, dtype=dtype, remat=remat, batch=batch,
        devices=mesh.devices.size, step_ms=step_s * 1e3, clips_per_s=batch / step_s,
        gflop_per_clip=step_flops / batch / 1e9,
        mfu=step_flops / step_s / (peak * mesh.devices.size),
        mfu_log_peak=flops / step_s / log_peak, log_peak_tflops=log_peak / 1e12,
        log_peak_source=log_peak_source, compile_s=compile_s,
        needed_gib_per_device=plan.needed_bytes / 2**30,
        temp_mib_per_clip=plan.temp_bytes_per_clip / 2**20,
        residual_mib_per_clip=memory.residual_bytes_per_clip(setup) / 2**20))
    print(rows[-1], flush=True)
    del state  # frees the last state before the next compile
  return rows


def loop_mfu(model: str, batch_per_device: int, dtype: str, frames: int, steps: int) -> dict:
  """The same step run by the training loop on device-resident batches: the MFU its log line
  and ``metrics.jsonl`` report (one log line, over ``steps`` steps after the first)."""
  mesh = mesh_lib.data_mesh()
  batch = batch_per_device * mesh.devices.size
  config = step_config(model, batch, dtype, False, frames)
  config.total_steps = config.log_every_steps = steps + 1
  config.checkpoint.every_steps, config.checkpoint.every_minutes = 10**9, 0.0
  config.mask_png_every_steps = 0
  setup = setup_lib.build(config, batch * 100)
  f, t = setup.input_shape
  rng = np.random.default_rng(0)
  batches = [mesh_lib.put_batch({"logmel": rng.normal(size=(batch, f, t)).astype(np.float32)},
                                mesh) for _ in range(4)]
  with tempfile.TemporaryDirectory() as workdir:
    summary = loop.train(config, workdir, batches=itertools.cycle(batches))
    with open(os.path.join(workdir, "metrics.jsonl")) as fh:
      row = [json.loads(line) for line in fh][-1]
  launch = summary["launch"]
  out = dict(measure="loop_mfu", model=model, dtype=dtype, batch=batch,
             devices=mesh.devices.size, step_ms=row["step_time"] * 1e3,
             clips_per_s=row["clips_per_sec"], tflops_per_device=row.get("tflops_per_device"),
             mfu=row.get("mfu"), log_peak_tflops=launch["peak_flops"] / 1e12,
             data_wait=row["data_wait"], timed_steps=summary["throughput"]["timed_steps"])
  print(out, flush=True)
  return out


def run_script(script: Path, args: list[str], timeout: int) -> tuple[int, str]:
  env = dict(os.environ)
  env["PYTHONPATH"] = os.pathsep.join([str(EXPERIMENTS.parent), env.get("PYTHONPATH", "")])
  proc = subprocess.run([sys.executable, str(script), *args], capture_output=True, text=True,
                        timeout=timeout, env=env)
  print(proc.stdout[-4000:], proc.stderr[-2000:] if proc.returncode else "", flush=True)
  return proc.returncode, proc.stdout


def embed_throughput(out: Path, small: bool) -> dict:
  """``experiments/embed_throughput`` (as a subprocess): audio hours/s ``dwm-jax embed`` gets
  from ViT-B here, bare program and end to end; its table goes into results.md."""
  args = ["--small"] if small else [
      "--encoders", "quickstart,base", "--batch", "base=256", "--batch", "quickstart=512",
      "--clips", "10s=300", "--clips", "1s=600", "--clips", "3min=4",
      "--workers", str(os.cpu_count() or 8)]
  rc, _ = run_script(EXPERIMENTS / "embed_throughput" / "run.py",
                     args + ["--out", str(out / "embed_throughput")], timeout=600)
  return dict(measure="embed_throughput", embed_throughput_rc=rc)


def write(rows: list[dict], out: Path, header: list[str], tables: dict[str, Path]) -> str:
  out.mkdir(parents=True, exist_ok=True)
  fields = sorted({k for r in rows for k in r}, key=lambda k: (k != "measure", k))
  with open(out / "results.csv", "w", newline="") as f:
    w = csv.DictWriter(f, fieldnames=fields)
    w.writeheader()
    w.writerows(rows)
  lines = header + ["", "## ViT-B M2D train step", "",
                    "| model | dtype | remat | batch | devices | step ms | clips/s | GFLOP/clip | "
                    "MFU (measured matmul) | MFU (log lines' peak) | XLA temp MiB/clip | "
                    "residual MiB/clip | GiB/device | compile s |",
                    "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
  for r in rows:
    if r["measure"] == "vit_step":
      lines.append(f"| {r['model']} | {r['dtype']} | {r['remat']} | {r['batch']} | "
                   f"{r['devices']} | {r['step_ms']:.1f} | {r['clips_per_s']:.1f} | "
                   f"{r['gflop_per_clip']:.1f} | {r['mfu'] * 100:.1f}% | "
                   f"{r['mfu_log_peak'] * 100:.1f}% | "
                   f"{r['temp_mib_per_clip']:.1f} | {r['residual_mib_per_clip']:.1f} | "
                   f"{r['needed_gib_per_device']:.2f} | {r['compile_s']:.0f} |")
  bare = next((r for r in rows if r["measure"] == "vit_step" and not r["remat"]), None)
  looped = next((r for r in rows if r["measure"] == "loop_mfu"), None)
  if bare and looped and looped.get("mfu") is not None:
    lines += ["", "## The log lines' MFU", "",
              f"Peak per device: {bare['log_peak_tflops']:.4g} TFLOP/s ({bare['log_peak_source']}). "
              f"The training loop's log line / metrics.jsonl: **MFU {looped['mfu'] * 100:.1f}%**, "
              f"{looped['step_ms']:.1f} ms/step, {looped['clips_per_s']:.1f} clips/s, data wait "
              f"{looped['data_wait'] * 100:.0f}% (over {looped['timed_steps']} steps); the bare "
              f"step against the same peak: MFU {bare['mfu_log_peak'] * 100:.1f}%, "
              f"{bare['step_ms']:.1f} ms/step: loop / bare = "
              f"{looped['mfu'] / bare['mfu_log_peak']:.3f}."]
  steps = {r["remat"]: r for r in rows if r["measure"] == "vit_step"}
  if len(steps) == 2:
    lines += ["", f"remat: XLA temporaries per clip "
              f"{steps[False]['temp_mib_per_clip'] / steps[True]['temp_mib_per_clip']:.1f}x "
              f"smaller, residuals {steps[False]['residual_mib_per_clip'] / steps[True]['residual_mib_per_clip']:.1f}x "
              f"smaller, step {steps[True]['step_ms'] / steps[False]['step_ms']:.2f}x the time"]
  for title, path in tables.items():
    if path.is_file():
      lines += ["", f"## {title}", "", path.read_text().strip()]
  text = "\n".join(lines) + "\n"
  (out / "results.md").write_text(text)
  return text


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--small", action="store_true",
                 help="CPU-sized: a one-block ViT-tiny at 80 x 64, batch 2, small mask cost")
  p.add_argument("--batch-per-device", type=int, default=256)
  p.add_argument("--steps", type=int, default=10)
  p.add_argument("--out", default="")
  a = p.parse_args(argv)
  backend = jax.default_backend()
  out = Path(a.out or HERE / "results" / backend)
  device = jax.devices()[0]
  header = [f"# Device check: {device.device_kind} x{jax.device_count()} ({backend})", "",
            f"jax {jax.__version__}, {platform.platform()}, "
            f"{time.strftime('%Y-%m-%d %H:%M:%S')}"]
  t_start = time.perf_counter()
  compile_cache.configure("auto")  # the loop's run below then loads the step compiled here
  if a.small:
    model, per_device, frames, dtype, mm_n = "tiny", 2, 64, "float32", 512
    mask_args = ["--batch-sizes", "16", "--grids", "5x38", "--strategies", "random,dwm",
                 "--repeats", "2", "--host-repeats", "1", "--hints", "0", "--metrics", "mad",
                 "--no-pieces", "--no-authors"]
    loop_args = ["--sizes", "quickstart", "--batch", "4", "--steps", "3", "--rounds", "1",
                 "--warmup", "3"]
  else:
    model, per_device, frames, dtype, mm_n = "base", a.batch_per_device, 608, "bfloat16", 8192
    mask_args = ["--batch-sizes", "256,2048", "--grids", "5x38"]
    loop_args = ["--sizes", f"base{per_device * jax.device_count()}", "--steps", "20",
                 "--rounds", "2"]
  peak = timing.matmul_flops_per_s(mm_n, a.steps,
                                   jnp.bfloat16 if dtype == "bfloat16" else jnp.float32)
  header.append(f"matmul peak measured here: {peak / 1e12:.2f} TFLOP/s per device ({dtype})")
  rows = [dict(measure="matmul_peak", dtype=dtype, tflops=peak / 1e12)]
  rows += step_measurements(model, per_device, dtype, frames, a.steps, peak)
  rows.append(loop_mfu(model, per_device, dtype, frames, a.steps))
  rc_mask, _ = run_script(EXPERIMENTS / "mask_cost" / "run.py",
                          mask_args + ["--out", str(out / "mask_cost")], timeout=600)
  rc_loop, _ = run_script(EXPERIMENTS / "loop_overhead" / "run.py",
                          loop_args + ["--out", str(out / "loop_overhead")], timeout=600)
  rows.append(embed_throughput(out, a.small))
  rows.append(dict(measure="subprocesses", mask_cost_rc=rc_mask, loop_overhead_rc=rc_loop,
                   wall_s=time.perf_counter() - t_start))
  header.append(f"wall time {time.perf_counter() - t_start:.0f} s; mask_cost exit {rc_mask}, "
                f"loop_overhead exit {rc_loop} (1 = a target not met, see its table)")
  print(write(rows, out, header, {"Mask cost": out / "mask_cost" / "results.md",
                                  "Loop vs bare step": out / "loop_overhead" / "results.md",
                                  "Embedding throughput": out / "embed_throughput" / "results.md"}))
  return 0


if __name__ == "__main__":
  raise SystemExit(main())
