"""Mask-sampling cost: every registered strategy, jitted on the default device, against two yardsticks.

* The floor: DWM must read every value of the batch, so the cheapest thing a content-aware
  strategy can cost is one jitted pass over ``patches: [B, N, P]`` (a per-patch sum -> ``[B, N]``).
* Host-side NumPy baselines, written here the way peers do it in their data loaders: MAE's
  per-sample argsort of uniform noise (``random``), and fairseq-style inverse block masking with a
  per-sample loop over block centres plus trim/fill (``inverse_block``).

For each grid and batch size it reports the median time per batch after warm-up (every call ends
in ``block_until_ready``), the throughput (masks/s), the ratio to jitted ``random``, the ratio to
the floor, and the speedup over each NumPy baseline; then it checks the targets
(``dwm <= 5x floor`` everywhere; every jitted strategy ``>= 10x`` faster than both NumPy
baselines at batch 256) and prints PASS/FAIL. Writes ``results.csv``, ``results.md`` and
``mask_cost.png`` to ``--out``.

  python experiments/mask_cost/run.py                 # full: batches 32,256,2048; grids 5x38,8x64
  python experiments/mask_cost/run.py --small         # quick look
"""
from __future__ import annotations

import argparse
import csv
import os
import platform
import statistics
import sys
import time
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from dwm_jax import masking, patching

PATCH_VALUES = 256  # 16 x 16
FLOOR = "floor (1 read)"
NP_RANDOM = "numpy random"
NP_INVERSE_BLOCK = "numpy inverse_block"
FLOOR_TARGET = 5.0     # dwm time / floor time must be <= this
HOST_TARGET = 10.0     # numpy baseline time / jitted strategy time must be >= this
HOST_TARGET_BATCH = 256
CSV_FIELDS = ("device", "grid", "num_patches", "batch", "method", "kind", "median_ms", "p10_ms",
              "p90_ms", "masks_per_s", "x_random", "x_floor", "speedup_vs_numpy_random",
              "speedup_vs_numpy_inverse_block")


# --------------------------------------------------------------------------- host-side baselines

def numpy_random(rng: np.random.Generator, batch: int, num_patches: int,
                 num_masked: int) -> np.ndarray:
  """MAE ``random_masking`` per sample on the host: argsort of uniform noise. ``bool [B, N]``."""
  len_keep = num_patches - num_masked
  out = np.empty((batch, num_patches), bool)
  for b in range(batch):
    ids_shuffle = np.argsort(rng.random(num_patches))
    ids_restore = np.argsort(ids_shuffle)
    m = np.ones(num_patches, bool)
    m[:len_keep] = False
    out[b] = m[ids_restore]
  return out


def numpy_inverse_block(rng: np.random.Generator, batch: int, grid: patching.Grid,
                        num_masked: int, block_size: int = 5, adjust: float = 0.07) -> np.ndarray:
  """fairseq ``compute_block_mask_2d`` (inverse) per sample, looping over block centres.

  Keep-probability ``p = 1 - ratio``; ``int(N * (p + adjust) / L**2)`` centres drawn with
  replacement; each sets a clamped ``L x L`` block of kept cells; trim/fill uniformly to exactly
  ``N - K`` kept; invert. ``bool [B, N]``, True = masked.
  """
  fp, tp = grid
  n = fp * tp
  n_keep = n - num_masked
  n_centres = int(n * ((n_keep / n + adjust) / block_size**2))
  off = block_size // 2
  out = np.empty((batch, n), bool)
  for b in range(batch):
    keep = np.zeros((fp, tp), bool)
    for c in rng.integers(0, n, n_centres):
      r, t = divmod(int(c), tp)
      keep[max(r - off, 0):min(r - off + block_size, fp),
           max(t - off, 0):min(t - off + block_size, tp)] = True
    keep = keep.reshape(n)
    count = int(keep.sum())
    if count < n_keep:
      keep[rng.choice(np.flatnonzero(~keep), n_keep - count, replace=False)] = True
    elif count > n_keep:
      keep[rng.choice(np.flatnonzero(keep), count - n_keep, replace=False)] = False
    out[b] = ~keep
  return out


# --------------------------------------------------------------------------- timing

def time_interleaved(calls: dict[str, tuple[Callable[[int], Any], int]], warmup: int
                     ) -> dict[str, list[float]]:
  """Seconds per call for every ``name: (call, repeats)``, measured round-robin.

  ``warmup`` untimed calls of each first (compilation included). Round ``r`` times one call of
  every method that still has repeats left, so a change in machine load during the run hits all
  methods alike and their ratios stay meaningful.
  """
  for call, _ in calls.values():
    for i in range(warmup):
      call(i)
  times = {name: [] for name in calls}
  for r in range(max(n for _, n in calls.values())):
    for name, (call, n) in calls.items():
      if r < n:
        t0 = time.perf_counter()
        call(warmup + r)
        times[name].append(time.perf_counter() - t0)
  return times


def summarize(times: Sequence[float]) -> dict[str, float]:
  t = np.asarray(times) * 1e3
  return {"median_ms": float(np.median(t)), "p10_ms": float(np.percentile(t, 10)),
          "p90_ms": float(np.percentile(t, 90))}


def device_name() -> str:
  d = jax.devices()[0]
  kind = getattr(d, "device_kind", "") or ""
  if d.platform == "cpu":
    cpu = platform.processor() or platform.machine()
    try:
      with open("/proc/cpuinfo") as f:
        cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
      pass
    return f"cpu ({cpu}, {os.cpu_count()} cores)"
  return f"{d.platform} ({kind})"


def load_average() -> str:
  try:
    return f"{os.getloadavg()[0]:.1f}"
  except (AttributeError, OSError):
    return "n/a"


def make_features(patches: jnp.ndarray, dim: int, seed: int) -> jnp.ndarray:
  """Stand-in encoder features for ``informed``: a fixed random projection ``[B, N, P] -> [B, N, D]``.

  The real feature pass (the encoder over all patches) is not part of the mask cost measured here.
  """
  w = jax.random.normal(jax.random.key(seed), (patches.shape[-1], dim), jnp.float32)
  return jnp.einsum("bnp,pd->bnd", patches.astype(jnp.float32), w / np.sqrt(patches.shape[-1]))


def strategy_fn(name: str, grid: patching.Grid, ratio: float) -> Callable[..., jnp.ndarray]:
  """Jitted ``(key, patches, hint, extra) -> bool [B, N]``; ``hint`` is traced as in training."""
  needs_features = "features" in masking.get(name).defaults

  def fn(key, patches, hint, features):
    opts = {"features": features} if needs_features else {}
    return masking.sample(name, key, patches, grid=grid, ratio=ratio, hint=hint, **opts)

  return jax.jit(fn)


# --------------------------------------------------------------------------- the run

def bench_config(grid: patching.Grid, batch: int, strategies: Sequence[str], *, ratio: float,
                 hint: float, repeats: int, warmup: int, host_repeats: int, feature_dim: int,
                 dtype: str, seed: int, log: Callable[[str], None]) -> list[dict[str, Any]]:
  """Times the floor, every jitted strategy and both NumPy baselines at one (grid, batch)."""
  n = grid.num_patches
  k = patching.num_masked(n, ratio)
  key = jax.random.key(seed)
  patches = jax.random.normal(key, (batch, n, PATCH_VALUES), jnp.float32).astype(dtype)
  patches = jax.block_until_ready(patches)
  keys = list(jax.random.split(jax.random.fold_in(key, 1), warmup + max(repeats, host_repeats)))
  hint_arr = jnp.asarray(hint, jnp.float32)
  features = None
  if any("features" in masking.get(s).defaults for s in strategies):
    features = jax.block_until_ready(make_features(patches, feature_dim, seed + 1))

  kinds, calls = {}, {}
  floor = jax.jit(lambda p: jnp.sum(p, axis=-1))
  kinds[FLOOR] = "floor"
  calls[FLOOR] = (lambda i: floor(patches).block_until_ready(), repeats)

  for name in strategies:
    fn = strategy_fn(name, grid, ratio)
    counts = np.asarray(jnp.sum(fn(keys[0], patches, hint_arr, features), axis=-1))
    if not np.all(counts == k):  # timing a wrong mask would be meaningless
      raise RuntimeError(f"{name} masked {sorted(set(counts.tolist()))} patches, expected {k}")
    kinds[name] = "jit"
    calls[name] = (lambda i, fn=fn: fn(keys[i], patches, hint_arr, features).block_until_ready(),
                   repeats)

  rng = np.random.default_rng(seed)
  host = {NP_RANDOM: lambda i: numpy_random(rng, batch, n, k),
          NP_INVERSE_BLOCK: lambda i: numpy_inverse_block(rng, batch, grid, k)}
  for method, call in host.items():
    counts = call(0).sum(axis=-1)
    if not np.all(counts == k):
      raise RuntimeError(f"{method} masked {sorted(set(counts.tolist()))}, expected {k}")
    kinds[method] = "numpy"
    calls[method] = (call, host_repeats)

  rows = []
  for method, times in time_interleaved(calls, warmup).items():
    row = {"grid": f"{grid.freq}x{grid.time}", "num_patches": n, "batch": batch,
           "method": method, "kind": kinds[method], **summarize(times)}
    row["masks_per_s"] = batch / (row["median_ms"] * 1e-3)
    rows.append(row)
    log(f"  {grid.freq}x{grid.time} B={batch:<5d} {method:<22s} {row['median_ms']:10.3f} ms"
        f"  {row['masks_per_s']:14,.0f} masks/s")

  by = {r["method"]: r["median_ms"] for r in rows}
  for r in rows:
    r["x_random"] = r["median_ms"] / by["random"] if "random" in by else float("nan")
    r["x_floor"] = r["median_ms"] / by[FLOOR]
    r["speedup_vs_numpy_random"] = by[NP_RANDOM] / r["median_ms"]
    r["speedup_vs_numpy_inverse_block"] = by[NP_INVERSE_BLOCK] / r["median_ms"]
  return rows


def check_targets(rows: Sequence[dict[str, Any]]) -> list[tuple[str, bool]]:
  """(description, passed) for every target measurement in ``rows``."""
  checks = []
  for r in rows:
    if r["method"] == "dwm":
      checks.append((f"dwm <= {FLOOR_TARGET:g}x floor  [{r['grid']}, B={r['batch']}]: "
                     f"{r['x_floor']:.2f}x", r["x_floor"] <= FLOOR_TARGET))
    if r["kind"] == "jit" and r["batch"] == HOST_TARGET_BATCH:
      worst = min(r["speedup_vs_numpy_random"], r["speedup_vs_numpy_inverse_block"])
      checks.append((f"{r['method']} >= {HOST_TARGET:g}x faster than NumPy baselines "
                     f"[{r['grid']}, B={r['batch']}]: {r['speedup_vs_numpy_random']:.1f}x vs "
                     f"random, {r['speedup_vs_numpy_inverse_block']:.1f}x vs inverse_block",
                     worst >= HOST_TARGET))
  return checks


def fmt(v: Any) -> str:
  if isinstance(v, float):
    return f"{v:,.0f}" if v >= 100 else f"{v:.3g}" if v < 10 else f"{v:.1f}"
  return str(v)


def write_csv(path: str, rows: Sequence[dict[str, Any]]) -> None:
  with open(path, "w", newline="") as f:
    w = csv.DictWriter(f, fieldnames=CSV_FIELDS)
    w.writeheader()
    for r in rows:
      w.writerow({k: (f"{r[k]:.6g}" if isinstance(r[k], float) else r[k]) for k in CSV_FIELDS})


def write_markdown(path: str, rows: Sequence[dict[str, Any]], device: str,
                   checks: Sequence[tuple[str, bool]], settings: str) -> None:
  cols = ("grid", "batch", "method", "median_ms", "masks_per_s", "x_random", "x_floor",
          "speedup_vs_numpy_random", "speedup_vs_numpy_inverse_block")
  heads = ("grid", "batch", "method", "median ms/batch", "masks/s", "x random", "x floor",
           "speedup vs NumPy random", "speedup vs NumPy inverse_block")
  lines = [f"# Mask sampling cost on {device}", "", settings, "",
           "| " + " | ".join(heads) + " |", "|" + "---|" * len(heads)]
  lines += ["| " + " | ".join(fmt(r[c]) for c in cols) + " |" for r in rows]
  lines += ["", "## Targets", ""]
  lines += [f"- {'PASS' if ok else 'FAIL'}: {text}" for text, ok in checks]
  with open(path, "w") as f:
    f.write("\n".join(lines) + "\n")


def plot(path: str, rows: Sequence[dict[str, Any]], device: str) -> None:
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  grids = list(dict.fromkeys(r["grid"] for r in rows))
  methods = list(dict.fromkeys(r["method"] for r in rows))
  fig, axes = plt.subplots(1, len(grids), figsize=(5.5 * len(grids), 4.2), squeeze=False,
                           sharey=True)
  for ax, g in zip(axes[0], grids):
    for m in methods:
      pts = sorted((r["batch"], r["median_ms"], r["kind"]) for r in rows
                   if r["grid"] == g and r["method"] == m)
      if not pts:
        continue
      kind = pts[0][2]
      style = {"floor": dict(color="k", ls="--", lw=2), "numpy": dict(ls=":", marker="s"),
               "jit": dict(ls="-", marker="o", lw=3 if m == "dwm" else 1.5)}[kind]
      ax.plot([p[0] for p in pts], [p[1] for p in pts], label=m, **style)
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("batch size (masks per call)")
    ax.set_title(f"grid {g}")
    ax.grid(True, which="both", alpha=0.3)
  axes[0, 0].set_ylabel("median time per batch (ms)")
  axes[0, -1].legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.02, 1.0))
  fig.suptitle(f"Mask sampling cost, {device}", fontsize=10)
  fig.tight_layout()
  fig.savefig(path, dpi=110, bbox_inches="tight")
  plt.close(fig)


def parse_grids(text: str) -> list[patching.Grid]:
  grids = []
  for part in text.split(","):
    try:
      f, t = part.lower().split("x")
      grids.append(patching.as_grid((int(f), int(t))))
    except ValueError as e:
      raise argparse.ArgumentTypeError(f"grid {part!r}: expected FxT like 5x38 ({e})") from e
  return grids


def parse_ints(text: str) -> list[int]:
  try:
    values = [int(v) for v in text.split(",")]
  except ValueError as e:
    raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from e
  if any(v < 1 for v in values):
    raise argparse.ArgumentTypeError(f"values must be >= 1, got {text!r}")
  return values


def main(argv: Sequence[str] | None = None) -> int:
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                                "results"), help="output folder")
  p.add_argument("--small", action="store_true",
                 help="quick look: batches 32,256, grid 5x38, 5 repeats")
  p.add_argument("--batch-sizes", type=parse_ints, default=None, help="e.g. 32,256,2048")
  p.add_argument("--grids", type=parse_grids, default=None, help="e.g. 5x38,8x64")
  p.add_argument("--repeats", type=int, default=None, help="timed calls per jitted measurement")
  p.add_argument("--host-repeats", type=int, default=None, help="timed calls per NumPy baseline")
  p.add_argument("--warmup", type=int, default=3, help="untimed calls first (incl. compile)")
  p.add_argument("--strategies", default="", help="comma-separated; default: all registered")
  p.add_argument("--ratio", type=float, default=0.7)
  p.add_argument("--hint", type=float, default=0.0, help="passed as a traced value, as in training")
  p.add_argument("--feature-dim", type=int, default=768,
                 help="D of the stand-in features given to 'informed' (ViT-B width)")
  p.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"),
                 help="dtype of the patches")
  p.add_argument("--seed", type=int, default=0)
  a = p.parse_args(argv)

  batches = a.batch_sizes or ([32, 256] if a.small else [32, 256, 2048])
  grids = a.grids or ([patching.Grid(5, 38)] if a.small else [patching.Grid(5, 38),
                                                               patching.Grid(8, 64)])
  repeats = a.repeats or (5 if a.small else 20)
  host_repeats = a.host_repeats or (3 if a.small else 10)
  strategies = [s for s in a.strategies.split(",") if s] or masking.names()
  for s in strategies:
    masking.get(s)  # unknown names fail here, listing the valid ones

  device = device_name()
  log = lambda s: print(s, flush=True)  # noqa: E731
  settings = (f"jax {jax.__version__}; ratio {a.ratio}, hint {a.hint} (traced), "
              f"{a.dtype} patches [B, N, {PATCH_VALUES}] of N(0, 1) noise, median of {repeats} "
              f"calls after {a.warmup} warm-up (NumPy: median of {host_repeats}); 'informed' gets "
              f"stand-in features (random projection to D={a.feature_dim}; the encoder pass is "
              f"not timed).")
  log(f"device: {device}")
  log(settings)
  load_before = load_average()
  rows = []
  for g in grids:
    for b in batches:
      rows += bench_config(g, b, strategies, ratio=a.ratio, hint=a.hint, repeats=repeats,
                           warmup=a.warmup, host_repeats=host_repeats,
                           feature_dim=a.feature_dim, dtype=a.dtype, seed=a.seed, log=log)
  for r in rows:
    r["device"] = device
  checks = check_targets(rows)
  # Timings on a shared machine are only as good as its idleness: say how busy it was.
  settings += f" Load average (1 min) before/after: {load_before} / {load_average()}."

  os.makedirs(a.out, exist_ok=True)
  write_csv(os.path.join(a.out, "results.csv"), rows)
  write_markdown(os.path.join(a.out, "results.md"), rows, device, checks, settings)
  plot(os.path.join(a.out, "mask_cost.png"), rows, device)

  log(f"load average (1 min) before/after: {load_before} / {load_average()} "
      f"on {os.cpu_count()} cores")
  log("\ntargets:")
  for text, ok in checks:
    log(f"  {'PASS' if ok else 'FAIL'}: {text}")
  if not checks:
    log("  (no dwm rows and no batch 256 measured: nothing to check)")
  log(f"\nwrote {a.out}/results.csv, results.md, mask_cost.png")
  return 0


if __name__ == "__main__":
  sys.exit(main())
