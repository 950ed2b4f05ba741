"""Fine-tuning vs the linear probe of the same encoder, on the same tasks, splits and seeds.

  python experiments/finetune/run.py                       # the quickstart encoder (pretrained
  #                                                          into --workdir first if missing)
  python experiments/finetune/run.py --workdir /tmp/dwm_quickstart --seeds 3
  python experiments/finetune/run.py --tiny                # seconds: the test-suite size

The encoder is a pretraining workdir's latest checkpoint (``configs/quickstart.py`` by default).
Tasks: the synthetic event / pitch / timbre tasks on the very clips the quickstart's own probe
uses (``--clips`` clips of 2.08 s, seed ``data.synthetic.seed + 1``; 70/15/15 split). Both
methods get the same train / valid / test clips and seeds 0..N-1: the linear probe of
``dwm_jax.evaluate.evaluate_tasks`` and ``dwm_jax.evaluate.finetune`` with
``configs/finetune.py`` (``--recipe``, ``--set FIELD=VALUE``). Outputs in ``--out``:
``results.md`` (printed), ``results.json``, ``results.csv``, ``finetune.json``; the runs
(checkpoints, logs) in ``--work``/finetune (a rerun resumes them and reuses finished ones).
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


def render(rows: dict[str, dict], meta: dict) -> str:
  """The Markdown table and its setup line."""
  from dwm_jax.evaluate.run import comparison_table
  n = next(iter(meta["splits"].values()))
  return (f"### Linear probe vs fine-tuning ({meta['seeds']} seeds; test accuracy %, mean ± std)"
          "\n\n" + comparison_table(rows)
          + f"\nEncoder: {meta['encoder']}. {meta['clips']} clips of {meta['seconds']:.2f} s per "
          f"task, {n['train']} train / {n['valid']} valid / {n['test']} test. Linear probe "
          f"{meta['probe_seconds']:.0f} s, fine-tuning {meta['finetune_seconds']:.0f} s, "
          f"{meta['wall_seconds']:.0f} s in all.\n")


def write_outputs(out: str, rows: dict[str, dict], meta: dict, table: str) -> None:
  with open(os.path.join(out, "results.md"), "w") as f:
    f.write(table)
  with open(os.path.join(out, "results.json"), "w") as f:
    json.dump({"results": rows, "meta": meta}, f, indent=2)
  tasks = list(next(iter(rows.values())))
  with open(os.path.join(out, "results.csv"), "w", newline="") as f:
    w = csv.writer(f)
    w.writerow(["method"] + [f"{t}_{k}" for t in tasks for k in ("mean", "std")] + ["average"])
    for name, res in rows.items():
      vals = [res[t][k] for t in tasks for k in ("mean", "std")]
      w.writerow([name] + vals + [sum(res[t]["mean"] for t in tasks) / len(tasks)])


def main(argv: list[str] | None = None) -> int:
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--workdir", default="/tmp/dwm_quickstart", help="pretraining workdir")
  p.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                               "results"))
  p.add_argument("--work", default="/tmp/dwm_finetune_experiment",
                 help="fine-tuning runs (checkpoints); rerunning resumes them")
  p.add_argument("--clips", type=int, default=1500, help="clips per synthetic task")
  p.add_argument("--seeds", type=int, default=3)
  p.add_argument("--recipe", default="cpu", help="configs/finetune.py recipe")
  p.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                 help="fine-tuning config override (JSON value), repeatable")
  p.add_argument("--tiny", action="store_true", help="random tiny encoder, 30 clips, 1 epoch")
  args = p.parse_args(argv)
  from dwm_jax import console
  console.setup_logging("info")
  from configs import quickstart
  from dwm_jax.data.labeled import synthetic_tasks
  from dwm_jax.evaluate import evaluate_tasks, finetune

  t_all = time.perf_counter()
  os.makedirs(args.out, exist_ok=True)
  encoder = tiny_encoder() if args.tiny else pretrained_encoder(args.workdir)
  clips = 30 if args.tiny else args.clips
  s = quickstart.get_config().data.synthetic  # the quickstart probe's clips: seed + 1, 2.08 s
  seconds = 1.0 if args.tiny else float(s.seconds)
  tasks = synthetic_tasks(clips, seed=int(s.seed) + 1, seconds=seconds)
  seeds = 1 if args.tiny else args.seeds

  t0 = time.perf_counter()
  probe = evaluate_tasks(encoder, tasks, seeds=seeds)
  probe_s = time.perf_counter() - t0
  config = finetune_config(args.recipe, args.set, args.tiny)
  t0 = time.perf_counter()
  tuned = finetune(encoder, tasks, os.path.join(args.work, "finetune"), config=config,
                   seeds=seeds, title="quickstart encoder")
  shutil.copy(os.path.join(args.work, "finetune", "finetune.json"), args.out)
  finetune_s = time.perf_counter() - t0

  rows = {"linear probe": probe, "fine-tuned": tuned}
  split = {t.name: {k: len(t.split(k)[0]) for k in ("train", "valid", "test")} for t in tasks}
  source = "random tiny encoder" if args.tiny else f"{args.workdir} (latest checkpoint)"
  meta = {"encoder": source, "clips": clips, "seconds": seconds, "seeds": seeds,
          "splits": split, "recipe": args.recipe, "overrides": args.set,
          "probe_seconds": probe_s, "finetune_seconds": finetune_s,
          "wall_seconds": time.perf_counter() - t_all,
          "finetune_config": json.loads(config.to_json_best_effort())}
  table = render(rows, meta)
  write_outputs(args.out, rows, meta, table)
  print(table)
  return 0


if __name__ == "__main__":
  sys.exit(main())
