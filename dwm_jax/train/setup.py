"""The run setup: every piece of a pretraining run, built once from the config and the data size.

:func:`build` derives the patch grid, the masked count K, the run length, the objective, the
optimizer and the learning-rate, hint and EMA schedules. State creation, the train step, the mask
PNG and evaluation all receive this one :class:`RunSetup`; none of them builds a piece again, so
there are no copies that must agree. Its schedules are functions of the step counter (a traced
int32 inside the step): the host never evaluates them.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import optax
from jax import lax

from dwm_jax import masking, objectives, patching
from dwm_jax.train import ema, optimizer


@dataclasses.dataclass(frozen=True, eq=False)
class RunSetup:
  """One run's derived pieces. ``config`` is kept for logging and checkpoints only."""
  config: ml_collections.ConfigDict
  grid: patching.Grid
  patch_size: tuple[int, int]
  num_masked: int
  steps_per_epoch: int
  total_steps: int
  objective: Any
  tx: optax.GradientTransformation
  lr_schedule: optax.Schedule  # optimizer update index -> learning rate
  mask_name: str
  mask_ratio: float
  mask_options: dict[str, Any]  # resolved against the strategy's registered defaults

  @property
  def batch_size(self) -> int:
    return int(self.config.batch_size)

  @property
  def accum_steps(self) -> int:
    return int(self.config.optim.accum_steps)

  @property
  def total_epochs(self) -> float:
    return self.total_steps / self.steps_per_epoch

  @property
  def input_shape(self) -> tuple[int, int]:
    return (self.grid.freq * self.patch_size[0], self.grid.time * self.patch_size[1])

  @property
  def wants_features(self) -> bool:
    """Whether the strategy scores encoder features (``informed``): one more encoder pass."""
    return "features" in masking.get(self.mask_name).defaults

  def epoch(self, step: Any) -> jnp.ndarray:
    """Fractional epoch at ``step`` train-step calls (traced float32)."""
    return jnp.asarray(step, jnp.float32) / self.steps_per_epoch

  def learning_rate(self, step: Any) -> jnp.ndarray:
    """The optimizer's learning rate at ``step`` calls (it updates every ``accum_steps``)."""
    return self.lr_schedule(jnp.asarray(step) // self.accum_steps)

  def hint(self, step: Any) -> jnp.ndarray:
    """The hint ratio at ``step`` (the authors' schedule over epochs; float32)."""
    h = self.config.mask.hint
    return masking.hint_schedule(self.epoch(step), self.total_epochs,
                                 start_epoch=float(h.start_epoch), k=float(h.k), fixed=h.fixed)

  def ema_decay(self, step: Any) -> jnp.ndarray:
    """M2D's target EMA decay at ``step``."""
    o = self.config.objective
    return ema.ema_decay(step, self.total_steps, float(o.ema_decay_start),
                         float(o.ema_decay_end), str(o.ema_schedule))

  def sample_mask(self, key: jax.Array, patches: jnp.ndarray, hint: Any,
                  params: Any = None) -> jnp.ndarray:
    """``patches: [B, N, P]`` -> ``bool [B, N]`` with the run's strategy (exactly K per row).

    ``params`` (the objective's) are needed only by strategies that score encoder features.
    """
    options = dict(self.mask_options)
    if self.wants_features:
      if params is None:
        raise ValueError(f"masking strategy {self.mask_name!r} needs the online encoder params")
      enc = lax.stop_gradient(params["encoder"])
      tokens = self.objective.encoder.apply({"params": enc}, patches, train=False)
      options["features"] = lax.stop_gradient(tokens[:, 1:])  # [B, N, D], CLS dropped
    return masking.sample(self.mask_name, key, patches, grid=self.grid, ratio=self.mask_ratio,
                          hint=hint, **options)


def run_length(config: ml_collections.ConfigDict, dataset_size: int) -> tuple[int, int]:
  """``(steps_per_epoch, total_steps)``: defaults ``dataset_size // batch_size`` and
  ``ceil(epochs * steps_per_epoch)``."""
  spe = config.steps_per_epoch or dataset_size // int(config.batch_size)
  if spe < 1:
    raise ValueError(f"data: {dataset_size} clips make no full batch of {config.batch_size}; "
                     "lower batch_size or add data")
  total = config.total_steps or int(math.ceil(float(config.epochs) * spe))
  return int(spe), int(total)


def build(config: ml_collections.ConfigDict, dataset_size: int) -> RunSetup:
  """The :class:`RunSetup` of ``config`` (validated) on a dataset of ``dataset_size`` clips."""
  patch_size = tuple(int(v) for v in config.model.patch_size)
  grid = patching.grid_for(tuple(config.model.input_shape), patch_size)
  ratio = float(config.mask.ratio)
  spe, total = run_length(config, dataset_size)
  schedule = optimizer.make_schedule(config, total_steps=total, steps_per_epoch=spe)
  return RunSetup(
      config=config, grid=grid, patch_size=patch_size,
      num_masked=patching.num_masked(grid.num_patches, ratio),
      steps_per_epoch=spe, total_steps=total,
      objective=objectives.from_config(config),
      tx=optimizer.make_optimizer(config, schedule),
      lr_schedule=schedule,
      mask_name=str(config.mask.name), mask_ratio=ratio,
      mask_options=masking.resolve_options(str(config.mask.name), dict(config.mask.options)))
