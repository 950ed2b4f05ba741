"""``dwm-jax pretrain``: validate the config, pretrain (resuming), optionally probe the result.

  dwm-jax pretrain --config configs/quickstart.py --workdir /tmp/dwm_quickstart
  dwm-jax pretrain --config configs/m2d.py:mask=dwm,model=base --workdir W \\
      --config.data.csv=/data/audioset_lms/files.csv --config.mask.ratio=0.7
  python -m dwm_jax.main ...   # the same

Library entry: :func:`train_and_evaluate`. Exit status: 0 when finished or stopped by
SIGTERM/SIGINT after saving a checkpoint (rerun the same command to resume); 1 when the run
stopped on a fault it reports in one line (NaN/Inf loss, no readable checkpoint, a failed save,
a failed input pipeline); 2 on an invalid config or command line, a checkpoint of another model,
or a step that does not fit in device memory (found before step 1); 75 when there is nothing to
fix (a multi-process run lost a peer process, or a bucket stopped answering for
``storage.timeout_seconds``): restart the job with the same command. ``--debug`` (or
``DWM_JAX_DEBUG=1``) adds the traceback. A multi-process run trains in a child process of
:mod:`dwm_jax.supervisor`, which reports how it ended.

Strategy options: ``--config.mask.options.NAME=VALUE`` sets any registered option of the run's
strategy (``mask.name``), typed by the option's default, e.g. ``--config.mask.options.metric=variance``
for ``dwm`` or ``--config.mask.options.min_aspect=0.5`` for ``block``.
"""
from __future__ import annotations

import json
import logging
import os
import re
import sys
import traceback
from typing import Any, Callable, Sequence

import ml_collections
from absl import flags
from ml_collections import config_flags

from dwm_jax import console, distributed, faults, paths, supervisor, validate

log = logging.getLogger("dwm_jax")
SUMMARY_FILE = "summary.json"
OPTION_FLAG = "--config.mask.options."


def final_probe(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  """Linear probe of the run's latest encoder against a random-init encoder and log-mel statistics.

  Tasks: ``config.probe.tasks`` (EVAR CSVs, ``tfds:NAME``), or, when none are given and the run
  pretrained on the synthetic source, the synthetic event/pitch/timbre tasks on fresh clips
  (seed ``data.synthetic.seed + 1``). Writes ``WORKDIR/probe.json`` and ``probe.md``.
  Returns ``{"pretrained" | "random_init" | "logmel_stats": {task: result}}``.
  """
  from dwm_jax.evaluate import run as eval_run  # pylint: disable=import-outside-toplevel
  results = eval_run.probe_with_baselines(config, workdir)
  table = (f"### Linear probe ({int(config.probe.seeds)} seeds; accuracy or mAP, %)\n\n"
           + eval_run.results_table(results))
  paths.write_text(paths.join(workdir, "probe.json"), json.dumps(results, indent=2))
  paths.write_text(paths.join(workdir, "probe.md"), table)
  log.info("\n%s", table)
  return results


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str, *,
                       on_step: Callable[[int], None] | None = None) -> dict[str, Any]:
  """Validates ``config`` (before any compilation), pretrains in ``workdir`` and, with
  ``config.probe.after_pretrain``, probes the final encoder against a random-init one.
  ``on_step(steps_done)`` runs after every step (see :func:`dwm_jax.train.loop.train`).

  Returns the run summary (also written to ``WORKDIR/summary.json``). Raises
  :class:`dwm_jax.validate.ConfigError` for an invalid config and
  :class:`dwm_jax.train.loop.NonFiniteLossError` when the loss diverges.
  """
  import jax  # pylint: disable=import-outside-toplevel

  validate.validate(config)
  from dwm_jax.train import loop  # pylint: disable=import-outside-toplevel

  summary = loop.train(config, workdir, on_step=on_step)
  if jax.process_index() != 0:
    return summary
  path = paths.join(summary["workdir"], SUMMARY_FILE)
  summary = merge_summary(read_summary(path), summary)
  if config.probe.after_pretrain and not summary["preempted"]:
    summary["probe"] = final_probe(config, workdir)
  paths.write_text(path, json.dumps(summary, indent=2))
  return summary


def read_summary(path: str) -> dict[str, Any] | None:
  try:
    return json.loads(paths.read_text(path))
  except (OSError, ValueError):
    return None


def merge_summary(old: dict[str, Any] | None, new: dict[str, Any]) -> dict[str, Any]:
  """The record of the whole run across restarts: a rerun that trains nothing keeps the figures
  of the invocations that did; training time and steps add up over resumed invocations, and
  each launch's record (``new["launch"]``) joins ``launches``, from which :func:`run_totals`
  derives the whole run's throughput, compile and checkpoint time and the time lost to
  restarts."""
  launches = (old or {}).get("launches", []) + ([new["launch"]] if "launch" in new else [])
  merged = {k: v for k, v in new.items() if k != "launch"}
  if old:
    if not new["steps_trained"]:
      for k in ("final_loss", "clips_per_sec", "throughput", "probe"):
        if old.get(k) is not None:
          merged[k] = old[k]
    merged["train_seconds"] = old.get("train_seconds", 0.0) + new["train_seconds"]
    merged["steps_trained"] = old.get("steps_trained", 0) + new["steps_trained"]
  if launches:
    merged["launches"] = launches
    merged.update(run_totals(launches))
    merged["clips_per_sec"] = merged["throughput"].get("clips_per_sec", merged["clips_per_sec"])
  return merged


def run_totals(launches: list[dict[str, Any]]) -> dict[str, Any]:
  """The whole run's figures from its launches' records (see ``dwm_jax.train.loop.train``).

  ``throughput``: step time, clips/s (overall and per device), TFLOP/s per device and MFU over
  every launch's timed steps, and the share of that time spent waiting for data;
  ``compile_seconds`` and ``checkpoint_seconds`` summed; ``restarts``: the launches that resumed
  a run and trained, the steps they repeated (an earlier launch had done them, but they came
  after its last checkpoint) and their time to the first step; ``seconds_lost`` adds the
  repeated steps at the run's step time. A launch killed before it wrote its summary is missing
  from ``launches``; the next one still counts the steps it repeats.
  """
  last = launches[-1]
  steps = sum(l.get("timed_steps", 0) for l in launches)
  seconds = sum(l.get("timed_seconds", 0.0) for l in launches)
  throughput: dict[str, Any] = {"timed_steps": steps, "timed_seconds": seconds}
  step_time = seconds / steps if steps and seconds else None
  if step_time:
    clips = last["clips_per_step"] / step_time
    throughput.update(step_time=step_time, clips_per_sec=clips,
                      clips_per_sec_per_device=clips / last["devices"],
                      data_wait=sum(l.get("data_wait_seconds", 0.0) for l in launches) / seconds)
    if last.get("flops_per_step"):
      throughput["tflops_per_device"] = last["flops_per_step"] / step_time / 1e12
      if last.get("peak_flops"):
        throughput["mfu"] = last["flops_per_step"] / step_time / last["peak_flops"]
  resumed = [l for l in launches if l.get("resumed_from") is not None and l.get("steps")]
  repeated = sum(l.get("steps_repeated", 0) for l in resumed)
  startup = sum(l.get("startup_seconds") or 0.0 for l in resumed)
  return {
      "throughput": throughput,
      "compile_seconds": sum(l.get("compile_seconds", 0.0) for l in launches),
      "checkpoint_seconds": sum(l.get("checkpoint_seconds", 0.0) for l in launches),
      "restarts": {"count": len(resumed), "steps_repeated": repeated, "startup_seconds": startup,
                   "seconds_lost": startup + repeated * (step_time or 0.0)},
  }


def split_mask_options(argv: list[str]) -> tuple[list[str], list[tuple[str, str]]]:
  """Takes ``--config.mask.options.NAME=VALUE`` (or ``... NAME VALUE``) out of ``argv``.

  The strategy's options are typed by its registered defaults, which the config file cannot know
  in advance, so they are applied once the config (and ``mask.name``) is final.
  """
  rest, options = [], []
  it = iter(argv)
  for arg in it:
    if not arg.startswith(OPTION_FLAG):
      rest.append(arg)
      continue
    name, sep, value = arg[len(OPTION_FLAG):].partition("=")
    if not sep:
      value = next(it, None)
      if value is None:
        raise ValueError(f"{arg} needs a value")
    options.append((name, value))
  return rest, options


def apply_mask_options(config: ml_collections.ConfigDict, options: list[tuple[str, str]]) -> None:
  """Sets each ``(NAME, text)`` as ``config.mask.options.NAME``, typed by the strategy."""
  from dwm_jax import masking  # pylint: disable=import-outside-toplevel
  problems = []
  for name, text in options:
    try:
      value = masking.parse_option(config.mask.name, name, text)
    except ValueError as e:
      problems.append(f"mask.options.{name}: {e}")
      continue
    with config.unlocked():
      config.mask.options[name] = value
  if problems:
    raise validate.ConfigError(problems)


def _flags(argv: list[str]) -> tuple[flags.FlagValues, Any]:
  """Flags of one ``main`` call (a fresh ``FlagValues``: main can run many times in a process)."""
  fv = flags.FlagValues()
  # config_flags finds the config file in ``sys_argv`` early, to define its --config.X flags.
  config = config_flags.DEFINE_config_file(
      "config", None, "config file, optionally with an argument: configs/m2d.py:mask=dwm",
      flag_values=fv, sys_argv=argv)
  flags.DEFINE_string("workdir", None, "run folder, local or a bucket (gs://bucket/run): "
                      "checkpoints, logs, config, summary",
                      flag_values=fv)
  flags.DEFINE_string("coordinator_address", None,
                      "multi-host: HOST:PORT of process 0 (or JAX_COORDINATOR_ADDRESS)",
                      flag_values=fv)
  flags.DEFINE_integer("num_processes", None, "multi-host: number of processes "
                       "(or JAX_NUM_PROCESSES)", flag_values=fv)
  flags.DEFINE_integer("process_id", None, "multi-host: this process's index (or JAX_PROCESS_ID)",
                       flag_values=fv)
  flags.DEFINE_bool("distributed", False, "multi-host with JAX's auto-detection (TPU pods, "
                    "SLURM, Open MPI)", flag_values=fv)
  flags.DEFINE_integer("heartbeat_timeout_seconds", distributed.HEARTBEAT_TIMEOUT_SECONDS,
                       "multi-host: a process without heartbeat for this long counts as lost, and "
                       "every other one stops (exit status 75)", flag_values=fv)
  flags.DEFINE_integer("collective_timeout_seconds", None, "multi-host on CPUs: how long a "
                       "gloo collective waits for the other processes (XLA's default: 1800)",
                       flag_values=fv)
  flags.DEFINE_enum("log_level", "info", ["debug", "info", "warning"], "console log level",
                    flag_values=fv)
  flags.DEFINE_bool("debug", False, f"show the traceback of expected failures too (or "
                    f"{faults.DEBUG_ENV}=1)", flag_values=fv)
  return fv, config


def _unknown_field_message(error: str, argv: list[str]) -> str:
  """``--config.mask.rato=0.6`` -> ``unknown config field mask.rato (did you mean "ratio"?)``."""
  names = [a[len("--config."):].split("=")[0] for a in argv if a.startswith("--config.")]
  key = re.search(r"'(\w+)'", error)
  bad = [n for n in names if key and n.split(".")[-1] == key.group(1)] or names
  hint = re.search(r'Did you mean "(\w+)"', error)
  return (f"unknown config field {', '.join(bad) or error}"
          + (f' (did you mean "{hint.group(1)}"?)' if hint else ""))


def main(argv: Sequence[str] | None = None) -> int:
  """``dwm-jax pretrain --config FILE[:ARG] --workdir W [--config.FIELD=VALUE ...]``."""
  argv = list(sys.argv[1:] if argv is None else argv)
  command = list(argv)
  prog = "dwm-jax pretrain"
  try:
    argv, mask_options = split_mask_options(argv)
    fv, config_flag = _flags([prog, *argv])
    fv([prog, *argv])
    if fv.config is None or fv.workdir is None:
      raise flags.Error("--config and --workdir are required")
  except (flags.Error, ValueError, AttributeError, KeyError) as e:
    # config_flags reports an override of a field that does not exist as a KeyError or an
    # AttributeError whose message is the missing key (plus a suggestion).
    msg = str(e.args[0]) if e.args else str(e)
    if isinstance(e, (KeyError, AttributeError)):
      msg = _unknown_field_message(msg, argv)
    print(f"{prog}: {msg}\nusage: {prog} --config configs/quickstart.py --workdir DIR "
          "[--config.FIELD=VALUE ...]", file=sys.stderr)
    return 2
  console.setup_logging(fv.log_level)
  if fv.debug:
    os.environ[faults.DEBUG_ENV] = "1"  # library-level log filters read it too
  config = config_flag.value
  try:
    setup = distributed.resolve(fv.coordinator_address, fv.num_processes, fv.process_id,
                                auto=fv.distributed,
                                heartbeat_timeout_seconds=fv.heartbeat_timeout_seconds,
                                collective_timeout_seconds=fv.collective_timeout_seconds)
  except ValueError as e:
    print(f"{prog}: {e}", file=sys.stderr)
    return 2
  if setup.multi_process and not distributed.supervised():
    return supervisor.run(supervisor.trainer_command(command), prog=prog, workdir=fv.workdir,
                          setup=setup)
  if distributed.supervised():
    supervisor.die_with_parent()
  distributed.initialize(setup)
  try:
    apply_mask_options(config, mask_options)
    summary = train_and_evaluate(config, fv.workdir, on_step=distributed.report_step)
  except (faults.Fault, OSError, RuntimeError, ValueError) as e:
    # A failed collective, even inside a save ("saving checkpoint N failed (... Gloo AllGather
    # failed ...)"), means another process stopped: nothing here to fix.
    failed = distributed.collective_failure_in(e) if setup.multi_process else None
    if failed is not None:
      e = distributed.CollectiveFailure(failed)
    elif not isinstance(e, (faults.Fault, OSError)):
      raise
    return _stop(prog, e, setup, debug=fv.debug)
  if "probe" in summary:
    log.info("probe: %s", json.dumps(summary["probe"]))
  return 0


def _stop(prog: str, e: BaseException, setup: distributed.Setup, *, debug: bool) -> int:
  """Reports a fault in one line: on stderr, or, under the supervisor, to it (which prints it
  unless this process was lost in the meantime) before leaving without the shutdown barrier."""
  if not distributed.supervised():
    return console.report_fault(prog, e, debug=debug)
  if faults.debug_enabled(debug):
    traceback.print_exception(e)
  line, status = console.fault_message(prog, e)
  distributed.report_end(line, status)
  distributed.leave(status, setup.heartbeat_timeout_seconds,
                    peer_lost=isinstance(e, distributed.CollectiveFailure))
  return status


if __name__ == "__main__":
  sys.exit(main())
