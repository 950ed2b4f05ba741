"""Train-step cost per masking strategy and model size (issue 4's benchmark).

For each size (tiny, small, base) and strategy: median time of the jitted M2D train step with
the mask sampled inside it, clips/s, the share of the step spent sampling (vs the same step fed a
precomputed mask), the informed strategy's overhead as a ratio to random masking, and achieved
FLOP/s (XLA's cost analysis of the step) against a large matmul's FLOP/s measured in the same run.

  python experiments/step_cost/run.py            # tiny/small/base, every strategy
  python experiments/step_cost/run.py --small    # tiny only, 3 strategies, quick
Writes results.csv, results.md and step_time.png under --out.
"""
from __future__ import annotations

import argparse
import csv
import random
import statistics
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from dwm_jax import masking, patching, timing
from dwm_jax.config import base_config
from dwm_jax.train import mesh as mesh_lib, setup as setup_lib, state as state_lib
from dwm_jax.train import step as step_lib

CPU_BATCH = {"tiny": 8, "small": 4, "base": 2, "large": 2}  # global batch on CPU
ACCEL_BATCH = {"tiny": 256, "small": 256, "base": 128, "large": 64}


def config_for(size: str, strategy: str, batch: int, frames: int = 608):
  c = base_config()
  c.model.input_shape = (80, frames)
  c.model.name = size
  c.mask.name = strategy
  c.batch_size = batch
  return c


def bench_size(size: str, strategies: list[str], batch: int, steps: int,
               frames: int = 608) -> list[dict]:
  """Times every strategy's step and the precomputed-mask step in interleaved rounds.

  Round r times each variant once, in a shuffled order, so slow drifts of a busy or throttling
  machine hit all variants alike; the mask share is the median over rounds of the paired difference
  ``(t_strategy - t_precomputed) / t_strategy``, and ``extra_vs_random`` the same against the step
  that samples a random mask (the cost of a strategy beyond the cheapest in-step mask). The
  sampling alone (``sample_mask`` jitted on its own, same shapes) is timed as well: its share of
  the step is the precise figure when the paired difference is inside the step's noise.
  """
  n_dev = jax.local_device_count()
  mesh = mesh_lib.data_mesh()
  c = config_for(size, "random", batch, frames)
  c.total_steps, c.steps_per_epoch = 10_000, 100
  base_setup = setup_lib.build(c, batch)
  host_state = jax.device_get(jax.jit(lambda k: state_lib.create_train_state(base_setup, k))(
      jax.random.key(0)))
  x = np.random.default_rng(0).normal(size=(batch,) + tuple(c.model.input_shape))
  x = x.astype(np.float32)
  key = mesh_lib.put_replicated(jax.random.key(1), mesh)
  patches = patching.patchify(jnp.asarray(x), (16, 16))
  mask = masking.sample("random", jax.random.key(1), patches, grid=base_setup.grid,
                        ratio=base_setup.mask_ratio)

  def setup_for(strategy: str) -> setup_lib.RunSetup:
    cfg = config_for(size, strategy, batch, frames)
    cfg.total_steps, cfg.steps_per_epoch = 10_000, 100
    return setup_lib.build(cfg, batch)

  def step_fn(setup, precomputed: bool):
    fn = step_lib.jit_train_step(setup, mesh)
    batch_in = {"logmel": x, "mask": np.asarray(mask)} if precomputed else {"logmel": x}
    batch_in = mesh_lib.put_batch(batch_in, mesh)
    holder = [mesh_lib.put_replicated(host_state, mesh)]

    def one():
      holder[0], m, _ = fn(holder[0], batch_in, key)
      jax.block_until_ready(m["loss"])
    return one

  def mask_fn(setup):
    fn = jax.jit(setup.sample_mask)
    return lambda: jax.block_until_ready(fn(jax.random.key(1), patches, jnp.float32(0.5),
                                            host_state.params))

  # FLOPs of the whole step on the global batch (precomputed mask: the model compute alone).
  one_device = mesh_lib.data_mesh(jax.devices()[:1])
  single = step_lib.jit_train_step(base_setup, one_device)
  cost = single.lower(mesh_lib.put_replicated(host_state, one_device),
                      mesh_lib.put_batch({"logmel": x, "mask": np.asarray(mask)}, one_device),
                      mesh_lib.put_replicated(jax.random.key(1), one_device)).compile()
  cost = cost.cost_analysis()
  cost = cost[0] if isinstance(cost, list) else cost
  flops = float(cost.get("flops", float("nan")))

  fns = {"precomputed": step_fn(base_setup, True)}
  fns.update({s: step_fn(setup_for(s), False) for s in strategies})
  for fn in fns.values():
    fn()  # compile and warm up before any timed round
  times = {name: [] for name in fns}
  order, shuffler = list(fns), random.Random(0)
  for _ in range(steps):
    shuffler.shuffle(order)  # no variant always runs first (or right after the slowest one)
    for name in order:
      t = time.perf_counter()
      fns[name]()
      times[name].append(time.perf_counter() - t)
  t_pre = statistics.median(times["precomputed"])

  def paired(name: str, reference: str) -> float:
    return statistics.median((a - b) / a for a, b in zip(times[name], times[reference]))

  rows = []
  for s in strategies:
    t = statistics.median(times[s])
    share = paired(s, "precomputed")
    vs_random = paired(s, "random") if "random" in times else float("nan")
    t_mask = timing.median_seconds(mask_fn(setup_for(s)), steps)
    rows.append(dict(size=size, strategy=s, batch=batch, devices=n_dev, step_s=t,
                     precomputed_step_s=t_pre, clips_per_s=batch / t, mask_share=share,
                     extra_vs_random=vs_random,
                     mask_only_s=t_mask, mask_only_share=t_mask / t, rounds=steps,
                     step_flops=flops, flops_per_s=flops / t))
    print(f"{size:6s} {s:15s} step {t * 1e3:9.2f} ms  pre {t_pre * 1e3:9.2f} ms  "
          f"paired share {share:+.4f}  vs random {vs_random:+.4f}  "
          f"mask alone {t_mask * 1e3:8.3f} ms ({t_mask / t:.4%})", flush=True)
  return rows


def write(rows: list[dict], peak: float, out: Path, device: str) -> None:
  out.mkdir(parents=True, exist_ok=True)
  for r in rows:
    r["mfu"] = r["flops_per_s"] / peak
    base = [q for q in rows if q["size"] == r["size"] and q["strategy"] == "random"]
    r["vs_random"] = r["step_s"] / base[0]["step_s"] if base else float("nan")
  with open(out / "results.csv", "w", newline="") as f:
    w = csv.DictWriter(f, fieldnames=list(rows[0]))
    w.writeheader()
    w.writerows(rows)
  lines = [f"Device: {device}; matmul peak {peak / 1e9:.1f} GFLOP/s (float32).", "",
           "| size | strategy | batch | step ms | precomputed ms | clips/s | mask share (paired) | "
           "extra vs random (paired) | mask alone ms | mask alone share | x random | GFLOP/s | "
           "MFU |",
           "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
  for r in rows:
    lines.append(f"| {r['size']} | {r['strategy']} | {r['batch']} | {r['step_s'] * 1e3:.1f} | "
                 f"{r['precomputed_step_s'] * 1e3:.1f} | {r['clips_per_s']:.1f} | "
                 f"{r['mask_share'] * 100:+.1f}% | {r['extra_vs_random'] * 100:+.1f}% | "
                 f"{r['mask_only_s'] * 1e3:.3f} | "
                 f"{r['mask_only_share'] * 100:.3f}% | {r['vs_random']:.3f} | "
                 f"{r['flops_per_s'] / 1e9:.1f} | {r['mfu'] * 100:.0f}% |")
  (out / "results.md").write_text("\n".join(lines) + "\n")
  print("\n".join(lines))

  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  sizes = sorted({r["size"] for r in rows}, key=list(CPU_BATCH).index)
  strategies = list(dict.fromkeys(r["strategy"] for r in rows))
  fig, axes = plt.subplots(1, len(sizes), figsize=(4.5 * len(sizes), 3.5), squeeze=False)
  for ax, size in zip(axes[0], sizes):
    rs = [next(r for r in rows if r["size"] == size and r["strategy"] == s) for s in strategies]
    ax.bar(strategies, [r["step_s"] * 1e3 for r in rs])
    ax.axhline(rs[0]["precomputed_step_s"] * 1e3, color="k", ls="--", lw=1,
               label="precomputed mask")
    ax.set_title(f"{size} (batch {rs[0]['batch']})")
    ax.set_ylabel("train step, ms (median)")
    ax.tick_params(axis="x", rotation=60)
    ax.legend(fontsize=7)
  fig.tight_layout()
  fig.savefig(out / "step_time.png", dpi=120)


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--sizes", default="tiny,small,base")
  p.add_argument("--strategies", default=",".join(masking.names()))
  p.add_argument("--steps", type=int, default=5,
                 help="timed rounds (each times every strategy and the precomputed step once)")
  p.add_argument("--frames", type=int, default=608, help="input frames (multiple of 16)")
  p.add_argument("--batch", type=int, default=0, help="global batch (0: per-size default)")
  p.add_argument("--small", action="store_true", help="tiny only, random/dwm/informed, 3 steps")
  p.add_argument("--out", default=str(Path(__file__).parent / "results"))
  a = p.parse_args(argv)
  sizes, strategies, steps = a.sizes.split(","), a.strategies.split(","), a.steps
  if a.small:
    sizes, strategies, steps = ["tiny"], ["random", "dwm", "informed"], 3
  on_cpu = jax.default_backend() == "cpu"
  batches = CPU_BATCH if on_cpu else ACCEL_BATCH
  device = f"{jax.devices()[0].device_kind} x{jax.local_device_count()} ({jax.default_backend()})"
  peak = timing.matmul_flops_per_s(2048 if on_cpu else 8192, steps, chain=1)
  rows = []
  for size in sizes:
    batch = a.batch or batches[size]
    batch -= batch % jax.local_device_count()
    rows += bench_size(size, strategies, batch, steps, a.frames)
  write(rows, peak, Path(a.out), device)
  return 0


if __name__ == "__main__":
  raise SystemExit(main())
