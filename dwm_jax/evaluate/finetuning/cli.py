"""``dwm-jax finetune``: fine-tune a pretrained or imported encoder on labeled tasks.

  dwm-jax finetune --workdir W --task data/esc50.csv --out /tmp/ft
  dwm-jax finetune --encoder m2d.msgpack --task tfds:NAME --out DIR --seeds 3 \\
      --config configs/finetune.py:recipe=m2d --config.batch_size=64
  dwm-jax finetune --workdir W --synthetic 1500 --out DIR   # the synthetic event/pitch/timbre

Every task is loaded and checked, and the config validated, before anything is compiled. Writes
``DIR/finetune.json`` (``{task: {"metric", "mean", "std", "seeds"}}``) and ``DIR/finetune.md``
(also printed). Rerunning the same command resumes. Exit status: 0 finished (or stopped by
SIGTERM/SIGINT after saving: rerun to resume), 1 NaN/Inf loss, 2 bad command line, config or
task, or a step that cannot fit in device memory.
"""
from __future__ import annotations

import logging
import sys
import time
from typing import Sequence

from absl import flags
from ml_collections import config_flags

from dwm_jax import console, faults, paths, validate

log = logging.getLogger("dwm_jax.finetune")
PROG = "dwm-jax finetune"
USAGE = (f"usage: {PROG} (--workdir W | --encoder F) (--task CSV|tfds:NAME ... | --synthetic N) "
         "--out DIR [--seeds N] [--config configs/finetune.py[:recipe=m2d]] "
         "[--config.FIELD=VALUE ...]")


def default_config_path() -> str:
  import configs.finetune  # pylint: disable=import-outside-toplevel
  return configs.finetune.__file__


def _flags(argv: list[str]) -> tuple[flags.FlagValues, object]:
  fv = flags.FlagValues()
  config = config_flags.DEFINE_config_file(
      "config", None, "fine-tuning config, optionally with an argument: "
      "configs/finetune.py:recipe=m2d", flag_values=fv, sys_argv=argv)
  flags.DEFINE_string("workdir", None, "pretraining workdir (its latest checkpoint)",
                      flag_values=fv)
  flags.DEFINE_string("encoder", None, "encoder export file (dwm-jax export / import-torch)",
                      flag_values=fv)
  flags.DEFINE_multi_string("task", [], "EVAR CSV (file_name,label,split) or tfds:NAME; "
                            "repeatable", flag_values=fv)
  flags.DEFINE_integer("synthetic", 0, "also the synthetic event/pitch/timbre tasks on N clips",
                       flag_values=fv)
  flags.DEFINE_integer("synthetic_seed", 1, "seed of the synthetic task clips", flag_values=fv)
  flags.DEFINE_string("out", None, "output folder (finetune.json, finetune.md, runs/)",
                      flag_values=fv)
  flags.DEFINE_integer("seeds", None, "runs per task (overrides config.seeds)", flag_values=fv)
  flags.DEFINE_string("tfds_data_dir", None, "TFDS data folder", flag_values=fv)
  flags.DEFINE_string("sep", ",", "separator of multi-label labels in task CSVs", flag_values=fv)
  flags.DEFINE_enum("log_level", "info", ["debug", "info", "warning"], "console log level",
                    flag_values=fv)
  return fv, config


def _parse(argv: list[str]):
  if not any(a == "--config" or a.startswith("--config=") for a in argv):
    argv = ["--config", default_config_path(), *argv]
  fv, config = _flags([PROG, *argv])
  fv([PROG, *argv])
  if bool(fv.workdir) == bool(fv.encoder):
    raise flags.Error("give exactly one of --workdir and --encoder")
  if not fv.out:
    raise flags.Error("--out is required")
  if not fv.task and not fv.synthetic:
    raise flags.Error("nothing to fine-tune on: give --task (repeatable) and/or --synthetic N")
  if fv.seeds is not None and fv.seeds < 1:
    raise flags.Error(f"--seeds must be >= 1, got {fv.seeds}")
  return fv, config.value, argv


def _unknown_field(error: str, argv: list[str]) -> str:
  """config_flags reports an override of a missing field as a bare key: name the flag."""
  names = [a[len("--config."):].split("=")[0] for a in argv if a.startswith("--config.")]
  key = error.strip("'\"").split("'")[0].split(" ")[0]
  bad = [n for n in names if n.split(".")[-1] == key] or names
  return f"unknown config field {', '.join(bad) or error} ({error})"


def main(argv: Sequence[str] | None = None) -> int:
  """``dwm-jax finetune ...`` (see the module docstring); returns the exit status."""
  argv = list(sys.argv[1:] if argv is None else argv)
  try:
    fv, config, argv = _parse(argv)
  except (flags.Error, ValueError, AttributeError, KeyError) as e:
    msg = str(e.args[0]) if e.args else str(e)
    if isinstance(e, (KeyError, AttributeError)):
      msg = _unknown_field(msg, argv)
    print(f"{PROG}: {msg}\n{USAGE}", file=sys.stderr)
    return 2
  console.setup_logging(fv.log_level)
  return _run(fv, config)


def _run(fv: flags.FlagValues, config) -> int:
  from dwm_jax.evaluate.finetuning.loop import Preempted  # pylint: disable=import-outside-toplevel
  from dwm_jax.evaluate.finetuning.run import TABLE_FILE, finetune  # pylint: disable=import-outside-toplevel
  from dwm_jax.train.loop import NonFiniteLossError  # pylint: disable=import-outside-toplevel
  from dwm_jax.train.memory import DoesNotFit  # pylint: disable=import-outside-toplevel
  t0 = time.perf_counter()
  try:
    finetune(fv.workdir or fv.encoder, list(fv.task), fv.out, config=config,
             seeds=fv.seeds, synthetic=fv.synthetic, synthetic_seed=fv.synthetic_seed,
             data_dir=fv.tfds_data_dir, sep=fv.sep)
  except (validate.ConfigError, DoesNotFit, ValueError, FileNotFoundError) as e:
    print(f"{PROG}: error: {e}", file=sys.stderr)
    return 2
  except NonFiniteLossError as e:
    log.error("%s", e)
    return 1
  except Preempted as e:
    log.warning("%s", e)
    return 0
  except faults.Fault as e:  # e.g. a bucket that is missing or refuses these credentials
    return console.report_fault(PROG, e)
  print(paths.read_text(paths.join(fv.out, TABLE_FILE))
        + f"\n({time.perf_counter() - t0:.1f} s; {fv.out}/finetune.json)")
  return 0


if __name__ == "__main__":
  sys.exit(main())
