"""The train state pytree and its construction from the run setup."""
from __future__ import annotations

from typing import Any

import flax.struct
import jax
import jax.numpy as jnp

from dwm_jax import masking
from dwm_jax.train.setup import RunSetup


class TrainState(flax.struct.PyTreeNode):
  """``step`` counts train-step calls. ``target_params`` is M2D's EMA target (None for MAE).

  ``first_nonfinite`` is the step count at which the loss or gradient norm first became NaN/Inf
  (-1 while finite): the step records it on the device, so the host needs no per-step check.
  Arrays only: the optimizer and apply functions live in the :class:`RunSetup`, so checkpoints
  hold data alone and a restored state runs the same compiled step.
  """
  step: jnp.ndarray
  params: Any
  target_params: Any
  opt_state: Any
  first_nonfinite: jnp.ndarray


def dummy_inputs(setup: RunSetup, batch: int = 1) -> tuple[jnp.ndarray, masking.MaskIds]:
  """Zero patches ``[batch, N, P]`` and a valid mask's ids, for shape-only initialisation."""
  n, k = setup.grid.num_patches, setup.num_masked
  ph, pw = setup.patch_size
  mask = jnp.broadcast_to(jnp.arange(n) >= n - k, (batch, n))
  return jnp.zeros((batch, n, ph * pw), jnp.float32), masking.mask_to_ids(mask, k)


def create_train_state(setup: RunSetup, key: jax.Array) -> TrainState:
  """Fresh parameters (from ``key``), the objective's target, optimizer state; step 0.

  Call it under ``jax.jit`` (or ``jax.eval_shape`` for shapes alone): op by op it would compile
  every initializer separately.
  """
  k_init, k_target = jax.random.split(key)
  patches, ids = dummy_inputs(setup)
  params = setup.objective.init(k_init, patches, ids)
  return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                    target_params=setup.objective.init_target(k_target, params, patches, ids),
                    opt_state=setup.tx.init(params),
                    first_nonfinite=jnp.full((), -1, jnp.int32))


def abstract_train_state(setup: RunSetup) -> TrainState:
  """Shapes and dtypes of the state (``jax.ShapeDtypeStruct`` leaves), computing nothing."""
  return jax.eval_shape(lambda key: create_train_state(setup, key), jax.random.key(0))


def encoder_params(params: Any) -> Any:
  """The encoder's parameters (what export and evaluation use) from the objective's params.

  Accepts the objective params or a whole :class:`TrainState`.
  """
  if isinstance(params, TrainState):
    params = params.params
  if "encoder" not in params:
    raise ValueError(f"no 'encoder' in params; top-level keys: {sorted(params)}")
  return params["encoder"]
