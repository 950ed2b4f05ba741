"""The fine-tuning config schema, its defaults (sized for a 2-core CPU) and its validation.

``configs/finetune.py`` starts from :func:`base_config` and scales it to the authors' recipes
(``:recipe=m2d``); ``--config.FIELD=VALUE`` overrides any field. Every field
is read from here; :func:`validate` checks all of them before anything is loaded or compiled and
reports every bad one at once (``dwm_jax.validate.ConfigError``).
"""
from __future__ import annotations

import ml_collections

from dwm_jax.models.vit import DTYPES
from dwm_jax.validate import ConfigError, _Checker

OPTIMIZERS = ("adamw", "sgd")
HEAD_NORMS = ("batchnorm", "none")
HEAD_INITS = ("probe", "random")


def base_config() -> ml_collections.ConfigDict:
  """The CPU recipe: AdamW + layer-wise lr decay (head at 10x), warmup + cosine, windows fitted to
  the task's clips, random crops, early stopping on valid; mixup, SpecAugment and patch dropout
  exist but are off (at this budget they cost accuracy: ``docs/finetuning.md``). About 1 to 3
  minutes per task and seed for the quickstart's tiny encoder on a 2-core CPU."""
  c = ml_collections.ConfigDict()
  c.seed = 0             # seeds are seed, seed + 1, ...: head init, data order, crops, augmentation
  c.seeds = 3            # runs per task; the test metric is their mean +- std
  c.batch_size = 32      # global batch (all devices); must divide by the device count
  c.eval_batch_size = 64  # windows per evaluation batch (valid / test), same rule
  c.epochs = 8.0         # maximum run length; early stopping may end it sooner
  c.window_frames = 0    # frames of the training crops and evaluation windows. 0: the task's
  #                        longest train clip rounded up to whole patch columns, at most the
  #                        encoder's input (a 1 s clip is 7 columns, with the positional table
  #                        cut to them, as M2D's runtime encodes it), never a window of padding
  c.log_every_steps = 20

  # Overrides of the encoder's own model config for fine-tuning.
  c.model = ml_collections.ConfigDict()
  c.model.dtype = "float32"   # compute dtype (bfloat16 on accelerators); params stay float32
  c.model.drop_path = 0.1     # stochastic depth (AudioMAE / BEiT fine-tuning use 0.1)
  c.model.dropout = 0.0
  c.model.remat = False       # recompute each block in the backward pass (memory for compute)

  c.optim = ml_collections.ConfigDict()
  c.optim.name = "adamw"      # adamw | sgd (momentum; the M2D / EVAR recipe)
  c.optim.base_lr = 5e-3      # peak lr = base_lr * batch_size * accum_steps / 256 (MAE's rule)
  c.optim.min_lr = 1e-6       # end of the cosine decay
  c.optim.warmup_epochs = 1.0  # linear warmup from 0
  c.optim.layer_decay = 0.75  # lr of layer l = lr * decay ** (depth + 1 - l); 1.0 = off
  c.optim.head_lr_scale = 10.0  # the head's lr = lr * this (it starts from scratch; 1 = off)
  c.optim.weight_decay = 0.05  # kernels only (not biases, norms, the CLS token)
  c.optim.b1 = 0.9            # AdamW betas
  c.optim.b2 = 0.999
  c.optim.momentum = 0.9      # sgd only
  c.optim.clip_norm = 0.0     # global-norm gradient clipping (0 = off)
  c.optim.accum_steps = 1     # gradient accumulation (optax.MultiSteps)

  c.head = ml_collections.ConfigDict()
  c.head.init = "random"      # random: normal(init_std) kernel, zero bias (EVAR, MAE) | probe:
  #                             start from the linear probe of the frozen encoder (LP-FT, Kumar
  #                             et al. 2022, arXiv:2202.10054)
  c.head.norm = "batchnorm"   # batchnorm (EVAR / M2D: BatchNorm1d(affine=False)) | none
  c.head.bn_momentum = 0.1    # running statistics: r = (1 - m) r + m batch (torch's convention)
  c.head.init_std = 0.01      # normal init of the linear head's kernel; bias 0

  c.augment = ml_collections.ConfigDict()
  c.augment.mixup = 0.0       # mixup alpha: lambda ~ Beta(a, a) per clip, mixed in the power
  #                             domain (log(l e^x + (1 - l) e^x')), labels mixed alike; 0 = off
  c.augment.freq_mask = 0     # SpecAugment: bands of width ~ U[0, freq_mask) mel bins (0 = off)
  c.augment.time_mask = 0     # and of width ~ U[0, time_mask) frames, set to 0 (the mean)
  c.augment.num_freq_masks = 1
  c.augment.num_time_masks = 1
  c.augment.patch_dropout = 0.0  # fraction of time columns dropped per clip (M2D's structured
  #                                training_mask); the clip embedding is over the kept columns.
  #                                Off: at 8 epochs half of a 1 s word's 7 columns dropped cost
  #                                13 points (it often drops the word itself)
  c.augment.random_crop = True  # train on a random window of longer clips (else their start)

  c.early_stop = ml_collections.ConfigDict()
  c.early_stop.eval_every_epochs = 1  # valid evaluation (and checkpoint) interval
  c.early_stop.patience = 4   # stop after this many evaluations without a better valid score;
  #                             0 = never stop. The test score is always the best valid epoch's.

  c.checkpoint = ml_collections.ConfigDict()
  c.checkpoint.keep = 2
  c.checkpoint.keep_period = 0
  c.checkpoint.async_save = True
  return c


def _known_fields(c: ml_collections.ConfigDict, ref: ml_collections.ConfigDict, prefix: str,
                  problems: list[str]) -> None:
  for key in c.keys():
    if key not in ref:
      valid = ", ".join(sorted(ref.keys()))
      problems.append(f"{prefix}{key}: unknown field (valid here: {valid})")
    elif isinstance(ref[key], ml_collections.ConfigDict):
      if isinstance(c[key], ml_collections.ConfigDict):
        _known_fields(c[key], ref[key], f"{prefix}{key}.", problems)
      else:
        problems.append(f"{prefix}{key}: must be a group of fields, got {c[key]!r}")


def validate(config: ml_collections.ConfigDict, *, device_count: int, input_shape=None,
             patch_size=None) -> None:
  """Raises :class:`ConfigError` listing every bad field of ``config``.

  ``input_shape`` / ``patch_size`` (the encoder's) enable the checks that depend on the grid.
  """
  problems: list[str] = []
  _known_fields(config, base_config(), "", problems)
  c = _Checker(config)
  c.number("seed", integer=True)
  c.number("seeds", lo=1, integer=True)
  for field in ("batch_size", "eval_batch_size"):
    b = c.number(field, lo=1, integer=True)
    if b is not None and b % device_count:
      c.fail(field, f"{b} is not divisible by the {device_count} devices")
  c.number("epochs", lo=0.0, lo_open=True)
  win = c.number("window_frames", lo=0, integer=True)
  c.number("log_every_steps", lo=1, integer=True)
  c.check("model.dtype", lambda v: v in DTYPES, f"unknown dtype {{v!r}}; valid: {', '.join(DTYPES)}")
  c.number("model.drop_path", lo=0.0, hi=1.0, hi_open=True)
  c.number("model.dropout", lo=0.0, hi=1.0, hi_open=True)
  c.check("model.remat", lambda v: isinstance(v, bool), "must be True or False, got {v!r}")

  c.check("optim.name", lambda v: v in OPTIMIZERS,
          f"unknown optimizer {{v!r}}; valid: {', '.join(OPTIMIZERS)}")
  c.number("optim.base_lr", lo=0.0, lo_open=True)
  c.number("optim.min_lr", lo=0.0)
  c.number("optim.warmup_epochs", lo=0.0)
  c.number("optim.layer_decay", lo=0.0, hi=1.0, lo_open=True)
  c.number("optim.head_lr_scale", lo=0.0, lo_open=True)
  c.number("optim.weight_decay", lo=0.0)
  for f in ("b1", "b2", "momentum"):
    c.number(f"optim.{f}", lo=0.0, hi=1.0, hi_open=True)
  c.number("optim.clip_norm", lo=0.0)
  c.number("optim.accum_steps", lo=1, integer=True)

  c.check("head.init", lambda v: v in HEAD_INITS,
          f"unknown head init {{v!r}}; valid: {', '.join(HEAD_INITS)}")
  c.check("head.norm", lambda v: v in HEAD_NORMS,
          f"unknown head norm {{v!r}}; valid: {', '.join(HEAD_NORMS)}")
  c.number("head.bn_momentum", lo=0.0, hi=1.0, lo_open=True)
  c.number("head.init_std", lo=0.0)

  c.number("augment.mixup", lo=0.0)
  fm = c.number("augment.freq_mask", lo=0, integer=True)
  tm = c.number("augment.time_mask", lo=0, integer=True)
  c.number("augment.num_freq_masks", lo=0, integer=True)
  c.number("augment.num_time_masks", lo=0, integer=True)
  drop = c.number("augment.patch_dropout", lo=0.0, hi=1.0, hi_open=True)
  c.check("augment.random_crop", lambda v: isinstance(v, bool), "must be True or False, got {v!r}")
  if input_shape is not None:
    f, w = input_shape
    if win and patch_size is not None and (win > w or win % patch_size[1]):
      c.fail("window_frames", f"{win} must be a multiple of the patch width {patch_size[1]} "
             f"and at most the encoder's {w} frames (0 = fit to the task's clips)")
    if fm is not None and fm > f:
      c.fail("augment.freq_mask", f"{fm} is wider than the encoder's {f} mel bins")
    if tm is not None and tm > w:
      c.fail("augment.time_mask", f"{tm} is longer than the encoder's {w}-frame window")
    if drop is not None and patch_size is not None:
      cols = w // patch_size[1]
      if kept_columns(cols, drop) < 1:
        c.fail("augment.patch_dropout", f"{drop} drops all {cols} time columns; keep at least one")

  c.number("early_stop.eval_every_epochs", lo=1, integer=True)
  c.number("early_stop.patience", lo=0, integer=True)
  c.number("checkpoint.keep", lo=1, integer=True)
  c.number("checkpoint.keep_period", lo=0, integer=True)
  c.check("checkpoint.async_save", lambda v: isinstance(v, bool), "must be True or False, got {v!r}")
  problems += c.problems
  if problems:
    raise ConfigError(problems)


def kept_columns(columns: int, dropout: float) -> int:
  """Time columns a clip keeps under patch dropout: ``int(columns * (1 - dropout))``."""
  return int(columns * (1.0 - float(dropout)))
