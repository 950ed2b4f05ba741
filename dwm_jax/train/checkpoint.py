"""Orbax checkpoints of a pretraining run: train state, RNG, data iterator state and config.

Layout: ``WORKDIR/checkpoints/<step>/{state,data,config}``. ``state`` holds the unreplicated
``TrainState`` (params, optimizer state, EMA target, step) and the run's base RNG key; ``data``
the grain iterator state (one JSON file per process, grain's own orbax handler); ``config`` the
run's config as JSON, so a checkpoint alone can rebuild its model.

Saves are asynchronous and atomic: orbax writes into ``<step>.orbax-checkpoint-tmp-*`` and renames
it only once everything is written, so a run killed mid-save leaves a temporary folder that is
ignored (and removed) at the next start, never a half-written step.
"""
from __future__ import annotations

import json
import logging
import os
from typing import Any

import grain.checkpoint as grain_ckpt
import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp

from dwm_jax import config as config_lib

log = logging.getLogger(__name__)

CHECKPOINT_DIR = "checkpoints"
CONFIG_FILE = "config.json"


def checkpoint_dir(workdir: str) -> str:
  return os.path.join(os.path.abspath(workdir), CHECKPOINT_DIR)


def make_manager(workdir: str, ckpt_cfg: ml_collections.ConfigDict | None = None, *,
                 read_only: bool = False) -> ocp.CheckpointManager:
  """A manager keeping the last ``keep`` saves plus every ``keep_period``-th step.

  The loop decides when to save (``save(..., force=True)``), so no save interval is set here.
  """
  keep = int(ckpt_cfg.keep) if ckpt_cfg is not None else 3
  period = int(ckpt_cfg.keep_period) if ckpt_cfg is not None else 0
  policies = [ocp.checkpoint_managers.LatestN(n=keep)]
  if period > 0:
    policies.append(ocp.checkpoint_managers.EveryNSteps(interval_steps=period))
  options = ocp.CheckpointManagerOptions(
      enable_async_checkpointing=bool(ckpt_cfg.async_save) if ckpt_cfg is not None else False,
      preservation_policy=ocp.checkpoint_managers.AnyPreservationPolicy(policies),
      save_interval_steps=0 if read_only else 1,
      cleanup_tmp_directories=not read_only,
      read_only=read_only,
      create=not read_only)
  return ocp.CheckpointManager(checkpoint_dir(workdir), options=options)


def save(manager: ocp.CheckpointManager, step: int, *, state: Any, rng: jax.Array,
         data_iter: Any, config: ml_collections.ConfigDict) -> None:
  """Starts an (async) save of ``state`` (host pytree, unreplicated) at ``step``.

  The data iterator's state is read now, synchronously: the iterator may advance as soon as this
  returns. Call ``manager.wait_until_finished()`` before exiting.
  """
  items = dict(
      state=ocp.args.StandardSave({"train": state, "rng": np.asarray(jax.random.key_data(rng))}),
      config=ocp.args.JsonSave(json.loads(config.to_json_best_effort())))
  if data_iter is not None:
    items["data"] = grain_ckpt.CheckpointSave(data_iter)
  manager.save(step, args=ocp.args.Composite(**items), force=True)


def restore(manager: ocp.CheckpointManager, step: int, *, state_template: Any,
            data_iter: Any) -> tuple[Any, jax.Array]:
  """Restores ``(host_state, rng)`` of ``step`` and sets ``data_iter`` to its saved position.

  ``state_template`` is a host (numpy) pytree of the right structure, shapes and dtypes.
  """
  key_template = np.asarray(jax.random.key_data(jax.random.key(0)))
  items = dict(state=ocp.args.StandardRestore({"train": state_template, "rng": key_template}))
  if data_iter is not None:
    items["data"] = grain_ckpt.CheckpointRestore(data_iter)
  out = manager.restore(step, args=ocp.args.Composite(**items))
  restored = out["state"]
  state = jax.tree.map(np.asarray, restored["train"])
  return state, jax.random.wrap_key_data(np.asarray(restored["rng"], np.uint32))


def saved_config(manager: ocp.CheckpointManager, step: int) -> ml_collections.ConfigDict:
  """The config stored with checkpoint ``step``."""
  out = manager.restore(step, args=ocp.args.Composite(config=ocp.args.JsonRestore()))
  return ml_collections.ConfigDict(out["config"])


def config_diff(old: ml_collections.ConfigDict, new: ml_collections.ConfigDict) -> list[str]:
  """``field: old -> new`` lines for the fields where two configs differ."""
  a, b = config_lib.flatten(old), config_lib.flatten(new)
  return [f"{k}: {a.get(k)!r} -> {b.get(k)!r}" for k in sorted(set(a) | set(b))
          if a.get(k) != b.get(k)]


def write_config(workdir: str, config: ml_collections.ConfigDict) -> str:
  """``WORKDIR/config.json`` for people and tools (the checkpoints carry their own copy)."""
  path = os.path.join(workdir, CONFIG_FILE)
  os.makedirs(workdir, exist_ok=True)
  tmp = f"{path}.tmp-{os.getpid()}"
  with open(tmp, "w") as f:
    f.write(config.to_json_best_effort(indent=2, sort_keys=True))
  os.replace(tmp, path)
  return path


def restore_encoder(workdir: str, step: int | None = None
                    ) -> tuple[ml_collections.ConfigDict, Any]:
  """``(config, encoder_params)`` of a workdir's latest (or given) checkpoint, on the host.

  Used by ``dwm_jax.evaluate.encoder.load_encoder`` and ``dwm-jax export``.
  """
  from dwm_jax.train.state import encoder_params  # the state module knows the params layout

  if not os.path.isdir(checkpoint_dir(workdir)):
    raise FileNotFoundError(f"no checkpoints under {checkpoint_dir(workdir)!r}: is {workdir!r} "
                            "a pretraining workdir?")
  manager = make_manager(workdir, read_only=True)
  try:
    step = manager.latest_step() if step is None else step
    if step is None:
      raise FileNotFoundError(f"{checkpoint_dir(workdir)!r} holds no finished checkpoint")
    out = manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(),
                                                        config=ocp.args.JsonRestore()))
  finally:
    manager.close()
  params = out["state"]["train"]["params"]
  log.info("restored encoder of %s at step %d", workdir, step)
  return ml_collections.ConfigDict(out["config"]), jax.tree.map(np.asarray, encoder_params(params))
