"""Fine-tuning vs the linear probe of the same encoder, on the same tasks, splits and seeds.

  python experiments/finetune/run.py                       # real audio: rendered words and
  #                                                          instruments (the quickstart encoder,
  #                                                          pretrained into --workdir if missing)
  python experiments/finetune/run.py --suite synthetic     # the synthetic event / pitch / timbre
  python experiments/finetune/run.py --tiny                # seconds: the test-suite size

The encoder is a pretraining workdir's latest checkpoint (``configs/quickstart.py`` by default).
Tasks: ``--suite real`` (default) renders the ``words`` (espeak-ng) and ``instruments``
(fluidsynth) tasks of ``dwm_jax.data.rendered`` (seed 0, 40 / 10 / 20 clips per class; held-out
voices and pitches in valid and test) into ``--work``/rendered; ``--suite synthetic`` uses the
synthetic tasks on the very clips the quickstart's own probe uses (``--clips`` clips of 2.08 s,
seed ``data.synthetic.seed + 1``; 70/15/15 split). Both methods get the same train / valid / test
clips and seeds 0..N-1: the linear probe of ``dwm_jax.evaluate.evaluate_tasks`` and
``dwm_jax.evaluate.finetune`` with ``configs/finetune.py`` (``--recipe``, ``--set FIELD=VALUE``).
Outputs in ``--out`` (default ``results/<suite>/``): ``results.md`` (printed), ``results.json``
(per-seed scores, config), ``results.csv``, ``finetune.json``; the runs (checkpoints, logs) in
``--work``/finetune_<suite> (a rerun resumes them and reuses finished ones).
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

log = logging.getLogger("finetune_experiment")


def tiny_encoder():
  """A random 1-block width-32 encoder over 80 x 64 inputs (the test suite's)."""
  from dwm_jax.config import base_config
  from dwm_jax.evaluate import random_encoder
  m = base_config().model
  m.name, m.input_shape = "tiny", (80, 64)
  m.width, m.depth, m.heads, m.mlp_dim = 32, 1, 2, 64
  return random_encoder(m, seed=0)


def pretrained_encoder(workdir: str):
  """The workdir's encoder; pretrains ``configs/quickstart.py`` there first if it has none."""
  from dwm_jax.evaluate import load_encoder
  if not os.path.isdir(os.path.join(workdir, "checkpoints")):
    from configs import quickstart
    from dwm_jax import main
    log.info("no checkpoints in %s: pretraining configs/quickstart.py there", workdir)
    c = quickstart.get_config()
    c.probe.after_pretrain = False
    main.train_and_evaluate(c, workdir)
  return load_encoder(workdir)


def finetune_config(recipe: str, overrides: list[str], tiny: bool):
  from configs import finetune as recipes
  c = recipes.get_config(f"recipe={recipe}")
  if tiny:
    c.batch_size, c.eval_batch_size, c.epochs, c.log_every_steps = 8, 8, 1.0, 2
    c.augment.time_mask = 16
  for item in overrides:
    field, _, text = item.partition("=")
    node = c
    *path, last = field.split(".")
    for p in path:
      node = node[p]
    old = node[last]
    node[last] = text if isinstance(old, str) else type(old)(json.loads(text))
  return c


def load_tasks(suite: str, work: str, tiny: bool, clips: int):
  """``(tasks, description)`` of the suite."""
  if suite == "real":
    from dwm_jax.data import labeled, rendered
    folder = os.path.join(work, "rendered_tiny" if tiny else "rendered")
    per_class = (3, 1, 2) if tiny else rendered.PER_CLASS
    tasks = [labeled.load_csv_task(rendered.render(t, folder, seed=0, per_class=per_class))
             for t in ("words", "instruments")]
    return tasks, (f"rendered real audio (dwm_jax.data.rendered, seed 0, {per_class[0]} / "
                   f"{per_class[1]} / {per_class[2]} clips per class): words (espeak-ng, 1.0 s, "
                   "held-out voices), instruments (fluidsynth, 2.0 s, held-out pitches)")
  from configs import quickstart
  from dwm_jax.data.labeled import synthetic_tasks
  s = quickstart.get_config().data.synthetic  # the quickstart probe's clips: seed + 1, 2.08 s
  n = 30 if tiny else clips
  seconds = 1.0 if tiny else float(s.seconds)
  return (synthetic_tasks(n, seed=int(s.seed) + 1, seconds=seconds),
          f"synthetic, {n} clips of {seconds:.2f} s per task")


def render(rows: dict[str, dict], per_seed: dict[str, dict], meta: dict) -> str:
  """The Markdown table, the per-seed scores and the setup line."""
  from dwm_jax.evaluate.run import comparison_table
  split = "; ".join(f"{t} {n['train']} / {n['valid']} / {n['test']}"
                    for t, n in meta["splits"].items())
  seeds = "\n".join(f"- {t}: " + "; ".join(
      f"{name} " + " / ".join(f"{100 * v:.1f}" for v in per_seed[name][t]) for name in rows)
      for t in meta["splits"])
  return (f"### Linear probe vs fine-tuning ({meta['seeds']} seeds; test accuracy %, mean ± std)"
          "\n\n" + comparison_table(rows)
          + f"\nPer seed ({', '.join(map(str, meta['seed_list']))}):\n{seeds}\n"
          + f"\nEncoder: {meta['encoder']}. Tasks: {meta['tasks']}; train / valid / test clips: "
          f"{split}. Linear probe {meta['probe_seconds']:.0f} s, fine-tuning "
          f"{meta['finetune_seconds']:.0f} s, {meta['wall_seconds']:.0f} s in all.\n")


def write_outputs(out: str, rows: dict[str, dict], per_seed: dict[str, dict], meta: dict,
                  table: str) -> None:
  with open(os.path.join(out, "results.md"), "w") as f:
    f.write(table)
  with open(os.path.join(out, "results.json"), "w") as f:
    json.dump({"results": rows, "per_seed": per_seed, "meta": meta}, f, indent=2)
  tasks = list(next(iter(rows.values())))
  with open(os.path.join(out, "results.csv"), "w", newline="") as f:
    w = csv.writer(f)
    w.writerow(["method"] + [f"{t}_{k}" for t in tasks for k in ("mean", "std")] + ["average"])
    for name, res in rows.items():
      vals = [res[t][k] for t in tasks for k in ("mean", "std")]
      w.writerow([name] + vals + [sum(res[t]["mean"] for t in tasks) / len(tasks)])


def probe_per_seed(encoder, tasks, seeds: list[int], cache: str) -> tuple[dict, dict]:
  """``(evaluate_tasks results, {task: [score per seed]})``: the clips are embedded once."""
  from dwm_jax.evaluate import evaluate_tasks
  runs = [evaluate_tasks(encoder, tasks, seeds=[s], cache_dir=cache) for s in seeds]
  per = {t.name: [r[t.name]["mean"] for r in runs] for t in tasks}
  out = {t.name: {"metric": runs[0][t.name]["metric"], "mean": float(np.mean(per[t.name])),
                  "std": float(np.std(per[t.name])), "seeds": len(seeds)} for t in tasks}
  return out, per


def main(argv: list[str] | None = None) -> int:
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--suite", choices=("real", "synthetic"), default="real")
  p.add_argument("--workdir", default="/tmp/dwm_quickstart", help="pretraining workdir")
  p.add_argument("--out", default=None, help="default: results/<suite>/ beside this script")
  p.add_argument("--work", default="/tmp/dwm_finetune_experiment",
                 help="rendered tasks and fine-tuning runs (checkpoints); rerunning resumes them")
  p.add_argument("--clips", type=int, default=1500, help="clips per synthetic task")
  p.add_argument("--seeds", type=int, default=3)
  p.add_argument("--recipe", default="cpu", help="configs/finetune.py recipe")
  p.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                 help="fine-tuning config override (JSON value), repeatable")
  p.add_argument("--tiny", action="store_true",
                 help="random tiny encoder, a few clips per class, 1 epoch, 1 seed")
  args = p.parse_args(argv)
  from dwm_jax import console, faults
  console.setup_logging("info")
  from dwm_jax.evaluate import finetune

  t_all = time.perf_counter()
  out = args.out or os.path.join(os.path.dirname(os.path.abspath(__file__)), "results",
                                 args.suite)
  os.makedirs(out, exist_ok=True)
  try:
    tasks, described = load_tasks(args.suite, args.work, args.tiny, args.clips)
  except faults.Fault as e:  # the packages that render the real-audio tasks are missing
    return console.report_fault("experiments/finetune", e)
  encoder = tiny_encoder() if args.tiny else pretrained_encoder(args.workdir)
  seeds = 1 if args.tiny else args.seeds
  seed_list = list(range(seeds))

  t0 = time.perf_counter()
  suffix = "_tiny" if args.tiny else ""
  probe, probe_seeds = probe_per_seed(encoder, tasks, seed_list,
                                      os.path.join(args.work, f"probe_cache_{args.suite}{suffix}"))
  probe_s = time.perf_counter() - t0
  config = finetune_config(args.recipe, args.set, args.tiny)
  t0 = time.perf_counter()
  runs = os.path.join(args.work, f"finetune_{args.suite}{suffix}")
  tuned = finetune(encoder, tasks, runs, config=config, seeds=seeds, title="quickstart encoder")
  shutil.copy(os.path.join(runs, "finetune.json"), out)
  finetune_s = time.perf_counter() - t0
  tuned_seeds = {t.name: [json.load(open(os.path.join(runs, "runs", t.name, f"seed_{s}",
                                                       "result.json")))["score"]
                          for s in seed_list] for t in tasks}

  rows = {"linear probe": probe, "fine-tuned": tuned}
  per_seed = {"linear probe": probe_seeds, "fine-tuned": tuned_seeds}
  split = {t.name: {k: len(t.split(k)[0]) for k in ("train", "valid", "test")} for t in tasks}
  source = "random tiny encoder" if args.tiny else f"{args.workdir} (latest checkpoint)"
  meta = {"encoder": source, "suite": args.suite, "tasks": described, "seeds": seeds,
          "seed_list": seed_list, "splits": split, "recipe": args.recipe,
          "overrides": args.set, "probe_seconds": probe_s, "finetune_seconds": finetune_s,
          "wall_seconds": time.perf_counter() - t_all,
          "finetune_config": json.loads(config.to_json_best_effort())}
  table = render(rows, per_seed, meta)
  write_outputs(out, rows, per_seed, meta, table)
  print(table)
  return 0


if __name__ == "__main__":
  sys.exit(main())
