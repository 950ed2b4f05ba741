"""Fine-tuning recipes for ``dwm-jax finetune`` (``--config configs/finetune.py[:ARG]``).

  dwm-jax finetune --workdir W --synthetic 1500 --out /tmp/ft                  # recipe=cpu
  dwm-jax finetune --encoder m2d.msgpack --task esc50.csv --out DIR \\
      --config configs/finetune.py:recipe=m2d,task=esc50

``ARG`` keys: ``recipe`` = ``cpu`` (default) | ``m2d``; ``task`` (with ``recipe=m2d``) = ``default``
| ``as20k`` | ``esc50`` | ``spcv2`` | ``vc1``. Any field can then be overridden
(``--config.optim.layer_decay=0.65``); the fields are documented in
``dwm_jax/evaluate/finetuning/config.py`` and ``docs/finetuning.md``.

``recipe=cpu`` (:func:`dwm_jax.evaluate.finetuning.config.base_config`): AdamW with layer-wise lr
decay 0.75 (BEiT / MAE / AudioMAE's rule) and the head at 10x, 1 warmup epoch + cosine, a
BatchNorm + linear head from scratch, windows fitted to the task's clips (a 1 s clip trains on its
own 7 patch columns), random crops, batch 32, at most 8 epochs with early stopping after 4
evaluations without progress; mixup and SpecAugment off (at 8 epochs they cost 7 to 13 points on
the synthetic tasks), patch dropout off (at 8 epochs it cost 13 points on 1 s spoken words:
``docs/finetuning.md``). About 1 to 3 minutes per task and seed for the quickstart's 4-block tiny
encoder on a 2-core CPU.

``recipe=m2d``: the M2D authors' fine-tuning through EVAR (``nttcslab/eval-audio-repr``), for
accelerators. From EVAR's ``config/m2d.yaml``: batch 128 (``ft_bs``), 200 epochs (``ft_epochs``),
5 warmup epochs, mixup 0.5, ``ft_freq_mask`` 30, ``ft_time_mask`` 192, lr 2.0, no early stopping
(``ft_early_stop_epochs: -1``; the test score is still the best valid epoch's, as EVAR loads
its best valid weights before testing). From EVAR's ``finetune.py``: SGD with momentum 0.9 and
no weight decay (its default ``--optim sgd``), timm's cosine schedule to 1e-7 with linear warmup
from 0, no layer-wise decay, head ``BatchNorm1d(affine=False)`` + ``Linear`` (init std 0.01).
``task=`` applies the per-task command lines of M2D's README ("2-3. Fine-tuning"):
``as20k`` lr 1.0, mixup 0.3; ``esc50`` lr 0.5, mixup 0.0; ``spcv2`` lr 0.5, mixup 0.3 (all three
``--freq_mask 0 --time_mask 0 --training_mask 0.5``); ``vc1`` AdamW lr 0.001 (EVAR's AdamW: betas
0.9 / 0.95, weight decay 1e-4), no masks, no mixup. ``training_mask 0.5`` is M2D's structured
patch dropout: ``augment.patch_dropout``. EVAR's lr is absolute; here ``lr = base_lr *
batch_size / 256``, so ``base_lr = 2 * lr`` at batch 128. Not reproduced: EVAR's random resize
crop (``ft_rrc``), its mixing of waveforms (mixup here mixes log-mels in the power domain) and
the LARS optimizer of M2D's AudioSet-2M script. The encoder itself must be the authors' (``dwm-jax
import-torch``) for their numbers; use ``--config.model.dtype=bfloat16`` on accelerators.
"""
import ml_collections

from dwm_jax import config as config_lib
from dwm_jax.evaluate.finetuning.config import base_config

# M2D README per-task overrides: (lr, mixup, patch dropout, freq mask, time mask, optimizer).
M2D_TASKS = {
    "default": (2.0, 0.5, 0.0, 30, 192, "sgd"),   # EVAR config/m2d.yaml as shipped
    "as20k": (1.0, 0.3, 0.5, 0, 0, "sgd"),
    "esc50": (0.5, 0.0, 0.5, 0, 0, "sgd"),
    "spcv2": (0.5, 0.3, 0.5, 0, 0, "sgd"),
    "vc1": (0.001, 0.0, 0.0, 0, 0, "adamw"),
}


def m2d_recipe(c: ml_collections.ConfigDict, task: str) -> None:
  if task not in M2D_TASKS:
    raise ValueError(f"unknown M2D fine-tuning task {task!r}; valid: {', '.join(M2D_TASKS)}")
  lr, mix, drop, fm, tm, opt = M2D_TASKS[task]
  c.batch_size = 128
  c.eval_batch_size = 128
  c.epochs = 200.0
  c.log_every_steps = 50
  c.model.drop_path = 0.0          # EVAR's m2d.yaml sets no drop path
  c.optim.name = opt
  c.optim.base_lr = lr * 256 / c.batch_size
  c.optim.min_lr = 1e-7            # timm CosineLRScheduler(lr_min=1e-7)
  c.optim.warmup_epochs = 5.0
  c.optim.layer_decay = 1.0        # EVAR has no layer-wise decay
  c.optim.head_lr_scale = 1.0      # nor a separate head lr
  c.optim.weight_decay = 0.0 if opt == "sgd" else 1e-4
  c.optim.momentum = 0.9
  c.optim.b1, c.optim.b2 = 0.9, 0.95
  c.head.init = "random"
  c.head.norm = "batchnorm"
  c.head.init_std = 0.01
  c.augment.num_freq_masks = c.augment.num_time_masks = 1  # torchaudio Frequency/TimeMasking
  c.augment.mixup = mix
  c.augment.freq_mask = fm
  c.augment.time_mask = tm
  c.augment.patch_dropout = drop
  c.early_stop.patience = 0        # ft_early_stop_epochs: -1


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  args = config_lib.parse_arg(arg, recipe="cpu", task="default")
  c = base_config()
  if args["recipe"] == "m2d":
    m2d_recipe(c, args["task"])
  elif args["recipe"] != "cpu":
    raise ValueError(f"unknown recipe {args['recipe']!r}; valid: cpu, m2d")
  elif args["task"] != "default":
    raise ValueError("task= selects an M2D per-task recipe: use it with recipe=m2d")
  return c
