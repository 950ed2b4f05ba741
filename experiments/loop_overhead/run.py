"""What the training loop costs on top of the bare compiled step (issue 11's benchmark).

Both sides run the same compiled train step on the same device-resident synthetic batches:

- **bare step**: the compiled step called back to back, the host waiting for nothing but the
  last call (the device's own speed);
- **loop**: ``dwm_jax.train.loop.train`` fed those batches (``batches=``): everything the real run
  does per step (one-step-ahead batch placement, in-flight bound, logging every
  ``--log-every`` steps with its host sync, the mask PNG and checkpoints off), timed from its
  ``on_step`` hook over the steps after the first ``--warmup``.

The two are measured in alternating rounds in one process (bare first in even rounds, loop first
in odd ones), so machine load hits both alike; the figure is the median over rounds of loop
steps/s / bare steps/s. Each round's loop compiles its step afresh, as a real run does (no
persistent compilation cache). On this 2-core CPU two windows of the *same* executable differ by
up to 27% (measured at ViT-B batch 8), so use enough rounds (the default is 7) and read the
spread that the script prints next to the median.

  python experiments/loop_overhead/run.py                         # quickstart size + ViT-B batch 8
  python experiments/loop_overhead/run.py --sizes quickstart --steps 60 --rounds 5
Writes results.csv and results.md under --out.
"""
from __future__ import annotations

import argparse
import csv
import statistics
import tempfile
import time
from pathlib import Path

import jax
import numpy as np

from configs import m2d, quickstart
from dwm_jax import console
from dwm_jax.train import loop, memory
from dwm_jax.train import mesh as mesh_lib
from dwm_jax.train import setup as setup_lib
from dwm_jax.train import state as state_lib

TARGET = 0.95  # loop steps/s >= 0.95 x the bare step's


def size_config(size: str, batch: int | None = None):
  """``quickstart`` (the quickstart's tiny ViT, batch 64) or ``baseN`` (ViT-B M2D, batch N)."""
  if size == "quickstart":
    c = quickstart.get_config()
    c.probe.after_pretrain = False
  elif size.startswith("base"):
    c = m2d.get_config("model=base,data=synthetic")
    c.batch_size = int(size[4:] or 8)
    c.data.num_workers = 0
  else:
    raise ValueError(f"unknown size {size!r}: quickstart or baseN (ViT-B at batch N)")
  if batch:
    c.batch_size = batch
  c.mask_png_every_steps = 0
  c.compile_cache = "off"  # each round's loop compiles its step afresh, as a first launch does
  c.checkpoint.every_steps = 10**9  # one save, at the end, outside the timed steps
  c.steps_per_epoch = 100
  return c


def device_batches(setup: setup_lib.RunSetup, mesh, count: int = 4) -> list[dict]:
  """``count`` normalized-log-mel-like batches, already on the devices."""
  rng = np.random.default_rng(0)
  f, t = setup.input_shape
  return [mesh_lib.put_batch({"logmel": rng.normal(size=(setup.batch_size, f, t)).astype(
      np.float32)}, mesh) for _ in range(count)]


def bare_steps_per_s(compiled, setup, mesh, batches, steps: int) -> float:
  state = jax.jit(lambda k: state_lib.create_train_state(setup, k),
                  out_shardings=mesh_lib.replicated(mesh))(jax.random.key(0))
  key = mesh_lib.put_replicated(jax.random.key(1), mesh)
  state, metrics, _ = compiled(state, batches[0], key)  # warm
  jax.block_until_ready(metrics["loss"])
  t = time.perf_counter()
  for i in range(steps):
    state, metrics, _ = compiled(state, batches[i % len(batches)], key)
  jax.block_until_ready(metrics["loss"])
  return steps / (time.perf_counter() - t)


def loop_steps_per_s(config, batches, steps: int, warmup: int) -> float:
  config.total_steps = warmup + steps + 1  # the last step (and its save) is not timed
  stamps = {}

  def feed():
    i = 0
    while True:
      yield batches[i % len(batches)]
      i += 1

  with tempfile.TemporaryDirectory() as workdir:
    loop.train(config, workdir, batches=feed(),
               on_step=lambda done: stamps.__setitem__(done, time.perf_counter()))
  return steps / (stamps[warmup + steps] - stamps[warmup])


def bench(size: str, steps: int, warmup: int, rounds: int, log_every: int,
          batch: int | None) -> dict:
  config = size_config(size, batch)
  config.log_every_steps = log_every
  setup = setup_lib.build(config, dataset_size=config.batch_size * 100)
  mesh = mesh_lib.data_mesh()
  compiled, plan = memory.compile_step(setup, mesh)
  batches = device_batches(setup, mesh)
  bare, looped = [], []
  for r in range(rounds):
    if r % 2 == 0:
      bare.append(bare_steps_per_s(compiled, setup, mesh, batches, steps))
      looped.append(loop_steps_per_s(config, batches, steps, warmup))
    else:
      looped.append(loop_steps_per_s(config, batches, steps, warmup))
      bare.append(bare_steps_per_s(compiled, setup, mesh, batches, steps))
    print(f"{size} round {r}: bare {bare[-1]:.3f} steps/s, loop {looped[-1]:.3f} steps/s "
          f"({looped[-1] / bare[-1]:.3f}x)", flush=True)
  ratios = sorted(lo / b for lo, b in zip(looped, bare))
  ratio = statistics.median(ratios)
  return dict(size=size, batch=setup.batch_size, devices=mesh.devices.size, steps=steps,
              rounds=rounds, log_every=log_every,
              bare_steps_per_s=statistics.median(bare), loop_steps_per_s=statistics.median(looped),
              ratio=ratio, ratio_min=ratios[0], ratio_max=ratios[-1],
              clips_per_s_loop=statistics.median(looped) * setup.batch_size,
              temp_bytes_per_clip=plan.temp_bytes_per_clip, target_met=ratio >= TARGET)


def write(rows: list[dict], out: Path, device: str) -> str:
  out.mkdir(parents=True, exist_ok=True)
  with open(out / "results.csv", "w", newline="") as f:
    w = csv.DictWriter(f, fieldnames=list(rows[0]))
    w.writeheader()
    w.writerows(rows)
  lines = [f"Device: {device}. Median over rounds; ratio = median of the per-round "
           f"loop / bare (target >= {TARGET}).", "",
           "| size | batch | devices | rounds | bare steps/s | loop steps/s | loop clips/s | ratio | "
           "rounds' range | target |", "|---|---:|---:|---:|---:|---:|---:|---:|---|---|"]
  for r in rows:
    lines.append(f"| {r['size']} | {r['batch']} | {r['devices']} | {r['rounds']} | "
                 f"{r['bare_steps_per_s']:.3f} | {r['loop_steps_per_s']:.3f} | "
                 f"{r['clips_per_s_loop']:.1f} | {r['ratio']:.3f} | "
                 f"{r['ratio_min']:.3f}-{r['ratio_max']:.3f} | "
                 f"{'met' if r['target_met'] else 'NOT met'} |")
  text = "\n".join(lines) + "\n"
  (out / "results.md").write_text(text)
  return text


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--sizes", default="quickstart,base8",
                 help="comma-separated: quickstart, baseN (ViT-B M2D at batch N)")
  p.add_argument("--steps", type=int, default=0, help="timed steps per round (0: per size)")
  p.add_argument("--warmup", type=int, default=loop.IN_FLIGHT + 1,
                 help="loop steps before timing starts (more than loop.IN_FLIGHT)")
  p.add_argument("--rounds", type=int, default=7)
  p.add_argument("--log-every", type=int, default=10, help="the loop's log_every_steps")
  p.add_argument("--batch", type=int, default=0, help="override the size's batch")
  p.add_argument("--out", default=str(Path(__file__).parent / "results"))
  a = p.parse_args(argv)
  if a.warmup <= loop.IN_FLIGHT:
    # on_step(w) runs once step w - IN_FLIGHT has finished: a smaller warmup times the loop's
    # first execution of its freshly compiled step (buffer allocation, page faults), which the
    # bare side excludes (measured: 0.74x at ViT-B batch 8 with --warmup 2).
    p.error(f"--warmup must be more than loop.IN_FLIGHT = {loop.IN_FLIGHT}")
  console.setup_logging("warning")
  device = f"{jax.devices()[0].device_kind} x{jax.device_count()} ({jax.default_backend()})"
  print(f"device: {device}", flush=True)
  rows = []
  for size in a.sizes.split(","):
    steps = a.steps or (40 if size == "quickstart" else 10)
    rows.append(bench(size, steps, a.warmup, a.rounds, a.log_every, a.batch or None))
  print(write(rows, Path(a.out), device))
  return 0 if all(r["target_met"] for r in rows) else 1


if __name__ == "__main__":
  raise SystemExit(main())
