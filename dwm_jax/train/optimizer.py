"""AdamW with linear warmup + cosine decay, MAE/M2D style.

``total_steps`` and ``steps_per_epoch`` count train-step calls. With ``accum_steps = A`` > 1 the
optimizer (``optax.MultiSteps``) updates every A calls, so its schedule counts ``calls // A``, and
the learning rate scales with the effective batch ``batch_size * A``.
"""
from __future__ import annotations

from typing import Any

import jax
import optax

# ``optim.decay_groups``: which parameters AdamW decays.
DECAY_GROUPS = ("timm", "kernels")
# Leaves ``kernels`` never decays beyond biases and norm scales.
TOKEN_NAMES = ("cls_token", "mask_token", "pos_embed")


def decay_mask(params: Any, groups: str = "timm") -> Any:
  """True where weight decay applies, per leaf of ``params``.

  ``timm`` (timm's ``param_groups_weight_decay``, which M2D and MAE use): every parameter of 2 or
  more dimensions except biases; the ``[1, 1, D]`` cls and mask tokens are decayed, biases and
  LayerNorm scales (1-D) are not. ``kernels``: the same without the cls / mask tokens.
  """
  if groups not in DECAY_GROUPS:
    raise ValueError(f"unknown optim.decay_groups {groups!r}; valid: {', '.join(DECAY_GROUPS)}")

  def keep(path, leaf) -> bool:
    names = [getattr(k, "key", getattr(k, "name", None)) for k in path]
    if leaf.ndim < 2 or names[-1] == "bias":
      return False
    return groups == "timm" or not set(names) & set(TOKEN_NAMES)

  return jax.tree_util.tree_map_with_path(keep, params)


def peak_lr(config) -> float:
  """``base_lr * effective_batch / 256`` (MAE's linear scaling rule)."""
  effective_batch = int(config.batch_size) * int(config.optim.accum_steps)
  return float(config.optim.base_lr) * effective_batch / 256.0


def make_schedule(config, *, total_steps: int, steps_per_epoch: int) -> optax.Schedule:
  """Learning rate per optimizer update: linear warmup from 0, then cosine to ``min_lr``."""
  accum = int(config.optim.accum_steps)
  if accum < 1:
    raise ValueError(f"optim.accum_steps must be >= 1, got {accum}")
  if total_steps < 1 or steps_per_epoch < 1:
    raise ValueError(f"total_steps ({total_steps}) and steps_per_epoch ({steps_per_epoch}) "
                     f"must be positive")
  updates = max(1, total_steps // accum)
  warmup = int(round(float(config.optim.warmup_epochs) * steps_per_epoch / accum))
  warmup = min(warmup, updates - 1)  # leave at least one decay step
  peak = peak_lr(config)
  return optax.warmup_cosine_decay_schedule(
      init_value=0.0, peak_value=peak, warmup_steps=warmup, decay_steps=updates,
      end_value=float(config.optim.min_lr))


def make_optimizer(config, schedule: optax.Schedule) -> optax.GradientTransformation:
  """The optax transformation of ``config.optim`` (clip -> AdamW, wrapped in MultiSteps if A>1).

  Clipping (``optim.clip_norm`` > 0) scales the whole gradient to that global norm before AdamW,
  as ``torch.nn.utils.clip_grad_norm_`` in the authors' loss scaler.

  ``schedule`` (:func:`make_schedule`) maps the optimizer's update count to the learning rate.
  """
  o = config.optim
  parts = []
  if float(o.clip_norm) > 0:
    parts.append(optax.clip_by_global_norm(float(o.clip_norm)))
  groups = str(o.get("decay_groups", "timm"))
  parts.append(optax.adamw(schedule, b1=float(o.b1), b2=float(o.b2),
                           weight_decay=float(o.weight_decay),
                           mask=lambda params: decay_mask(params, groups)))
  tx = optax.chain(*parts)
  if int(o.accum_steps) > 1:
    tx = optax.MultiSteps(tx, every_k_schedule=int(o.accum_steps)).gradient_transformation()
  return tx


def is_update_step(opt_state: Any) -> Any:
  """Whether the last ``tx.update`` applied an update (always, without accumulation)."""
  if isinstance(opt_state, optax.MultiStepsState):
    return (opt_state.mini_step == 0) & (opt_state.gradient_step > 0)
  return True

