"""Pretrain the same small model with every masking strategy, then linear-probe each encoder.

  python experiments/strategy_comparison/run.py                      # CPU default (quickstart size)
  python experiments/strategy_comparison/run.py --tiny               # seconds: the test-suite size
  python experiments/strategy_comparison/run.py --scale gpu          # a GPU host
  python experiments/strategy_comparison/run.py --data DIR --task DIR/labels.csv   # your data
  python experiments/strategy_comparison/run.py --seeds 0            # one pretraining seed

Per pretraining seed (``--seeds``, default 0,1,2: the config's ``seed``, i.e. initialization,
data order, crops and masks) and strategy (same config and steps; only ``mask.name`` /
``mask.options`` differ): one ``dwm_jax.main.train_and_evaluate`` run in
``OUT/runs/<strategy>/seed<S>``, then the linear probe of its encoder on the task suite
(synthetic event / pitch / timbre tasks on clips drawn with another seed, plus any ``--task``
CSVs). Baselines on the same suite: a random-init encoder of each seed and log-mel statistics.

Reported per strategy: mean ± std over pretraining seeds of each task's probe accuracy (itself a
mean over ``--probe-seeds``), and the difference to ``random`` masking paired by seed (same
initialization and data order), with its std and how many seeds it is positive for: an effect
smaller than that spread is noise. Outputs: ``OUT/results.{csv,md,json,png}`` and
``OUT/results_seeds.csv`` (one row per strategy and seed).

Mask-sampling share = median time of the jitted mask sampler on one global batch (for
``informed``: including its no-gradient encoder forward), at hint 0 (the strategy fully on),
divided by the steady-state wall time of a pretraining step (compilation excluded; data loading,
logging and checkpoint saves included), from the run's logged clips/s.
"""
from __future__ import annotations

import argparse
import csv
import json
import logging
import os
import shutil
import sys
import time

import numpy as np

# Run as a script from anywhere: the repository root on the path, like `pip install -e .`.
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
if ROOT not in sys.path:
  sys.path.insert(0, ROOT)

log = logging.getLogger("strategy_comparison")

# The paper's strategies, as ``dwm_jax.config.MASK_PRESETS`` names them.
STRATEGIES = ("random", "inverse_block", "dwm", "dwm_var", "dwm_topk", "informed")
LABELS = {"random": "random", "inverse_block": "inverse block", "dwm": "DWM (MAD)",
          "dwm_var": "DWM (variance)", "dwm_topk": "DWM top-k", "informed": "informed"}


def base_config(scale: str):
  """The shared pretraining config for ``scale`` in tiny | cpu | gpu."""
  from configs import quickstart
  c = quickstart.get_config()
  c.probe.after_pretrain = False  # probed here, on one shared task suite
  c.mask_png_every_steps = 0
  if scale == "tiny":  # the test suite's size: seconds per strategy
    c.model.input_shape = (80, 64)
    c.model.width, c.model.depth, c.model.heads, c.model.mlp_dim = 32, 1, 2, 64
    c.objective.predictor_depth, c.objective.predictor_dim, c.objective.predictor_heads = 1, 32, 2
    c.data.synthetic.num_clips, c.data.synthetic.seconds = 16, 0.64
    c.batch_size, c.total_steps, c.epochs = 8, 3, 1
    c.mask.hint.start_epoch = 0.0
    c.checkpoint.every_steps, c.log_every_steps = 3, 1
  elif scale == "gpu":  # ViT-S on full 6.08 s inputs, 100 epochs of 8192 clips
    c.model.name = "small"
    c.model.input_shape = (80, 608)
    c.model.depth = 12
    c.objective.predictor_depth, c.objective.predictor_dim, c.objective.predictor_heads = 4, 384, 6
    c.data.synthetic.num_clips, c.data.synthetic.seconds = 8192, 6.08
    c.data.num_workers = 8
    c.batch_size, c.epochs = 256, 100
    c.optim.base_lr = 3e-4
    c.optim.warmup_epochs = 10.0
    c.mask.hint.start_epoch = 20.0
    c.checkpoint.every_steps, c.log_every_steps = 1000, 100
  elif scale != "cpu":
    raise ValueError(f"unknown scale {scale!r}; valid: tiny, cpu, gpu")
  return c


PROBE_CLIPS = {"tiny": 30, "cpu": 1500, "gpu": 2000}


def use_folder(c, folder: str) -> None:
  """Pretrain on a prepared folder: ``files.csv`` of ``.npy`` log-mels, or audio files."""
  csv_path = os.path.join(folder, "files.csv")
  if os.path.isfile(csv_path):
    with open(csv_path, newline="") as f:
      first = next(csv.DictReader(f), {}).get("file_name", "")
    c.data.source = "npy" if first.endswith(".npy") else "audio"
    c.data.csv = csv_path
    stats = os.path.join(folder, "stats.json")
    if os.path.isfile(stats) and "stats" in c.data:
      c.data.stats = stats
  elif os.path.isdir(folder):
    c.data.source, c.data.root = "audio", folder
  else:
    raise FileNotFoundError(f"--data {folder!r} is not a folder")


def apply_overrides(c, items: list[str]) -> None:
  """``--set optim.base_lr=1e-3``: any config field, parsed as a Python literal when possible."""
  import ast
  for item in items:
    key, sep, value = item.partition("=")
    if not sep:
      raise ValueError(f"--set {item!r}: expected FIELD=VALUE")
    try:
      parsed = ast.literal_eval(value)
    except (ValueError, SyntaxError):
      parsed = value
    node = c
    *path, last = key.split(".")
    for p in path:
      node = node[p]
    if last not in node:
      raise ValueError(f"--set {key}: no such config field")
    node[last] = parsed


def strategy_config(base, strategy: str):
  from dwm_jax import config as config_lib
  c = base.copy_and_resolve_references()
  config_lib.apply_mask_preset(c, strategy)
  return c


def mask_seconds(config, workdir: str, repeats: int = 10) -> float:
  """Median seconds of one jitted mask sample on a global batch of the run's own data.

  ``informed`` also runs its no-gradient encoder forward, with the run's final parameters.
  """
  import jax
  import jax.numpy as jnp
  from dwm_jax import patching
  from dwm_jax.data import pipeline
  from dwm_jax.train import setup as setup_lib
  from dwm_jax.train.checkpoint import restore_encoder

  setup = setup_lib.build(config, pipeline.dataset_size(config.data))
  loader = pipeline.make_pretrain_loader(
      config.data, input_shape=setup.input_shape, global_batch_size=setup.batch_size,
      seed=int(config.seed))
  batch = next(iter(loader))
  patches = patching.patchify(jnp.asarray(batch["logmel"], jnp.float32), setup.patch_size)
  params = {"encoder": restore_encoder(workdir)[1]} if setup.wants_features else None
  fn = jax.jit(lambda k, p, prm: setup.sample_mask(k, p, 0.0, prm))
  key = jax.random.key(0)
  fn(key, patches, params).block_until_ready()  # compile
  times = []
  for i in range(repeats):
    t = time.perf_counter()
    fn(jax.random.fold_in(key, i), patches, params).block_until_ready()
    times.append(time.perf_counter() - t)
  return float(np.median(times))


def pretrain(config, workdir: str, reuse: bool) -> dict:
  """Runs (or reuses a finished) pretraining; returns its record with the wall time."""
  from dwm_jax import main as main_lib
  record_path = os.path.join(workdir, "comparison_run.json")
  if reuse and os.path.isfile(record_path):
    with open(record_path) as f:
      record = json.load(f)
    if record.get("config") == config.to_json_best_effort(sort_keys=True):
      log.info("reusing the finished run in %s", workdir)
      return record
  if os.path.isdir(workdir):  # an unfinished or different run: start over for honest timings
    shutil.rmtree(workdir)
  t = time.perf_counter()
  summary = main_lib.train_and_evaluate(config, workdir)
  record = {"pretrain_seconds": time.perf_counter() - t, "steps": int(summary["step"]),
            "train_seconds": float(summary["train_seconds"]),
            "final_loss": summary.get("final_loss"),
            "clips_per_sec": summary.get("clips_per_sec"), "batch_size": int(config.batch_size),
            "config": config.to_json_best_effort(sort_keys=True)}
  with open(record_path, "w") as f:
    json.dump(record, f, indent=2)
  return record


def load_suite(args, base) -> list:
  from dwm_jax.data.labeled import load_tasks, synthetic_tasks
  tasks = []
  if not args.no_synthetic_tasks:
    clips = args.probe_clips or PROBE_CLIPS[args.scale]
    # Another seed than the pretraining clips: the probe sees sounds the encoder never did.
    tasks += synthetic_tasks(clips, seed=int(base.data.synthetic.seed) + 1,
                             seconds=float(base.data.synthetic.seconds))
  tasks += load_tasks(args.task)
  if not tasks:
    raise ValueError("empty task suite: drop --no-synthetic-tasks or add --task CSVs")
  return tasks


def aggregate(rows: list[dict], task_names: list[str], reference: str = "random") -> list[dict]:
  """Per-seed rows -> one row per model: mean / std over seeds (ddof 1) of every task and the
  average, and the paired difference of the average to ``reference`` (same seed)."""
  models = list(dict.fromkeys(r["model"] for r in rows))
  by_seed = {(r["model"], r["seed"]): r for r in rows}
  ref_label = LABELS.get(reference, reference)
  out = []
  for model in models:
    mine = [r for r in rows if r["model"] == model]
    agg = {"model": model, "strategy": mine[0].get("strategy"), "seeds": len(mine)}
    for key in [*task_names, "average"]:
      vals = np.array([r[key + "_mean"] if key != "average" else r["average"] for r in mine])
      agg[f"{key}_mean" if key != "average" else "average"] = float(vals.mean())
      agg[f"{key}_std" if key != "average" else "average_std"] = _std(vals)
    paired = [r["average"] - by_seed[(ref_label, r["seed"])]["average"] for r in mine
              if (ref_label, r["seed"]) in by_seed and model != ref_label]
    if paired:
      d = np.array(paired)
      agg.update(vs_ref_mean=float(d.mean()), vs_ref_std=_std(d),
                 vs_ref_positive=int(np.sum(d > 0)), vs_ref_n=len(d))
    for key in ("pretrain_seconds", "sec_per_step", "mask_ms", "mask_share", "final_loss"):
      vals = [r[key] for r in mine if r.get(key) not in ("", None)]
      if vals:
        agg[key] = float(np.mean(vals))
    out.append(agg)
  return out


def _std(x: np.ndarray) -> float:
  return float(np.std(x, ddof=1)) if len(x) > 1 else 0.0


def write_outputs(out: str, rows: list[dict], task_names: list[str], meta: dict) -> list[dict]:
  """Per-seed ``rows`` -> results.csv / .md / .json / .png (aggregated over seeds)."""
  summary = aggregate(rows, task_names)
  seed_fields = (["model", "strategy", "seed"] + [f"{t}_mean" for t in task_names]
                 + [f"{t}_std" for t in task_names]
                 + ["average", "pretrain_seconds", "sec_per_step", "mask_ms", "mask_share",
                    "final_loss"])
  _write_csv(os.path.join(out, "results_seeds.csv"), seed_fields, rows)
  fields = (["model", "strategy", "seeds"] + [f"{t}_mean" for t in task_names]
            + [f"{t}_std" for t in task_names]
            + ["average", "average_std", "vs_ref_mean", "vs_ref_std", "vs_ref_positive",
               "vs_ref_n", "pretrain_seconds", "sec_per_step", "mask_ms", "mask_share",
               "final_loss"])
  _write_csv(os.path.join(out, "results.csv"), fields, summary)
  with open(os.path.join(out, "results.json"), "w") as f:
    json.dump({"meta": meta, "summary": summary, "rows": rows}, f, indent=2)

  def pct(mean, std):
    return f"{100 * mean:.1f} ± {100 * std:.1f}"

  def opt(v, fmt):
    return "" if v in ("", None) else fmt.format(v)

  seeds = sorted({r["seed"] for r in rows if r.get("seed") is not None})
  lines = [f"Setup: {meta['setup']}", "",
           f"Mean ± std over {len(seeds)} pretraining seed(s) {seeds} of the linear-probe test "
           "accuracy (%; each seed's figure is the mean over the probe seeds). *vs random*: the "
           "average minus random masking's, paired by seed: mean ± std [seeds where > 0].", "",
           "| model | " + " | ".join(task_names) + " | average | vs random | pretrain s | "
           "s/step | mask ms | mask share |",
           "|---|" + "---:|" * (len(task_names) + 6)]
  for r in summary:
    vs = (f"{100 * r['vs_ref_mean']:+.1f} ± {100 * r['vs_ref_std']:.1f} "
          f"[{r['vs_ref_positive']}/{r['vs_ref_n']}]" if "vs_ref_mean" in r else "")
    lines.append(f"| {r['model']} | " + " | ".join(pct(r[f'{t}_mean'], r[f'{t}_std'])
                                                  for t in task_names)
                 + f" | {pct(r['average'], r['average_std'])} | {vs} | "
                 f"{opt(r.get('pretrain_seconds'), '{:.0f}')} | "
                 f"{opt(r.get('sec_per_step'), '{:.3f}')} | {opt(r.get('mask_ms'), '{:.2f}')} | "
                 f"{opt(r.get('mask_share'), '{:.2%}')} |")
  by = {(r["model"], r["seed"]): r["average"] for r in rows}
  lines += ["", "Average per pretraining seed (%):", "",
            "| model | " + " | ".join(f"seed {s}" for s in seeds) + " |",
            "|---|" + "---:|" * len(seeds)]
  for r in summary:
    lines.append(f"| {r['model']} | " + " | ".join(
        opt(by.get((r["model"], s)) and 100 * by[(r["model"], s)], "{:.1f}") for s in seeds)
        + " |")
  table = "\n".join(lines) + "\n"
  with open(os.path.join(out, "results.md"), "w") as f:
    f.write(table)
  print(table)
  _plot(os.path.join(out, "results.png"), summary, rows, task_names)
  return summary


def _write_csv(path: str, fields: list[str], rows: list[dict]) -> None:
  with open(path, "w", newline="") as f:
    w = csv.DictWriter(f, fieldnames=fields, extrasaction="ignore")
    w.writeheader()
    for r in rows:
      w.writerow({k: r.get(k, "") for k in fields})


def _plot(path: str, summary: list[dict], rows: list[dict], task_names: list[str]) -> None:
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  cols = task_names + ["average"]
  fig, (ax, ax2) = plt.subplots(1, 2, figsize=(13, 4.5), gridspec_kw={"width_ratios": [3, 1.3]})
  width = 0.8 / len(summary)
  x = np.arange(len(cols))
  for i, r in enumerate(summary):
    vals = [100 * r[f"{t}_mean"] for t in task_names] + [100 * r["average"]]
    errs = [100 * r[f"{t}_std"] for t in task_names] + [100 * r["average_std"]]
    pos = x + (i - (len(summary) - 1) / 2) * width
    ax.bar(pos, vals, width, yerr=errs, label=r["model"], capsize=2)
    mine = [s for s in rows if s["model"] == r["model"]]  # one dot per pretraining seed
    for j, t in enumerate(cols):
      ys = [100 * (s["average"] if t == "average" else s[f"{t}_mean"]) for s in mine]
      ax.scatter([pos[j]] * len(ys), ys, s=6, color="k", zorder=3)
  ax.set_xticks(x, cols)
  ax.set_ylabel("linear-probe test accuracy (%), mean ± std over pretraining seeds")
  ax.legend(fontsize=8, ncol=2)
  ax.grid(axis="y", alpha=0.3)
  lo = min(100 * min(s["average"] for s in rows), *[100 * s[f"{t}_mean"] for s in rows
                                                     for t in task_names])
  ax.set_ylim(max(0.0, lo - 10), None)
  trained = [r for r in summary if r.get("sec_per_step")]
  ax2.barh([r["model"] for r in trained], [r["sec_per_step"] for r in trained], color="0.7",
           label="step")
  ax2.barh([r["model"] for r in trained],
           [r["sec_per_step"] * min(1.0, r["mask_share"]) for r in trained], color="C3",
           label="mask sampling")
  ax2.set_xlabel("seconds per pretraining step")
  ax2.legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


def parse_seeds(text: str) -> list[int]:
  try:
    seeds = [int(s) for s in text.split(",") if s.strip()]
  except ValueError:
    raise ValueError(f"--seeds {text!r}: expected comma-separated integers") from None
  if not seeds or len(set(seeds)) != len(seeds):
    raise ValueError(f"--seeds {text!r}: expected distinct comma-separated integers")
  return seeds


def main(argv: list[str] | None = None) -> int:
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--out", default=os.path.join(ROOT, "experiments", "strategy_comparison",
                                               "results"))
  p.add_argument("--scale", choices=("tiny", "cpu", "gpu"), default="cpu")
  p.add_argument("--tiny", action="store_const", const="tiny", dest="scale",
                 help="the test-suite size (same as --scale tiny)")
  p.add_argument("--strategies", default=",".join(STRATEGIES),
                 help=f"comma-separated subset of {','.join(STRATEGIES)}")
  p.add_argument("--steps", type=int, default=0, help="override the pretraining steps")
  p.add_argument("--seeds", default="0,1,2",
                 help="comma-separated pretraining seeds (default 0,1,2): every strategy is "
                 "pretrained once per seed")
  p.add_argument("--data", help="pretrain on this prepared folder instead of synthetic audio")
  p.add_argument("--task", action="append", default=[], help="extra EVAR task CSV; repeatable")
  p.add_argument("--no-synthetic-tasks", action="store_true")
  p.add_argument("--probe-clips", type=int, default=0, help="clips of each synthetic task")
  p.add_argument("--probe-seeds", type=int, default=3, help="linear-probe seeds")
  p.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                 help="override any config field, e.g. --set model.depth=6")
  p.add_argument("--no-reuse", action="store_true",
                 help="retrain even if OUT/runs/<strategy>/seed<S> holds a finished run of this "
                 "config")
  args = p.parse_args(argv)
  from dwm_jax import console
  console.setup_logging("info")
  logging.getLogger("dwm_jax.train").setLevel(logging.WARNING)  # one line per run, not per step

  strategies = [s.strip() for s in args.strategies.split(",") if s.strip()]
  unknown = sorted(set(strategies) - set(STRATEGIES))
  if unknown or not strategies:
    p.error(f"unknown strategies {unknown}; valid: {', '.join(STRATEGIES)}")
  try:
    seeds = parse_seeds(args.seeds)
  except ValueError as e:
    p.error(str(e))
  base = base_config(args.scale)
  if args.steps:
    base.total_steps = args.steps
  if args.data:
    use_folder(base, args.data)
  apply_overrides(base, args.set)
  from dwm_jax import validate
  validate.validate(strategy_config(base, strategies[0]))  # fail before any work

  os.makedirs(args.out, exist_ok=True)
  t0 = time.perf_counter()
  tasks = load_suite(args, base)
  task_names = [t.name for t in tasks]
  log.info("task suite: %s", ", ".join(map(repr, tasks)))

  from dwm_jax.data.pipeline import with_run_stats
  from dwm_jax.evaluate.encoder import load_encoder, random_encoder
  from dwm_jax.evaluate.probe import evaluate_tasks
  from dwm_jax.evaluate.run import average

  def row(model, seed, results, **extra):
    r = {"model": model, "seed": seed, "average": average(results), **extra}
    for t in task_names:
      r[f"{t}_mean"], r[f"{t}_std"] = results[t]["mean"], results[t]["std"]
    return r

  m = base.model

  def meta(steps) -> dict:
    setup = (f"scale={args.scale}; ViT {m.name} (width {m.get('width') or 'default'}, depth "
             f"{m.get('depth') or 'default'}) on {tuple(m.input_shape)} log-mel, "
             f"{base.objective.name.upper()} objective, "
             f"mask ratio {base.mask.ratio}, hint schedule from epoch {base.mask.hint.start_epoch}"
             f" (k={base.mask.hint.k}), batch {base.batch_size}, {steps} steps, pretraining "
             f"seeds {seeds}; data: "
             f"{args.data or f'synthetic ({base.data.synthetic.num_clips} clips)'}; probe: "
             f"{len(tasks)} tasks, {args.probe_seeds} probe seeds; total "
             f"{time.perf_counter() - t0:.0f} s")
    return {"setup": setup, "strategies": strategies, "seeds": seeds, "tasks": task_names,
            "scale": args.scale, "seconds": time.perf_counter() - t0,
            "argv": list(argv if argv is not None else sys.argv[1:])}

  # Results are rewritten after every run, so a long run that is cut short still leaves the
  # runs it finished. Baselines: log-mel statistics once, a random-init encoder per seed.
  logmel = evaluate_tasks("logmel", tasks, seeds=args.probe_seeds)
  rows, baselines, steps = [], [], base.total_steps
  for seed in seeds:
    seeded = base.copy_and_resolve_references()
    seeded.seed = seed
    # The normalisation the pretrained encoders use (data.stats_crops computes it per run).
    stats = with_run_stats(seeded, os.path.join(args.out, "runs"), write=False).data
    rnd = random_encoder(base.model, seed=seed, norm_mean=float(stats.norm_mean),
                         norm_std=float(stats.norm_std))
    baselines.append(row("random-init encoder", seed, evaluate_tasks(
        rnd, tasks, seeds=args.probe_seeds)))
    baselines.append(row("log-mel statistics", seed, logmel))
    for s in strategies:
      cfg = strategy_config(seeded, s)
      workdir = os.path.join(args.out, "runs", s, f"seed{seed}")
      log.info("== %s, seed %d: pretraining in %s", s, seed, workdir)
      rec = pretrain(cfg, workdir, reuse=not args.no_reuse)
      # Steady-state step time (compilation excluded) when the run logged a rate.
      per_step = (rec["batch_size"] / rec["clips_per_sec"] if rec.get("clips_per_sec")
                  else rec["train_seconds"] / max(1, rec["steps"]))
      mask_s = mask_seconds(cfg, workdir)
      encoder = load_encoder(workdir)
      res = evaluate_tasks(encoder, tasks, seeds=args.probe_seeds,
                           cache_dir=os.path.join(args.out, "probe_cache"))
      rows.append(row(LABELS[s], seed, res, strategy=s, pretrain_seconds=rec["pretrain_seconds"],
                      sec_per_step=per_step, mask_ms=1e3 * mask_s,
                      mask_share=mask_s / per_step, final_loss=rec["final_loss"],
                      steps=rec["steps"]))
      steps = rec["steps"]
      log.info("%s seed %d: average %.1f%%, %.0f s pretraining, mask share %.1f%%", s, seed,
               100 * rows[-1]["average"], rec["pretrain_seconds"], 100 * mask_s / per_step)
      write_outputs(args.out, rows + baselines, task_names, meta(steps))
  print(f"wrote {args.out}/results.csv, results_seeds.csv, results.md, results.json, "
        f"results.png ({time.perf_counter() - t0:.0f} s)")
  return 0


if __name__ == "__main__":
  sys.exit(main())
