"""The probe that ends a pretraining run: its encoder vs the baselines, on ``config.probe``.

Tasks: ``config.probe.tasks`` (EVAR CSVs or ``tfds:NAME``); when none are given and the run
pretrained on the synthetic source, the synthetic event / pitch / timbre tasks on
``config.probe.synthetic_clips`` clips drawn with a *different* seed than the pretraining clips.
Then the real-audio tasks of ``config.probe.rendered`` (``dwm_jax.data.rendered``), rendered
once into ``WORKDIR/rendered`` where their Debian packages are installed; where they are not,
one log line says which package is missing and the table keeps the other tasks.
"""
from __future__ import annotations

import logging

import ml_collections
import numpy as np

from dwm_jax import paths
from dwm_jax.evaluate.encoder import load_encoder, random_encoder
from dwm_jax.evaluate.probe import ProbeConfig, evaluate_tasks

log = logging.getLogger(__name__)

RENDERED_DIR = "rendered"


def rendered_tasks(names, folder: str, n_mels: int = 80, per_class=None) -> list:
  """The rendered tasks ``names`` that this machine can render, rendered into (or reused from)
  ``folder`` with seed 0 and ``per_class`` clips per class (default: the tasks of
  ``experiments/finetune``)."""
  from dwm_jax.data import labeled, rendered
  from dwm_jax.data.log_mel import LogMelSpec
  ok, reasons = rendered.available(tuple(names))
  for why in reasons:
    log.warning("probe: %s; probing the other tasks without it", why)
  sizes = tuple(per_class or rendered.PER_CLASS)
  return [labeled.load_csv_task(rendered.render(name, folder, per_class=sizes),
                                spec=LogMelSpec(n_mels=n_mels)) for name in ok]


def config_tasks(config: ml_collections.ConfigDict, workdir: str | None = None) -> list:
  """The probe tasks a config names (see the module docstring); log-mels sized for the model.
  ``workdir`` holds the rendered tasks (none without it)."""
  from dwm_jax.data.labeled import synthetic_tasks
  from dwm_jax.data.log_mel import LogMelSpec
  from dwm_jax.data.labeled import load_tasks
  specs = list(config.probe.tasks or ())
  if not specs and config.data.source != "synthetic":
    raise ValueError("probe.tasks is empty and data.source is not synthetic: name the task "
                     "CSVs (or tfds:NAME) to probe with --config.probe.tasks")
  tasks = load_tasks(specs, data_dir=config.data.get("tfds_data_dir") or None)
  if not specs:
    s = config.data.synthetic
    tasks = synthetic_tasks(int(config.probe.synthetic_clips), seed=int(s.seed) + 1,
                            seconds=float(s.seconds),
                            spec=LogMelSpec(n_mels=int(config.model.input_shape[0])))
  names = config.probe.get("rendered", ()) or ()
  if workdir is not None and names:
    tasks += rendered_tasks((names,) if isinstance(names, str) else names,
                            paths.join(workdir, RENDERED_DIR), int(config.model.input_shape[0]),
                            tuple(config.probe.rendered_per_class))
  return tasks


def average(results: dict[str, dict]) -> float:
  """Mean of the per-task means (the summary figure of a task suite)."""
  return float(np.mean([r["mean"] for r in results.values()])) if results else float("nan")


def comparison_table(rows: dict[str, dict[str, dict]]) -> str:
  """``{model label: evaluate_tasks results}`` -> Markdown, one column per task, plus average."""
  tasks = list(next(iter(rows.values())))
  head = "| model | " + " | ".join(tasks) + " | average |"
  lines = [head, "|---|" + "---:|" * (len(tasks) + 1)]
  for label, res in rows.items():
    cells = [f"{100 * res[t]['mean']:.1f} ± {100 * res[t]['std']:.1f}" for t in tasks]
    lines.append(f"| {label} | " + " | ".join(cells) + f" | {100 * average(res):.1f} |")
  return "\n".join(lines) + "\n"


LABELS = {"random_init": "random-init encoder", "logmel_stats": "log-mel statistics"}


def probe_with_baselines(config: ml_collections.ConfigDict, workdir: str,
                    tasks: list | None = None) -> dict[str, dict]:
  """Probes the workdir's latest encoder and the baselines on the same tasks.

  Baselines: a random-init encoder of the same architecture (seed ``config.seed``) and per-bin
  log-mel statistics. Returns ``{"pretrained" | "random_init" | "logmel_stats": results}``,
  ``results = {task: {"metric", "mean", "std", "seeds"}}`` (see ``evaluate_tasks``).
  """
  tasks = config_tasks(config, workdir) if tasks is None else tasks
  encoder = load_encoder(workdir)
  baseline = random_encoder(encoder.model_cfg, seed=int(config.seed),
                            norm_mean=encoder.norm_mean, norm_std=encoder.norm_std)
  seeds = int(config.probe.seeds)
  cache = paths.join(workdir, "probe_cache")
  models = {"pretrained": encoder, "random_init": baseline, "logmel_stats": "logmel"}
  return {name: evaluate_tasks(m, tasks, seeds=seeds, cache_dir=cache, config=ProbeConfig())
          for name, m in models.items()}


def results_table(results: dict[str, dict]) -> str:
  """:func:`probe_with_baselines`'s results as one Markdown table, models as rows."""
  return comparison_table({LABELS.get(k, k): v for k, v in results.items()})
