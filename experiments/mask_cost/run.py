"""Mask-sampling cost: every registered strategy, jitted on the default device, against yardsticks.

* The floor: DWM must read every value of the batch, so the cheapest thing a content-aware
  strategy can cost is one jitted pass over ``patches: [B, N, P]`` (a per-patch sum -> ``[B, N]``).
* The pieces of DWM, each jitted alone: the dispersion (MAD, variance), one exact-count
  selection, the hint swap at ``h = 0`` and ``h = 0.5``, and ``informed``'s scoring.
* The DWM authors' PyTorch ``random_weighted_mask_with_hint`` (``authors_dwm.py``, when torch is
  installed), same patches, same process, so "x faster than the authors" is a measured ratio.
* Host-side NumPy baselines, written here the way peers do it in their data loaders: MAE's
  per-sample argsort of uniform noise (``random``), and fairseq-style inverse block masking with a
  per-sample loop over block centres plus trim/fill (``inverse_block``).

Every strategy runs at every ``--hints`` value (traced, as in training) and DWM with every
``--metrics`` value. For each grid and batch size it reports the median time per batch after
warm-up (every call ends in ``block_until_ready``; all methods timed round-robin, each jitted
one right after an untimed call of itself), the throughput,
the ratio to the floor and to jitted ``random``, and the speedups over the authors' code and the
NumPy baselines; then one line per target with PASS/FAIL (see ``check_targets``). Writes
``results.csv``, ``results.md`` and ``mask_cost.png`` to ``--out``.

  python experiments/mask_cost/run.py                 # full: batches 256,2048; grids 5x38,8x64
  python experiments/mask_cost/run.py --small         # quick look
"""
from __future__ import annotations

import argparse
import csv
import importlib.util
import os
import platform
import sys
import time
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from dwm_jax import masking, patching
from dwm_jax.masking import dwm as dwm_lib
from dwm_jax.masking import hint as hint_lib
from dwm_jax.masking import informed as informed_lib
from dwm_jax.masking import ops

PATCH_VALUES = 256  # 16 x 16
FLOOR = "floor (1 read)"
NP_RANDOM = "numpy random"
NP_INVERSE_BLOCK = "numpy inverse_block"
PIECE_DISPERSION = "piece: dispersion[{}]"
PIECE_SELECTION = "piece: selection"
PIECE_SWAP = "piece: hint swap h={:g}"
PIECE_SWAP_SELECTION = "piece: the swap's selection h={:g}"
PIECE_NO_SWAP = "piece: dwm[mad] without swap"
PIECE_SGIM = "piece: sgim scores ({})"
FLOOR_TARGETS = {0.0: 2.5, 0.5: 3.0}   # hint -> dwm time / floor time must be <= this
AUTHORS_TARGET = 10.0                   # authors' time / dwm time must be >= this ...
AUTHORS_TARGET_BATCH = 256              # ... at this batch size
HINT_ZERO_TARGET = 0.03                 # dwm at traced h=0 <= (1 + this) x dwm with no swap
SWAP_SELECTIONS_TARGET = 1.0            # swap at h>0 <= this many selections
STRUCTURED_TARGET = 3.0                 # time / time_frequency / block <= this x random
STRUCTURED = ("time", "time_frequency", "block")
CSV_FIELDS = ("device", "grid", "num_patches", "batch", "method", "kind", "median_ms", "p10_ms",
              "p90_ms", "masks_per_s", "x_floor", "x_random", "speedup_vs_authors",
              "speedup_vs_numpy_random", "speedup_vs_numpy_inverse_block")


def torch_available() -> bool:
  return importlib.util.find_spec("torch") is not None


def strategy_label(name: str, hint: float, metric: str | None = None) -> str:
  return f"{name}[{metric}] h={hint:g}" if metric else f"{name} h={hint:g}"


def authors_label(metric: str, hint: float) -> str:
  return f"authors dwm[{metric}] h={hint:g}"


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

def time_interleaved(calls: dict[str, tuple[Callable[[int], Any], int]], warmup: int,
                     primed: frozenset[str] = frozenset()) -> dict[str, list[float]]:
  """Seconds per call for every ``name: (call, repeats)``, measured round-robin.

  ``warmup`` untimed calls of each first (compilation included). Round ``r`` times one call of
  every method that still has repeats left, so a change in machine load during the run hits all
  methods alike and their ratios stay meaningful. A call is slowed or sped up by what the call
  before it left in the caches: in a fixed order that favoured one of two methods compared (the
  same DWM, hint 0 traced or concrete: +5-9% in fixed order, -1.6% and -2.1% alone, on this
  CPU), and alternating the order made small pieces (the swap's selection on 200 KB of keys)
  swing by 1.4-1.9x between runs, by whether the call before was a large matmul. So the
  ``primed`` methods (the jitted ones) run once untimed right before each timed call: each is
  timed with its own inputs in cache, as in a train step where the sampler's input was just
  written. Odd rounds still run in reverse order.
  """
  for call, _ in calls.values():
    for i in range(warmup):
      call(i)
  times = {name: [] for name in calls}
  for r in range(max(n for _, n in calls.values())):
    order = list(calls.items())
    for name, (call, n) in (order[::-1] if r % 2 else order):
      if r < n:
        if name in primed:
          call(warmup + r)
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


def strategy_fn(name: str, grid: patching.Grid, ratio: float,
                options: dict[str, Any]) -> Callable[..., jnp.ndarray]:
  """Jitted ``(key, patches, hint, features) -> bool [B, N]``; ``hint`` traced as in training."""
  needs_features = "features" in masking.get(name).defaults

  def fn(key, patches, hint, features):
    opts = {"features": features, **options} if needs_features else dict(options)
    return masking.sample(name, key, patches, grid=grid, ratio=ratio, hint=hint, **opts)

  return jax.jit(fn)


def check_count(method: str, mask: Any, k: int) -> None:
  counts = np.asarray(mask).sum(axis=-1)
  if not np.all(counts == k):  # timing a wrong mask would be meaningless
    raise RuntimeError(f"{method} masked {sorted(set(counts.tolist()))} patches, expected {k}")


# --------------------------------------------------------------------------- the run

def bench_config(grid: patching.Grid, batch: int, strategies: Sequence[str], *, ratio: float,
                 hints: Sequence[float], metrics: Sequence[str], pieces: bool, authors: bool,
                 repeats: int, warmup: int, host_repeats: int, feature_dim: int, dtype: str,
                 seed: int, log: Callable[[str], None]) -> list[dict[str, Any]]:
  """Times the floor, the pieces, every (strategy, hint) and the host baselines at one point."""
  n = grid.num_patches
  k = patching.num_masked(n, ratio)
  key = jax.random.key(seed)
  patches = jax.random.normal(key, (batch, n, PATCH_VALUES), jnp.float32).astype(dtype)
  patches = jax.block_until_ready(patches)
  keys = list(jax.random.split(jax.random.fold_in(key, 1), warmup + max(repeats, host_repeats)))
  features = None
  if any("features" in masking.get(s).defaults for s in strategies):
    features = jax.block_until_ready(make_features(patches, feature_dim, seed + 1))

  kinds, calls = {}, {}

  def add(method, kind, call, n_calls):
    kinds[method] = kind
    calls[method] = (call, n_calls)

  floor = jax.jit(lambda p: jnp.sum(p, axis=-1))
  add(FLOOR, "floor", lambda i: floor(patches).block_until_ready(), repeats)

  if pieces:
    for metric in metrics:
      disp = jax.jit(lambda p, metric=metric: dwm_lib.dispersion_sums(p, metric))
      add(PIECE_DISPERSION.format(metric), "piece",
          lambda i, disp=disp: disp(patches).block_until_ready(), repeats)
    scores = jax.random.normal(jax.random.fold_in(key, 2), (batch, n), jnp.float32)
    select = jax.jit(lambda s: ops.top_k_mask(s, k))
    check_count(PIECE_SELECTION, select(scores), k)
    add(PIECE_SELECTION, "piece", lambda i: select(scores).block_until_ready(), repeats)
    base = ops.top_k_mask(scores, k)
    swap = jax.jit(lambda key, m, h: masking.hint_swap(key, m, k, h))
    for hint in sorted({0.0, *hints} - {1.0}):
      h = jnp.float32(hint)
      check_count(PIECE_SWAP.format(hint), swap(keys[0], base, h), k)
      add(PIECE_SWAP.format(hint), "piece",
          lambda i, h=h: swap(keys[i], base, h).block_until_ready(), repeats)
      n_swap = int(hint_lib.num_hinted(k, hint))
      if n_swap:
        # The swap without its noise draw: its one selection on given random keys, swapping
        # the expected number of patches (n - E[j], j hypergeometric as in hint.py).
        moved = round(n_swap - n_swap * n_swap / (n - k + n_swap))
        split = jax.jit(lambda bits, m, moved=moved: ops.split_top_k_keys(
            bits, m, k - moved, moved, group_size=k))
        bits = ops.random_bits(jax.random.fold_in(key, 3), (batch, n))
        check_count(PIECE_SWAP_SELECTION.format(hint), split(bits, base), k)
        add(PIECE_SWAP_SELECTION.format(hint), "piece",
            lambda i, split=split, bits=bits: split(bits, base).block_until_ready(), repeats)
    if features is not None:
      for label, fn in (("power", informed_lib.sgim_scores),
                        ("eigh", lambda f: eigh_scores(f))):
        jf = jax.jit(fn)
        add(PIECE_SGIM.format(label), "piece",
            lambda i, jf=jf: jf(features).block_until_ready(), repeats)

  for name in strategies:
    variants = [{"metric": m} for m in metrics] if name == "dwm" else [{}]
    for options in variants:
      if pieces and name == "dwm" and options["metric"] == "mad":
        # DWM with a concrete hint of 0: the swap is not traced at all (the "costs nothing"
        # line), timed next to the same DWM with the hint traced.
        no_swap = jax.jit(lambda key, p: masking.sample("dwm", key, p, grid=grid, ratio=ratio,
                                                        hint=0.0, metric="mad"))
        check_count(PIECE_NO_SWAP, no_swap(keys[0], patches), k)
        add(PIECE_NO_SWAP, "piece", lambda i: no_swap(keys[i], patches).block_until_ready(),
            repeats)
      fn = strategy_fn(name, grid, ratio, options)
      for hint in hints:
        method = strategy_label(name, hint, options.get("metric"))
        h = jnp.float32(hint)
        check_count(method, fn(keys[0], patches, h, features), k)
        add(method, "jit", lambda i, fn=fn, h=h: fn(keys[i], patches, h, features)
            .block_until_ready(), repeats)

  if authors and "dwm" in strategies:
    import torch  # pylint: disable=import-outside-toplevel
    from authors_dwm import authors_dwm, ids_to_mask  # pylint: disable=import-outside-toplevel
    torch.manual_seed(seed)
    tp = torch.from_numpy(np.array(patches, np.float32))
    for metric in metrics:
      for hint in hints:
        method = authors_label(metric, hint)
        ids, keep = authors_dwm(tp, ratio, hint, metric)
        check_count(method, ids_to_mask(ids, keep).numpy(), k)
        add(method, "torch", lambda i, metric=metric, hint=hint: authors_dwm(tp, ratio, hint,
                                                                          metric), host_repeats)

  rng = np.random.default_rng(seed)
  for method, call in ((NP_RANDOM, lambda i: numpy_random(rng, batch, n, k)),
                       (NP_INVERSE_BLOCK, lambda i: numpy_inverse_block(rng, batch, grid, k))):
    check_count(method, call(0), k)
    add(method, "numpy", call, host_repeats)

  rows = []
  primed = frozenset(m for m, kind in kinds.items() if kind in ("floor", "piece", "jit"))
  for method, times in time_interleaved(calls, warmup, primed).items():
    row = {"grid": f"{grid.freq}x{grid.time}", "num_patches": n, "batch": batch,
           "method": method, "kind": kinds[method], **summarize(times)}
    row["masks_per_s"] = batch / (row["median_ms"] * 1e-3)
    rows.append(row)
    log(f"  {grid.freq}x{grid.time} B={batch:<5d} {method:<30s} {row['median_ms']:10.3f} ms"
        f"  {row['masks_per_s']:14,.0f} masks/s")
  add_ratios(rows)
  return rows


def eigh_scores(features: jnp.ndarray) -> jnp.ndarray:
  """``sgim_scores`` with the principal direction from ``eigh``, for comparison only."""
  x = informed_lib.l2_normalize(features.astype(jnp.float32))
  proj = jnp.einsum("bnd,bd->bn", x, informed_lib.principal_direction_eigh(x))
  side = (proj > jnp.mean(proj, axis=1, keepdims=True)).astype(x.dtype)[..., None]
  c1 = jnp.sum(x * side, axis=1) / (jnp.sum(side, axis=1) + informed_lib.COUNT_EPS)
  c2 = jnp.sum(x * (1 - side), axis=1) / (jnp.sum(1 - side, axis=1) + informed_lib.COUNT_EPS)
  centres = informed_lib.l2_normalize(jnp.stack([c1, c2], axis=1))
  return jnp.max(jnp.einsum("bnd,bcd->bnc", x, centres), axis=-1)


def add_ratios(rows: Sequence[dict[str, Any]]) -> None:
  """Per-point ratios: to the floor, to ``random`` at the same hint, speedups over baselines."""
  by = {r["method"]: r["median_ms"] for r in rows}
  nan = float("nan")
  for r in rows:
    method = r["method"]
    hint = method.rsplit(" h=", 1)[1] if " h=" in method else None
    r["x_floor"] = r["median_ms"] / by[FLOOR]
    rand = by.get(f"random h={hint}", by.get("random h=0"))
    r["x_random"] = r["median_ms"] / rand if rand else nan
    authors = None
    if method.startswith("dwm[") and hint is not None:
      metric = method[4:method.index("]")]
      authors = by.get(authors_label(metric, float(hint)))
    r["speedup_vs_authors"] = authors / r["median_ms"] if authors else nan
    r["speedup_vs_numpy_random"] = by[NP_RANDOM] / r["median_ms"]
    r["speedup_vs_numpy_inverse_block"] = by[NP_INVERSE_BLOCK] / r["median_ms"]


def _number(value: Any) -> float:
  return float("nan") if value is None or value == "" else float(value)


def check_targets(rows: Sequence[dict[str, Any]]) -> list[tuple[str, bool]]:
  """(description, passed) for every target measurement in ``rows`` (issue 15's targets)."""
  checks = []
  points = {}
  for r in rows:
    # Rows read back from results.csv (e.g. by the colab notebook) hold strings; "" = n/a.
    r = {**r, **{c: _number(r.get(c)) for c in ("median_ms", "x_floor", "x_random",
                                                  "speedup_vs_authors")},
         "batch": int(r["batch"])}
    points.setdefault((r["grid"], r["batch"]), {})[r["method"]] = r
  for (grid, batch), by in points.items():
    at = f"[{grid}, B={batch}]"
    for method, r in by.items():
      if not method.startswith("dwm["):
        continue
      hint = float(method.rsplit(" h=", 1)[1])
      if hint in FLOOR_TARGETS:
        limit = FLOOR_TARGETS[hint]
        checks.append((f"{method} <= {limit:g}x floor {at}: {r['x_floor']:.2f}x",
                       r["x_floor"] <= limit))
      if batch == AUTHORS_TARGET_BATCH and np.isfinite(r["speedup_vs_authors"]):
        checks.append((f"{method} >= {AUTHORS_TARGET:g}x faster than the authors' torch DWM "
                       f"{at}: {r['speedup_vs_authors']:.1f}x ({r['median_ms']:.2f} ms)",
                       r["speedup_vs_authors"] >= AUTHORS_TARGET))
    no_swap, select = by.get(PIECE_NO_SWAP), by.get(PIECE_SELECTION)
    sample0 = by.get(strategy_label("dwm", 0.0, "mad"))
    if no_swap and sample0:
      extra = sample0["median_ms"] / no_swap["median_ms"] - 1.0
      checks.append((f"hint swap at h=0 costs nothing (dwm[mad] h=0 traced <= "
                     f"{1 + HINT_ZERO_TARGET:g}x dwm[mad] without swap) {at}: "
                     f"{sample0['median_ms']:.3f} vs {no_swap['median_ms']:.3f} ms "
                     f"({extra:+.1%})", extra <= HINT_ZERO_TARGET))
    for method, r in by.items():
      if method.startswith("piece: hint swap") and method != PIECE_SWAP.format(0.0) and select:
        sel = r["median_ms"] / select["median_ms"]
        # For information, not the check: what the swap adds to DWM, a difference of two
        # medians (noisier than either).
        hint = method.rsplit("h=", 1)[1]
        hinted = by.get(strategy_label("dwm", float(hint), "mad"))
        inside = ""
        if hinted and sample0:
          extra_ms = hinted["median_ms"] - sample0["median_ms"]
          inside = (f" (in dwm[mad], h={hint} minus h=0: "
                    f"{extra_ms:+.3f} ms = {extra_ms / select['median_ms']:.2f} selections)")
        checks.append((f"{method[7:]} <= {SWAP_SELECTIONS_TARGET:g} selection {at}: "
                       f"{r['median_ms']:.3f} ms = {sel:.2f} selections{inside}",
                       sel <= SWAP_SELECTIONS_TARGET))
    for method, r in by.items():
      if method.split(" h=")[0] in STRUCTURED and np.isfinite(r["x_random"]):
        checks.append((f"{method} <= {STRUCTURED_TARGET:g}x random {at}: "
                       f"{r['x_random']:.2f}x", r["x_random"] <= STRUCTURED_TARGET))
  return checks


def fmt(v: Any) -> str:
  if isinstance(v, float):
    if not np.isfinite(v):
      return "-"
    return f"{v:,.0f}" if v >= 100 else f"{v:.3g}" if v < 10 else f"{v:.1f}"
  return str(v)


def write_csv(path: str, rows: Sequence[dict[str, Any]]) -> None:
  with open(path, "w", newline="") as f:
    w = csv.DictWriter(f, fieldnames=CSV_FIELDS)
    w.writeheader()
    for r in rows:
      w.writerow({k: ("" if isinstance(r[k], float) and not np.isfinite(r[k]) else
                      f"{r[k]:.6g}" if isinstance(r[k], float) else r[k]) for k in CSV_FIELDS})


MD_COLUMNS = (("grid", "grid"), ("batch", "batch"), ("method", "method"),
              ("median_ms", "median ms/batch"), ("masks_per_s", "masks/s"),
              ("x_floor", "x floor"), ("x_random", "x random"),
              ("speedup_vs_authors", "speedup vs authors"),
              ("speedup_vs_numpy_random", "speedup vs NumPy random"),
              ("speedup_vs_numpy_inverse_block", "speedup vs NumPy inverse_block"))


def write_markdown(path: str, rows: Sequence[dict[str, Any]], device: str,
                   checks: Sequence[tuple[str, bool]], settings: str) -> None:
  lines = [f"# Mask sampling cost on {device}", "", settings, "",
           "| " + " | ".join(h for _, h in MD_COLUMNS) + " |", "|" + "---|" * len(MD_COLUMNS)]
  lines += ["| " + " | ".join(fmt(r[c]) for c, _ in MD_COLUMNS) + " |" for r in rows]
  lines += ["", "## Targets", ""]
  lines += [f"- {'PASS' if ok else 'FAIL'}: {text}" for text, ok in checks]
  lines += ["", f"{sum(ok for _, ok in checks)} of {len(checks)} target checks met."]
  with open(path, "w") as f:
    f.write("\n".join(lines) + "\n")


KIND_COLOURS = {"floor": "black", "piece": "tab:gray", "jit": "tab:blue", "torch": "tab:red",
                "numpy": "tab:orange"}


def plot(path: str, rows: Sequence[dict[str, Any]], device: str) -> None:
  """Every row's time as a multiple of the floor, one panel per (grid, batch), log scale."""
  import matplotlib  # pylint: disable=import-outside-toplevel
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel

  points = list(dict.fromkeys((r["grid"], r["batch"]) for r in rows))
  methods = list(dict.fromkeys(r["method"] for r in rows))
  fig, axes = plt.subplots(1, len(points), figsize=(3.6 * len(points) + 2.2,
                                                     0.24 * len(methods) + 1.6),
                           squeeze=False, sharey=True)
  y = np.arange(len(methods))
  for ax, (grid, batch) in zip(axes[0], points):
    by = {r["method"]: r for r in rows if (r["grid"], r["batch"]) == (grid, batch)}
    vals = [by[m]["x_floor"] if m in by else np.nan for m in methods]
    colours = [KIND_COLOURS.get(by[m]["kind"], "tab:blue") if m in by else "w" for m in methods]
    ax.barh(y, vals, color=colours)
    for limit, style in ((1.0, "-"), (FLOOR_TARGETS[0.0], "--"), (FLOOR_TARGETS[0.5], ":")):
      ax.axvline(limit, color="k", ls=style, lw=0.8)
    ax.set_xscale("log")
    ax.set_title(f"grid {grid}, B={batch}\nfloor {by[FLOOR]['median_ms']:.2f} ms", fontsize=9)
    ax.set_xlabel("time / floor (1 read)")
    ax.grid(True, axis="x", which="both", alpha=0.3)
  axes[0, 0].set_yticks(y)
  axes[0, 0].set_yticklabels(methods, fontsize=7)
  axes[0, 0].invert_yaxis()
  fig.suptitle(f"Mask sampling cost as a multiple of one read of the batch; {device}; "
               f"dashed/dotted: DWM targets {FLOOR_TARGETS[0.0]:g}x (h=0) / "
               f"{FLOOR_TARGETS[0.5]:g}x (h=0.5)", fontsize=9)
  fig.tight_layout()
  fig.savefig(path, dpi=110, bbox_inches="tight")
  plt.close(fig)


def parse_floats(text: str) -> list[float]:
  try:
    return [float(v) for v in text.split(",")]
  except ValueError as e:
    raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from e


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
                 help="quick look: batch 256, grid 5x38, 5 repeats")
  p.add_argument("--batch-sizes", type=parse_ints, default=None, help="e.g. 256,2048")
  p.add_argument("--grids", type=parse_grids, default=None, help="e.g. 5x38,8x64")
  p.add_argument("--repeats", type=int, default=None, help="timed calls per jitted measurement")
  p.add_argument("--host-repeats", type=int, default=None,
                 help="timed calls per host measurement (authors' torch, NumPy)")
  p.add_argument("--warmup", type=int, default=3, help="untimed calls first (incl. compile)")
  p.add_argument("--strategies", default="", help="comma-separated; default: all registered")
  p.add_argument("--ratio", type=float, default=0.7)
  p.add_argument("--hints", type=parse_floats, default=[0.0, 0.5],
                 help="hint values, each passed traced as in training (default 0,0.5)")
  p.add_argument("--metrics", default="mad,variance", help="DWM dispersion metrics to time")
  p.add_argument("--no-pieces", action="store_true", help="skip the DWM pieces")
  p.add_argument("--no-authors", action="store_true",
                 help="skip the authors' PyTorch DWM (skipped anyway when torch is missing)")
  p.add_argument("--feature-dim", type=int, default=64,
                 help="D of the stand-in features given to 'informed'")
  p.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"),
                 help="dtype of the patches")
  p.add_argument("--seed", type=int, default=0)
  a = p.parse_args(argv)

  batches = a.batch_sizes or ([256] if a.small else [256, 2048])
  grids = a.grids or ([patching.Grid(5, 38)] if a.small else [patching.Grid(5, 38),
                                                               patching.Grid(8, 64)])
  repeats = a.repeats or (5 if a.small else 20)
  host_repeats = a.host_repeats or (3 if a.small else 10)
  strategies = [s for s in a.strategies.split(",") if s] or masking.names()
  for s in strategies:
    masking.get(s)  # unknown names fail here, listing the valid ones
  metrics = [m for m in a.metrics.split(",") if m]
  for m in metrics:
    if m not in dwm_lib.METRICS:
      p.error(f"--metrics: unknown metric {m!r}; valid: {', '.join(dwm_lib.METRICS)}")
  authors = not a.no_authors and torch_available()
  if authors:
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

  device = device_name()
  log = lambda s: print(s, flush=True)  # noqa: E731
  settings = (f"jax {jax.__version__}; ratio {a.ratio}, hints {', '.join(f'{h:g}' for h in a.hints)}"
              f" (traced), {a.dtype} patches [B, N, {PATCH_VALUES}] of N(0, 1) noise, median of "
              f"{repeats} calls after {a.warmup} warm-up (host: median of {host_repeats}), all "
              f"methods timed round-robin (jitted ones each after an untimed call of itself); "
              f"'informed' gets stand-in features (random projection "
              f"to D={a.feature_dim}; the encoder pass is not timed); authors' torch DWM: "
              f"{'timed (torch ' + torch_version() + ')' if authors else 'not timed'}.")
  log(f"device: {device}")
  log(settings)
  load_before = load_average()
  rows = []
  for g in grids:
    for b in batches:
      rows += bench_config(g, b, strategies, ratio=a.ratio, hints=a.hints, metrics=metrics,
                           pieces=not a.no_pieces, authors=authors, repeats=repeats,
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
    log("  (no dwm rows, pieces or structured strategies measured: nothing to check)")
  log(f"  {sum(ok for _, ok in checks)} of {len(checks)} met")
  log(f"\nwrote {a.out}/results.csv, results.md, mask_cost.png")
  return 0


def torch_version() -> str:
  import torch  # pylint: disable=import-outside-toplevel
  return torch.__version__


if __name__ == "__main__":
  sys.exit(main())
