"""``finetune``: fine-tune an encoder on labeled tasks over seeds; ``finetune.json`` + table.

Layout of ``out``: ``config.json``, ``finetune.json`` (``{task: {"metric", "mean", "std",
"seeds"}}``, the schema of ``probe.json``), ``finetune.md`` and ``runs/<task>/seed_<s>/``
(orbax checkpoints, ``metrics.jsonl``, ``result.json``). Rerunning the same call resumes
unfinished runs and reuses finished ones.
"""
from __future__ import annotations

import json
import logging
from typing import Callable, Sequence

import jax
import ml_collections
import numpy as np

from dwm_jax import paths
from dwm_jax.data import labeled
from dwm_jax.evaluate.encoder import Encoder, load_encoder
from dwm_jax.evaluate.finetuning import config as config_lib
from dwm_jax.evaluate.finetuning import data, loop, step
from dwm_jax.evaluate.probe import markdown_table
from dwm_jax.train import checkpoint as ckpt
from dwm_jax.train import memory
from dwm_jax.train import mesh as mesh_lib

log = logging.getLogger("dwm_jax.finetune")

RESULTS_FILE = "finetune.json"
TABLE_FILE = "finetune.md"


def _summary(scores: list[float], metric: str) -> dict:
  return {"metric": metric, "mean": float(np.mean(scores)), "std": float(np.std(scores)),
          "seeds": len(scores)}


def finetune(encoder: Encoder | str, tasks: Sequence[str | labeled.Task], out: str, *,
             config: ml_collections.ConfigDict | None = None, seeds: int | None = None,
             synthetic: int = 0, synthetic_seed: int = 1, data_dir: str | None = None,
             sep: str = ",", title: str | None = None,
             on_step: Callable[[str, int, int], None] | None = None) -> dict[str, dict]:
  """Fine-tunes ``encoder`` (plus a linear head) on every task, ``config.seeds`` times each.

  Args:
    encoder: an :class:`Encoder`, an export file or a pretraining workdir.
    tasks: EVAR CSVs, ``tfds:NAME`` specs or loaded :class:`dwm_jax.data.labeled.Task` objects.
    out: output folder (see the module docstring); a rerun resumes it.
    config: :func:`dwm_jax.evaluate.finetuning.config.base_config` (or ``configs/finetune.py``)
      with any overrides; validated, every bad field named, before anything is compiled.
    seeds: overrides ``config.seeds``.
    synthetic, synthetic_seed: also the synthetic event / pitch / timbre tasks on that many clips.
    data_dir, sep: TFDS data folder; separator of multi-label CSV labels.
    title: the table's title (default: the encoder's source).
    on_step: ``on_step(task, seed, steps_done)`` after every step (for tests and notebooks).

  Returns:
    ``{task: {"metric": "accuracy" | "mAP", "mean", "std", "seeds"}}`` over the seeds' test
    scores (each the best valid evaluation's parameters). Raises ``ConfigError`` /
    ``ValueError`` / ``FileNotFoundError`` on bad input (before any compile) and
    ``memory.DoesNotFit`` when the step cannot fit in device memory.
  """
  config = ml_collections.ConfigDict(config_lib.base_config() if config is None else config)
  if seeds is not None:
    config.seeds = int(seeds)
  n_dev = jax.device_count()
  if jax.process_count() > 1:
    raise ValueError("fine-tuning runs in one process (on all its local devices); "
                     f"this is process {jax.process_index()} of {jax.process_count()}")
  config_lib.validate(config, device_count=n_dev)
  if isinstance(encoder, str):
    paths.check_bucket(encoder)  # a bad bucket fails before anything is loaded or compiled
  paths.check_writable(out)
  label = title or (encoder if isinstance(encoder, str) else "encoder")
  if isinstance(encoder, str):
    encoder = load_encoder(encoder)
  config_lib.validate(config, device_count=n_dev, input_shape=encoder.input_shape,
                      patch_size=encoder.patch_size)
  specs = [t for t in tasks if isinstance(t, str)]
  loaded = labeled.load_tasks(specs, synthetic=synthetic, synthetic_seed=synthetic_seed,
                              data_dir=data_dir, sep=sep) if specs or synthetic else []
  loaded += [t for t in tasks if not isinstance(t, str)]
  if not loaded:
    raise ValueError("nothing to fine-tune on: give task CSVs, tfds:NAME or synthetic clips")
  for t in loaded:
    f = t.split("train")[0][0].shape[0]
    if f != encoder.input_shape[0]:
      raise ValueError(f"task {t.name}: log-mels have {f} bins, the encoder takes "
                       f"{encoder.input_shape[0]}")
    if t.skipped:
      log.warning("task %s: %d files skipped when loading: %s", t.name, sum(t.skipped.values()),
                  t.skipped)

  paths.makedirs(out)
  ckpt.write_config(out, config)
  mesh = mesh_lib.data_mesh()
  seed_list = [int(config.seed) + i for i in range(int(config.seeds))]
  results, per_seed = {}, {}
  for task in loaded:
    split0 = data.split_task(task, seed_list[0])
    window = step.task_window(config, encoder, [c.shape[1] for c in task.split("train")[0]])
    setup = step.build(config, encoder, num_train=len(split0.train[0]),
                       num_classes=task.num_classes, multilabel=task.multilabel, window=window)
    log.info("task %s: %d train / %d valid%s / %d test clips, %d classes; %d-frame windows "
             "(%d patch columns); %d steps per epoch, %d steps", task.name, len(split0.train[0]),
             len(split0.valid[0]), " (held out of train)" if split0.held_out else "",
             len(split0.test[0]), task.num_classes, window, setup.grid.time,
             setup.steps_per_epoch, setup.total_steps)
    compiled, plan = step.compile_step(setup, mesh, encoder.params)  # once per task
    log.info("%s", plan.summary())
    memory.check(plan)
    evaluator = loop.Evaluator(setup, mesh, step.jit_embed_windows(setup, mesh))
    scores = []
    for s in seed_list:
      splits = split0 if s == seed_list[0] or not split0.held_out else data.split_task(task, s)
      hook = (lambda n, _t=task.name, _s=s: on_step(_t, _s, n)) if on_step else None
      r = loop.run(setup, compiled, evaluator, encoder, splits,
                   paths.join(out, "runs", task.name, f"seed_{s}"), s, on_step=hook)
      if r["preempted"]:
        raise loop.Preempted(f"stopped by a signal in task {task.name}, seed {s}, at step "
                             f"{r['steps']} (checkpoint saved); rerun the same command to resume")
      scores.append(r["score"])
    per_seed[task.name] = scores
    results[task.name] = _summary(scores, "mAP" if task.multilabel else "accuracy")
  table = markdown_table(results, title=f"Fine-tuning: {label}")
  loop.write_json(paths.join(out, RESULTS_FILE), results)
  paths.write_text(paths.join(out, TABLE_FILE), table)
  log.info("per-seed test scores: %s", json.dumps(per_seed))
  return results
