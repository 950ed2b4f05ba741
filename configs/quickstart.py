"""Quickstart: a tiny ViT pretrained with M2D + DWM on the built-in synthetic audio, then probed.

  dwm-jax pretrain --config configs/quickstart.py --workdir /tmp/dwm_quickstart

A few minutes on a 2-core laptop CPU. At the end the run linear-probes its encoder and a
random-init encoder of the same architecture on the synthetic event / pitch / timbre tasks and
prints both (``WORKDIR/summary.json``). Every field can be overridden, e.g.
``--config.total_steps=50`` or ``--config.mask.name=random``.

At this scale the probe does *not* yet show the pretrained encoder beating the random-init one:
see the README's Quickstart section for the measured numbers.
"""
from dwm_jax import config as config_lib


def get_config(arg: str | None = None):
  del arg
  c = config_lib.base_config()
  c.seed = 0
  c.model.name = "tiny"
  c.model.input_shape = (80, 208)  # 2.08 s: a 5 x 13 patch grid
  c.model.depth = 4                # tiny's width (192) and heads (3), fewer blocks
  c.objective.name = "m2d"
  c.objective.predictor_depth = 2
  c.objective.predictor_dim = 128
  c.objective.predictor_heads = 4
  # A short run: the EMA target must follow the online encoder much faster than in 300 epochs.
  c.objective.ema_decay_start = 0.99
  c.objective.ema_decay_end = 0.999

  c.mask.name = "dwm"
  c.mask.ratio = 0.7
  c.mask.hint.start_epoch = 4.0    # random masking first, then DWM blended in (as in the paper)
  c.mask.hint.k = 2.0

  c.data.source = "synthetic"
  c.data.crop_frames = 208
  c.data.synthetic.num_clips = 512
  c.data.synthetic.seconds = 2.08
  c.data.num_workers = 0
  c.data.prefetch = 2

  c.batch_size = 64
  c.epochs = 20
  c.optim.base_lr = 1.5e-3         # lr = 1.5e-3 * 64 / 256
  c.optim.warmup_epochs = 2.0

  c.checkpoint.every_steps = 50
  c.checkpoint.keep = 2
  c.log_every_steps = 10
  c.mask_png_every_steps = 50

  c.probe.after_pretrain = True
  c.probe.seeds = 2
  c.probe.synthetic_clips = 400
  return c
