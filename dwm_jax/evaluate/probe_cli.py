"""``dwm-jax probe``: linear-probe an encoder (or a baseline) on EVAR task CSVs or TFDS datasets.

  dwm-jax probe --workdir W --task path/to/task.csv [--task tfds:NAME ...] [--out DIR]
  dwm-jax probe --encoder encoder.msgpack --synthetic 600 --seeds 5
  dwm-jax probe --workdir W --task t.csv --baseline random   # same architecture, random init
  dwm-jax probe --task t.csv --baseline logmel               # per-bin log-mel mean and std

Every task is loaded (and checked) before anything is embedded, so a bad CSV fails in seconds.
Results: ``DIR/probe.json`` (``{task: {"metric", "mean", "std", "seeds"}}``) and ``DIR/probe.md``;
the table is printed too. Encoder embeddings are cached under ``W/probe_cache`` (or ``--cache``),
keyed by the parameters' fingerprint and the task's content.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
import time

from dwm_jax import console, faults, paths
from dwm_jax.data import labeled
from dwm_jax.evaluate.probe import ProbeConfig, evaluate_tasks, markdown_table

log = logging.getLogger(__name__)


def _parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(prog="dwm-jax probe", description=__doc__.split("\n")[0])
  src = p.add_mutually_exclusive_group()
  src.add_argument("--workdir", help="pretraining workdir (its latest checkpoint)")
  src.add_argument("--encoder", help="encoder export file (dwm-jax export)")
  p.add_argument("--task", action="append", default=[],
                 help="EVAR CSV (file_name,label,split) or tfds:NAME; repeatable")
  p.add_argument("--synthetic", type=int, default=0, metavar="N",
                 help="also probe the synthetic event/pitch/timbre tasks on N clips")
  p.add_argument("--synthetic-seed", type=int, default=1,
                 help="seed of the synthetic task clips (default 1: not the pretraining set)")
  p.add_argument("--baseline", choices=("random", "logmel"),
                 help="probe a baseline instead: random-init encoder of the same architecture, "
                      "or log-mel statistics")
  p.add_argument("--seeds", type=int, default=3, help="probe seeds (mean +- std over them)")
  p.add_argument("--out", help="write DIR/probe.json and DIR/probe.md")
  p.add_argument("--cache", help="embedding cache folder (default: WORKDIR/probe_cache)")
  p.add_argument("--no-cache", action="store_true")
  p.add_argument("--tfds-data-dir", default=None)
  p.add_argument("--sep", default=",", help="separator of multi-label labels in task CSVs")
  p.add_argument("--max-epochs", type=int, default=ProbeConfig.max_epochs)
  p.add_argument("--lr", type=float, default=ProbeConfig.lr)
  p.add_argument("--debug", action="store_true", help="show tracebacks of expected failures")
  return p


def _model(args):
  from dwm_jax.evaluate.encoder import load_encoder, random_encoder
  if args.baseline == "logmel":
    return "logmel", "logmel statistics"
  where = args.workdir or args.encoder
  if not where:
    raise ValueError("give --workdir or --encoder (or --baseline logmel)")
  encoder = load_encoder(where)
  if args.baseline == "random":
    return (random_encoder(encoder.model_cfg, seed=0, norm_mean=encoder.norm_mean,
                           norm_std=encoder.norm_std), f"random-init {encoder.model_cfg.name}")
  return encoder, where


def run(args: argparse.Namespace) -> dict[str, dict]:
  if not args.task and not args.synthetic:
    raise ValueError("nothing to probe: give --task (repeatable) and/or --synthetic N")
  if args.seeds < 1:
    raise ValueError(f"--seeds must be >= 1, got {args.seeds}")
  for where in (args.workdir, args.encoder):
    if where:
      paths.check_bucket(where)  # a bad bucket fails before anything is loaded
  if args.out:
    paths.check_writable(args.out)
  t0 = time.perf_counter()
  tasks = labeled.load_tasks(args.task, synthetic=args.synthetic, synthetic_seed=args.synthetic_seed,
                     data_dir=args.tfds_data_dir, sep=args.sep)
  for t in tasks:
    print(f"{t}" + (f"  skipped files: {t.skipped}" if t.skipped else ""))
  model, label = _model(args)
  cache = None
  if not args.no_cache:
    cache = args.cache or (paths.join(args.workdir, "probe_cache") if args.workdir else None)
  results = evaluate_tasks(model, tasks, seeds=args.seeds, cache_dir=cache,
                           config=ProbeConfig(lr=args.lr, max_epochs=args.max_epochs))
  table = markdown_table(results, title=f"Linear probe: {label}")
  print(table + f"\n({time.perf_counter() - t0:.1f} s)")
  if args.out:
    paths.write_text(paths.join(args.out, "probe.json"), json.dumps(results, indent=2))
    paths.write_text(paths.join(args.out, "probe.md"), table)
    print(f"wrote {paths.join(args.out, 'probe.json')} and probe.md")
  return results


def main(argv: list[str] | None = None) -> int:
  args = _parser().parse_args(argv)
  console.setup_logging()
  try:
    run(args)
  except faults.Fault as e:
    return console.report_fault("dwm-jax probe", e, debug=args.debug)
  except (ValueError, FileNotFoundError) as e:
    print(f"dwm-jax probe: error: {e}", file=sys.stderr)
    return 2
  return 0


if __name__ == "__main__":
  sys.exit(main())
