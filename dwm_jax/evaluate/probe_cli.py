"""``dwm-jax probe``: linear-probe an encoder (or a baseline) on EVAR task CSVs or TFDS datasets.

  dwm-jax probe --workdir W --task path/to/task.csv [--task tfds:NAME ...] [--out DIR]
  dwm-jax probe --encoder encoder.msgpack --synthetic 600 --seeds 5
  dwm-jax probe --workdir W --task t.csv --baseline random   # same architecture, random init
  dwm-jax probe --task t.csv --baseline logmel               # per-bin log-mel mean and std
  dwm-jax probe --workdir W --protocol evar --task esc50 --data-root EVAR_DIR   # EVAR's numbers

``--protocol dwm`` (default) is this project's probe; ``--protocol evar`` is EVAR's linear
evaluation rule by rule (seeds 42.., the encoder recipe's lr ``probe.evar_lr``, every clip cropped
to its task's ``unit_sec``); docs/evaluation.md compares them. A CSV with a ``fold`` column is
scored per fold (train on the others) and averaged. Every task is loaded (and checked) before
anything is embedded, so a bad CSV fails in seconds. Results: ``DIR/probe.json`` (``{task:
{"metric", "mean", "std", "seeds"[, "folds"]}}``) and ``DIR/probe.md``; the table is printed
too. Encoder embeddings are cached under ``W/probe_cache`` (or ``--cache``), keyed by the
parameters' fingerprint and the task's content.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
import time

from dwm_jax import console, faults, paths
from dwm_jax.data import evar_tasks, labeled
from dwm_jax.evaluate.evar_probe import EvarConfig
from dwm_jax.evaluate.probe import ProbeConfig, evaluate_tasks, markdown_table

log = logging.getLogger(__name__)

PROTOCOLS = {"dwm": ProbeConfig, "evar": EvarConfig}
# EVAR's lr_lineareval for its spectrogram baselines (config/melspec.yaml, linspec.yaml).
EVAR_SPECTROGRAM_LR = 3e-4


def _parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(prog="dwm-jax probe", description=__doc__.split("\n")[0])
  src = p.add_mutually_exclusive_group()
  src.add_argument("--workdir", help="pretraining workdir (its latest checkpoint)")
  src.add_argument("--encoder", help="encoder export file (dwm-jax export)")
  p.add_argument("--task", action="append", default=[],
                 help="EVAR CSV (file_name,label,split or fold), EVAR task name (with "
                      "--data-root) or tfds:NAME; repeatable")
  p.add_argument("--data-root", help="EVAR's root folder, for --task NAME: "
                 "evar/metadata/NAME.csv, audio in work/16k/FOLDER/")
  p.add_argument("--protocol", choices=sorted(PROTOCOLS), default="dwm",
                 help="dwm: this project's probe; evar: EVAR's linear evaluation "
                      "(docs/evaluation.md)")
  p.add_argument("--unit-sec", type=float, default=None,
                 help="crop or zero-pad every clip of the CSV tasks to this length "
                      "(--protocol evar: default the EVAR task's unit_sec)")
  p.add_argument("--synthetic", type=int, default=0, metavar="N",
                 help="also probe the synthetic event/pitch/timbre tasks on N clips")
  p.add_argument("--synthetic-seed", type=int, default=1,
                 help="seed of the synthetic task clips (default 1: not the pretraining set)")
  p.add_argument("--baseline", choices=("random", "logmel"),
                 help="probe a baseline instead: random-init encoder of the same architecture, "
                      "or log-mel statistics")
  p.add_argument("--seeds", type=int, default=3, help="probe seeds (mean +- std over them; "
                 "seeds 0.. for dwm, 42.. for evar)")
  p.add_argument("--out", help="write DIR/probe.json and DIR/probe.md")
  p.add_argument("--cache", help="embedding cache folder (default: WORKDIR/probe_cache)")
  p.add_argument("--no-cache", action="store_true")
  p.add_argument("--tfds-data-dir", default=None)
  p.add_argument("--sep", default=",", help="separator of multi-label labels in task CSVs")
  p.add_argument("--max-epochs", type=int, default=None, help="default: 200")
  p.add_argument("--lr", type=float, default=None,
                 help="classifier lr (default dwm: 3e-3; evar: the workdir config's "
                      "probe.evar_lr, M2D's 3e-5, or 3e-4 for --baseline logmel)")
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


def recipe_lr(args: argparse.Namespace) -> float:
  """``--protocol evar``'s lr: ``--lr``, else the recipe's: a workdir config's
  ``probe.evar_lr``, EVAR's spectrogram value for log-mel statistics, else M2D's 3e-5."""
  if args.lr is not None:
    return args.lr
  if args.baseline == "logmel":
    return EVAR_SPECTROGRAM_LR
  if args.workdir:
    path = paths.join(args.workdir, "config.json")
    if paths.isfile(path):
      lr = json.loads(paths.read_text(path)).get("probe", {}).get("evar_lr")
      if lr is not None:
        return float(lr)
  return EvarConfig.lr


def protocol_config(args: argparse.Namespace):
  """The protocol's config with the command's overrides."""
  cls = PROTOCOLS[args.protocol]
  over = {}
  if args.protocol == "evar":
    over["lr"] = recipe_lr(args)
  elif args.lr is not None:
    over["lr"] = args.lr
  if args.max_epochs is not None:
    if args.max_epochs < 1:
      raise ValueError(f"--max-epochs must be >= 1, got {args.max_epochs}")
    over["max_epochs"] = args.max_epochs
  if over.get("lr", 1.0) <= 0:
    raise ValueError(f"--lr must be positive, got {over['lr']}")
  return dataclasses.replace(cls(), **over)


def unit_sec_for(args: argparse.Namespace):
  """The clip length of each task spec: ``--unit-sec``; with ``--protocol evar`` the EVAR task's
  (a task EVAR does not define needs ``--unit-sec``)."""
  def unit(spec: str) -> float | None:
    if spec.startswith("tfds:") and args.protocol == "evar":
      raise ValueError(f"task {spec}: --protocol evar crops clips to the task's unit_sec, which "
                       f"dwm-jax does for CSV tasks only (EVAR's metadata CSVs)")
    if args.unit_sec is not None or args.protocol != "evar":
      return args.unit_sec if not spec.startswith("tfds:") else None
    found = evar_tasks.find(spec)
    if found is None:
      raise ValueError(f"task {spec}: not one of EVAR's tasks, so its unit_sec is unknown: "
                       f"give --unit-sec SECONDS (EVAR crops every clip to it)")
    return found[1].unit_sec
  return unit


def run(args: argparse.Namespace) -> dict[str, dict]:
  if not args.task and not args.synthetic:
    raise ValueError("nothing to probe: give --task (repeatable) and/or --synthetic N")
  if args.seeds < 1:
    raise ValueError(f"--seeds must be >= 1, got {args.seeds}")
  if args.unit_sec is not None and not args.unit_sec > 0:
    raise ValueError(f"--unit-sec must be positive, got {args.unit_sec}")
  config = protocol_config(args)
  for where in (args.workdir, args.encoder, args.data_root):
    if where:
      paths.check_bucket(where)  # a bad bucket fails before anything is loaded
  if args.out:
    paths.check_writable(args.out)
  t0 = time.perf_counter()
  tasks = labeled.load_tasks(args.task, synthetic=args.synthetic,
                             synthetic_seed=args.synthetic_seed, data_dir=args.tfds_data_dir,
                             sep=args.sep, data_root=args.data_root, unit_sec=unit_sec_for(args))
  for t in tasks:
    print(f"{t}" + (f"  skipped files: {t.skipped}" if t.skipped else ""))
  model, label = _model(args)
  cache = None
  if not args.no_cache:
    cache = args.cache or (paths.join(args.workdir, "probe_cache") if args.workdir else None)
  results = evaluate_tasks(model, tasks, seeds=args.seeds, cache_dir=cache, config=config)
  title = f"Linear probe ({args.protocol} protocol, lr {config.lr:g}): {label}"
  table = markdown_table(results, title=title)
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
