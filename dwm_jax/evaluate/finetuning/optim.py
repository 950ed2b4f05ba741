"""Fine-tuning optimizers: a registry of base optimizers, with layer-wise lr decay on top.

The learning-rate schedule is pretraining's (``dwm_jax.train.optimizer.make_schedule``: linear
warmup from 0, cosine to ``min_lr``, peak ``base_lr * batch_size * accum_steps / 256``).
Layer-wise decay multiplies each parameter's update by its layer's factor
(:func:`dwm_jax.evaluate.finetuning.model.layer_scales`); for AdamW and SGD, whose update is
linear in the lr (weight decay included), that is exactly a per-layer learning rate, the way
BEiT / MAE / timm param groups with ``lr_scale`` apply it.
"""
from __future__ import annotations

from typing import Any, Callable

import jax
import ml_collections
import optax

from dwm_jax.evaluate.finetuning import model
from dwm_jax.train import optimizer


def decay_mask(params):
  # MAE's and timm's fine-tuning exempt cls / pos tokens (`no_weight_decay()`) besides 1-D
  # parameters; pretraining's timm grouping decays the cls token.
  return optimizer.decay_mask(params, "kernels")


def _adamw(o: ml_collections.ConfigDict, lr: optax.Schedule) -> optax.GradientTransformation:
  return optax.adamw(lr, b1=float(o.b1), b2=float(o.b2), weight_decay=float(o.weight_decay),
                     mask=decay_mask)


def _sgd(o: ml_collections.ConfigDict, lr: optax.Schedule) -> optax.GradientTransformation:
  # torch SGD's coupled weight decay: added to the gradient before momentum.
  return optax.chain(optax.add_decayed_weights(float(o.weight_decay), mask=decay_mask),
                     optax.sgd(lr, momentum=float(o.momentum) or None))


OPTIMIZERS: dict[str, Callable[[ml_collections.ConfigDict, optax.Schedule],
                               optax.GradientTransformation]] = {"adamw": _adamw, "sgd": _sgd}


def scale_by_tree(scales: Any) -> optax.GradientTransformation:
  """Multiplies every update by its leaf of ``scales`` (a pytree of floats like the params)."""
  return optax.stateless(lambda updates, params: jax.tree.map(lambda u, s: u * s, updates, scales))


def make_optimizer(config: ml_collections.ConfigDict, schedule: optax.Schedule, params: Any,
                   depth: int) -> optax.GradientTransformation:
  """clip -> base optimizer -> layer-wise (and head) scale (-> MultiSteps with ``accum_steps``
  > 1).

  ``params`` only gives the tree structure (arrays or shapes); ``depth`` the encoder's blocks.
  """
  o = config.optim
  parts = []
  if float(o.clip_norm) > 0:
    parts.append(optax.clip_by_global_norm(float(o.clip_norm)))
  parts.append(OPTIMIZERS[str(o.name)](o, schedule))
  if float(o.layer_decay) != 1.0 or float(o.head_lr_scale) != 1.0:
    parts.append(scale_by_tree(model.layer_scales(params, depth, float(o.layer_decay),
                                                  float(o.head_lr_scale))))
  tx = optax.chain(*parts)
  if int(o.accum_steps) > 1:
    tx = optax.MultiSteps(tx, every_k_schedule=int(o.accum_steps)).gradient_transformation()
  return tx
