"""The train state pytree and its construction from the config."""
from __future__ import annotations

from typing import Any

import flax.struct
import jax
import jax.numpy as jnp

from dwm_jax import masking, objectives, patching
from dwm_jax.train.optimizer import make_optimizer


class TrainState(flax.struct.PyTreeNode):
  """``step`` counts train-step calls. ``target_params`` is M2D's EMA target (None for MAE).

  Arrays only: the optimizer and apply functions are rebuilt from the config by the step
  (``make_optimizer`` is deterministic), so checkpoints hold data alone and a restored or
  re-created state hits the same compiled step (a function in the treedef would not compare
  equal across constructions and would force a retrace).
  """
  step: jnp.ndarray
  params: Any
  target_params: Any
  opt_state: Any


def dummy_inputs(config, batch: int = 1) -> tuple[jnp.ndarray, masking.MaskIds]:
  """Zero patches ``[batch, N, P]`` and a valid mask's ids, for shape-only initialisation."""
  grid = patching.grid_for(tuple(config.model.input_shape), tuple(config.model.patch_size))
  ph, pw = config.model.patch_size
  n = grid.num_patches
  k = patching.num_masked(n, float(config.mask.ratio))
  mask = jnp.broadcast_to(jnp.arange(n) >= n - k, (batch, n))
  return jnp.zeros((batch, n, ph * pw), jnp.float32), masking.mask_to_ids(mask, k)


def create_train_state(config, key: jax.Array, *, total_steps: int,
                       steps_per_epoch: int) -> TrainState:
  """Fresh parameters (from ``key``), EMA target copy, optimizer state; step 0."""
  objective = objectives.from_config(config)
  patches, ids = dummy_inputs(config)
  params = jax.jit(objective.init)(key, patches, ids)
  tx = make_optimizer(config, total_steps=total_steps, steps_per_epoch=steps_per_epoch)
  return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                    target_params=objective.init_target(params), opt_state=tx.init(params))


def encoder_params(params: Any) -> Any:
  """The encoder's parameters (what export and evaluation use) from the objective's params.

  Accepts the objective params or a whole :class:`TrainState`.
  """
  if isinstance(params, TrainState):
    params = params.params
  if "encoder" not in params:
    raise ValueError(f"no 'encoder' in params; top-level keys: {sorted(params)}")
  return params["encoder"]
