"""The pure train step over the global batch, with the mask sampled inside it.

One call: patchify the log-mels, sample the mask with the run's strategy (key folded with the
step counter), forward + loss, optax update, EMA update of M2D's target. The hint, learning rate
and EMA decay come from the :class:`~dwm_jax.train.setup.RunSetup` schedules at ``state.step``,
so the host passes nothing that changes per step and nothing ever recompiles.

The step is written for the global batch; :func:`jit_train_step` shards it over the data mesh
(``dwm_jax.train.mesh``): XLA partitions the batch axis and averages the gradients across
devices. A strategy that scores encoder features (``informed``) gets the online encoder's tokens
over all patches, computed without gradient: that pass is part of the step's cost, which is what
the DWM paper measures against.
"""
from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh

from dwm_jax import masking, patching
from dwm_jax.train import ema, mesh as mesh_lib, optimizer
from dwm_jax.train.setup import RunSetup
from dwm_jax.train.state import TrainState


def step_keys(key: jax.Array, step: Any) -> tuple[jax.Array, jax.Array]:
  """``(mask key, dropout key)`` of one step, from the run's base key."""
  k_mask, k_drop = jax.random.split(jax.random.fold_in(key, step))
  return k_mask, k_drop


def mask_diagnostics(patches: jnp.ndarray, mask: jnp.ndarray,
                     grid: patching.Grid) -> dict[str, jnp.ndarray]:
  """Mean dispersion (MAD) of masked vs visible patches; fraction masked per frequency row."""
  disp = masking.dispersion(patches)  # [B, N]
  m = mask.astype(jnp.float32)
  out = {
      "mask/dispersion_masked": jnp.sum(disp * m) / jnp.maximum(jnp.sum(m), 1.0),
      "mask/dispersion_visible": jnp.sum(disp * (1 - m)) / jnp.maximum(jnp.sum(1 - m), 1.0),
  }
  rows = jnp.mean(m.reshape(m.shape[0], grid.freq, grid.time), axis=(0, 2))  # [Fp]
  for f in range(grid.freq):
    out[f"mask/frac_row_{f}"] = rows[f]
  return out


def train_step(state: TrainState, batch: dict[str, jnp.ndarray], key: jax.Array, *,
               setup: RunSetup) -> tuple[TrainState, dict[str, jnp.ndarray], jnp.ndarray]:
  """One optimisation step on the global batch.

  Args:
    state: the train state.
    batch: ``{'logmel': float [B, F, T]}``, normalized; with ``'mask': bool [B, N]`` too, that
      mask is used instead of sampling one (the benchmarks' reference step).
    key: the run's base key, folded here with ``state.step``.
    setup: the run's pieces (static).

  Returns:
    ``(new_state, metrics, mask)``: scalar metrics averaged over the batch, and the mask the step
    trained on (``bool [B, N]``; the loop draws its PNGs from it).
  """
  k_mask, k_drop = step_keys(key, state.step)
  hint = setup.hint(state.step)
  patches = patching.patchify(batch["logmel"].astype(jnp.float32), setup.patch_size)
  if "mask" in batch:
    mask = batch["mask"]
  else:
    mask = setup.sample_mask(k_mask, patches, hint, state.params)
  ids = masking.mask_to_ids(mask, setup.num_masked)
  objective = setup.objective

  def loss_fn(params):
    return objective.loss(params, state.target_params, patches, ids, rng=k_drop, train=True)

  (loss, aux), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
  updates, opt_state = setup.tx.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)

  decay = setup.ema_decay(state.step)
  target = state.target_params
  if objective.uses_target:
    moved = ema.ema_update(target, objective.target_params_of(params), decay)
    # With gradient accumulation the target follows only real optimizer updates.
    updated = optimizer.is_update_step(opt_state)
    target = jax.tree.map(lambda new, old: jnp.where(updated, new, old), moved, target)

  grad_norm = optax.global_norm(grads)
  done = state.step + 1
  finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
  first_nonfinite = jnp.where((state.first_nonfinite < 0) & ~finite, done,
                              state.first_nonfinite)
  metrics = {
      "loss": loss,
      "grad_norm": grad_norm,
      "param_norm": optax.global_norm(params),
      "update_norm": optax.global_norm(updates),
      "lr": setup.learning_rate(state.step),
      "ema_decay": decay,
      "hint": hint,
      **{f"aux/{name}": v for name, v in aux.items()},
      **mask_diagnostics(patches, mask, setup.grid),
  }
  new_state = state.replace(step=done, params=params, target_params=target,
                            opt_state=opt_state, first_nonfinite=first_nonfinite)
  return new_state, metrics, mask


def jit_train_step(setup: RunSetup, mesh: Mesh) -> Any:
  """:func:`train_step` jitted over ``mesh``: state replicated (and donated), batch split.

  Call as ``step(state, batch, key)``; lower it with abstract arguments for an ahead-of-time
  compile (``dwm_jax.train.memory``).
  """
  rep, split = mesh_lib.replicated(mesh), mesh_lib.batch_sharded(mesh)
  return jax.jit(functools.partial(_traced_step, setup=setup),
                 in_shardings=(rep, split, rep), out_shardings=(rep, rep, split),
                 donate_argnums=(0,))


def _traced_step(state, batch, key, *, setup):
  # Looked up at trace time, so tests can wrap the module's ``train_step``.
  return train_step(state, batch, key, setup=setup)
