"""The probe that ends a pretraining run: its encoder vs a random-init one, on ``config.probe``.

Tasks: ``config.probe.tasks`` (EVAR CSVs or ``tfds:NAME``); when none are given and the run
pretrained on the synthetic source, the synthetic event / pitch / timbre tasks on
``config.probe.synthetic_clips`` clips drawn with a *different* seed than the pretraining clips.
"""
from __future__ import annotations

import logging
import os
from typing import Any

import ml_collections
import numpy as np

from dwm_jax.evaluate.encoder import load_encoder, random_encoder
from dwm_jax.evaluate.probe import ProbeConfig, evaluate_tasks

log = logging.getLogger(__name__)


def config_tasks(config: ml_collections.ConfigDict) -> list:
  """The probe tasks a config names (see the module docstring)."""
  from dwm_jax.evaluate.probe_cli import load_tasks
  specs = list(config.probe.tasks or ())
  synthetic = 0
  if not specs:
    if config.data.source != "synthetic":
      raise ValueError("probe.tasks is empty and data.source is not synthetic: name the task "
                       "CSVs (or tfds:NAME) to probe with --config.probe.tasks")
    synthetic = int(config.probe.synthetic_clips)
  from dwm_jax.data.labeled import synthetic_tasks
  tasks = load_tasks(specs, data_dir=config.data.get("tfds_data_dir") or None)
  if synthetic:
    tasks = synthetic_tasks(synthetic, seed=int(config.data.synthetic.seed) + 1,
                            seconds=float(config.data.synthetic.seconds)) + tasks
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


def probe_vs_random(config: ml_collections.ConfigDict, workdir: str,
                    tasks: list | None = None) -> dict[str, Any]:
  """Probes the workdir's latest encoder and a random-init encoder of the same architecture.

  Returns ``{"pretrained": results, "random_init": results, "average": {"pretrained": float,
  "random_init": float}, "table": markdown}`` where ``results`` is
  ``{task: {"metric", "mean", "std", "seeds"}}`` (see ``evaluate_tasks``).
  """
  tasks = config_tasks(config) if tasks is None else tasks
  encoder = load_encoder(workdir)
  baseline = random_encoder(encoder.model_cfg, seed=int(config.seed),
                            norm_mean=encoder.norm_mean, norm_std=encoder.norm_std)
  seeds = int(config.probe.seeds)
  cache = os.path.join(workdir, "probe_cache")
  out = {"pretrained": evaluate_tasks(encoder, tasks, seeds=seeds, cache_dir=cache,
                                      config=ProbeConfig()),
         "random_init": evaluate_tasks(baseline, tasks, seeds=seeds, cache_dir=cache,
                                       config=ProbeConfig())}
  out["average"] = {k: average(v) for k, v in out.items()}
  out["table"] = comparison_table({"pretrained": out["pretrained"],
                                   "random init": out["random_init"]})
  log.info("linear probe (%d seeds):\n%s", seeds, out["table"])
  return out
