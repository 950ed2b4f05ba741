"""The pure train step, pmapped over local devices, with the mask sampled inside it.

One call: patchify the log-mels, sample the mask with ``config.mask`` (key folded with the step
and the device index, so masks differ across steps and devices), forward + loss, ``pmean`` of
gradients and metrics over ``'batch'``, optax update, EMA update of M2D's target.

A strategy whose registered options include ``features`` (``informed``) gets the online
encoder's tokens over all patches, computed without gradient: that forward is part of the step's
cost, which is what the DWM paper measures against.
"""
from __future__ import annotations

import functools
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax import lax
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from dwm_jax import masking, objectives, patching
from dwm_jax.train import ema, optimizer
from dwm_jax.train.state import TrainState

AXIS = "batch"


def step_keys(key: jax.Array, step: Any, device_index: Any) -> tuple[jax.Array, jax.Array]:
  """``(mask key, dropout key)`` of one device at one step, from the run's base key.

  ``fold_in(fold_in(key, step), device)`` then split: masks differ across steps and devices.
  """
  k = jax.random.fold_in(jax.random.fold_in(key, step), device_index)
  k_mask, k_drop = jax.random.split(k)
  return k_mask, k_drop


def wants_features(name: str) -> bool:
  return "features" in masking.get(name).defaults


def sample_mask(config, key: jax.Array, patches: jnp.ndarray, hint: Any, *,
                objective: Any = None, params: Any = None) -> jnp.ndarray:
  """``patches: [B, N, P]`` -> ``bool [B, N]`` with the configured strategy.

  ``objective`` and ``params`` are needed only by strategies that score encoder features.
  """
  grid = patching.grid_for(tuple(config.model.input_shape), tuple(config.model.patch_size))
  options = dict(config.mask.options)
  if wants_features(config.mask.name):
    if objective is None or params is None:
      raise ValueError(f"masking strategy {config.mask.name!r} needs the online encoder "
                       f"(objective and params)")
    enc = lax.stop_gradient(params["encoder"])
    tokens = objective.encoder.apply({"params": enc}, patches, train=False)
    options["features"] = lax.stop_gradient(tokens[:, 1:])  # [B, N, D], CLS dropped
  return masking.sample(config.mask.name, key, patches, grid=grid, ratio=float(config.mask.ratio),
                        hint=hint, **options)


def mask_diagnostics(patches: jnp.ndarray, mask: jnp.ndarray, grid) -> dict[str, jnp.ndarray]:
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


def train_step(state: TrainState, batch: dict[str, jnp.ndarray], key: jax.Array, hint: Any, *,
               config, objective: Any, tx: optax.GradientTransformation, total_steps: int,
               steps_per_epoch: int,
               precomputed_mask: bool = False, axis_name: str | None = AXIS
               ) -> tuple[TrainState, dict[str, jnp.ndarray]]:
  """One optimisation step on this device's shard.

  Args:
    state: the (replicated) train state.
    batch: ``{'logmel': float [B_local, F, T]}``; with ``precomputed_mask`` also
      ``'mask': bool [B_local, N]`` (then no mask is sampled: the benchmark's reference step).
    key: the run's base key (same on every device); folded with the step and device index.
    hint: the hint ratio for this step (traced float32 scalar: changing it never recompiles).
    axis_name: the pmap axis; None runs the step on one device without collectives.

  Returns:
    The new state and device-averaged scalar metrics.
  """
  grid = patching.grid_for(tuple(config.model.input_shape), tuple(config.model.patch_size))
  k = patching.num_masked(grid.num_patches, float(config.mask.ratio))
  accum = int(config.optim.accum_steps)
  device = lax.axis_index(axis_name) if axis_name else 0
  k_mask, k_drop = step_keys(key, state.step, device)
  hint = jnp.asarray(hint, jnp.float32)

  patches = patching.patchify(batch["logmel"].astype(jnp.float32), tuple(config.model.patch_size))
  if precomputed_mask:
    mask = batch["mask"]
  else:
    mask = sample_mask(config, k_mask, patches, hint, objective=objective, params=state.params)
  ids = masking.mask_to_ids(mask, k)

  def loss_fn(params):
    return objective.loss(params, state.target_params, patches, ids, rng=k_drop, train=True)

  (loss, aux), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
  if axis_name:
    grads = lax.pmean(grads, axis_name)
  updates, opt_state = tx.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)

  decay = ema.ema_decay(state.step, total_steps, float(config.objective.ema_decay_start),
                        float(config.objective.ema_decay_end),
                        str(config.objective.get("ema_schedule", "cosine")))
  target = state.target_params
  if objective.uses_target:
    moved = ema.ema_update(target, objective.target_params_of(params), decay)
    # With gradient accumulation the target follows only real optimizer updates.
    updated = optimizer.is_update_step(opt_state)
    target = jax.tree.map(lambda new, old: jnp.where(updated, new, old), moved, target)

  schedule = optimizer.make_schedule(config, total_steps=total_steps,
                                     steps_per_epoch=steps_per_epoch)
  metrics = {
      "loss": loss,
      "grad_norm": optax.global_norm(grads),
      "param_norm": optax.global_norm(params),
      "update_norm": optax.global_norm(updates),
      "lr": schedule(optimizer.update_count(opt_state, state.step, accum)),
      "ema_decay": decay,
      "hint": hint,
      **{f"aux/{name}": v for name, v in aux.items()},
      **mask_diagnostics(patches, mask, grid),
  }
  if axis_name:
    metrics = lax.pmean(metrics, axis_name)
  new_state = state.replace(step=state.step + 1, params=params, target_params=target,
                            opt_state=opt_state)
  return new_state, metrics


def make_train_step(config, *, total_steps: int, steps_per_epoch: int,
                    precomputed_mask: bool = False, axis_name: str | None = AXIS,
                    on_trace: Callable[[], None] | None = None) -> Callable[..., Any]:
  """``train_step`` with its static arguments bound (not yet transformed).

  ``on_trace`` is called each time the step is traced (tests count recompilations with it).
  """
  objective = objectives.from_config(config)
  masking.resolve_options(config.mask.name, dict(config.mask.options))  # fail before tracing
  tx = optimizer.make_optimizer(config, total_steps=int(total_steps),
                                steps_per_epoch=int(steps_per_epoch))
  bound = functools.partial(train_step, config=config, objective=objective, tx=tx,
                            total_steps=int(total_steps), steps_per_epoch=int(steps_per_epoch),
                            precomputed_mask=precomputed_mask, axis_name=axis_name)

  @functools.wraps(train_step)
  def step(state, batch, key, hint):
    if on_trace is not None:
      on_trace()
    return bound(state, batch, key, hint)

  return step


def make_pmapped_train_step(config, *, total_steps: int, steps_per_epoch: int,
                            precomputed_mask: bool = False,
                            on_trace: Callable[[], None] | None = None) -> Callable[..., Any]:
  """``jax.pmap`` of :func:`train_step` over the local devices, state donated.

  Call as ``step(state, batch, key, hint)``: ``state`` replicated (leading device axis),
  ``batch`` sharded ``[D, B_local, ...]``; ``key`` (one key) and ``hint`` (a scalar) are
  broadcast. Pass ``hint`` as a float32 (a Python float is cast here) so it stays traced.
  """
  step = make_train_step(config, total_steps=total_steps, steps_per_epoch=steps_per_epoch,
                         precomputed_mask=precomputed_mask, axis_name=AXIS, on_trace=on_trace)
  pmapped = jax.pmap(step, axis_name=AXIS, in_axes=(0, 0, None, None), donate_argnums=(0,))

  sharding = device_sharding()

  def call(state, batch, key, hint):
    # pmap's cache keys on input shardings: a state replicated another way (e.g.
    # flax.jax_utils.replicate) would compile twice, so it is re-placed once here.
    leaf = jax.tree.leaves(state)[0]
    if getattr(leaf, "sharding", None) != sharding:
      state = jax.device_put(state, sharding)
    return pmapped(state, batch, key, np.float32(hint))

  call.pmapped = pmapped
  return call


def device_sharding(devices=None) -> NamedSharding:
  """Leading-axis sharding over the local devices on a mesh axis named like the pmap axis.

  pmap's outputs carry this sharding; inputs placed the same way keep its cache warm (a state
  replicated under another mesh name is traced a second time on the next call).
  """
  devices = jax.local_devices() if devices is None else devices
  return NamedSharding(Mesh(np.asarray(devices), (AXIS,)), PartitionSpec(AXIS))


def replicate(tree: Any, devices=None) -> Any:
  """Copies every leaf onto each local device: ``[...] -> [D, ...]`` (for the state)."""
  sharding = device_sharding(devices)
  d = len(sharding.mesh.devices)
  return jax.device_put(jax.tree.map(lambda x: jnp.broadcast_to(x, (d,) + jnp.shape(x)), tree),
                        sharding)


def unreplicate(tree: Any) -> Any:
  """Device 0's copy of a replicated tree."""
  return jax.tree.map(lambda x: x[0], tree)


def shard(tree: Any, devices=None) -> Any:
  """Splits the leading (global batch) axis over the local devices: ``[B] -> [D, B / D]``."""
  sharding = device_sharding(devices)
  d = len(sharding.mesh.devices)

  def split(x):
    if x.shape[0] % d:
      raise ValueError(f"global batch {x.shape[0]} is not divisible by {d} local devices")
    return x.reshape((d, x.shape[0] // d) + x.shape[1:])

  return jax.device_put(jax.tree.map(split, tree), sharding)
