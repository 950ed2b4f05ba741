"""A seconds-long test run: 80 x 64 input (5 x 4 patches), a one-block ViT, 8 steps on 2 devices."""
from dwm_jax.config import base_config


def get_config(arg: str | None = None):
  del arg
  c = base_config()
  c.model.name = "tiny"
  c.model.input_shape = (80, 64)
  c.model.width, c.model.depth, c.model.heads, c.model.mlp_dim = 32, 1, 2, 64
  c.objective.name = "m2d"
  c.objective.predictor_depth, c.objective.predictor_dim, c.objective.predictor_heads = 1, 32, 2
  c.objective.ema_decay_start, c.objective.ema_decay_end = 0.9, 0.99
  c.mask.name = "dwm"
  c.mask.ratio = 0.7
  c.mask.hint.start_epoch = 1.0  # the hint changes during the run (random first, then DWM)
  c.data.source = "synthetic"
  c.data.synthetic.num_clips = 32
  c.data.synthetic.seconds = 0.8  # 81 frames: the 64-frame crops (input_shape[1]) vary
  c.data.prefetch = 1
  c.batch_size = 8                # 4 per device on the tests' 2 CPU devices
  c.epochs = 2                    # 4 steps per epoch -> 8 steps
  c.optim.base_lr = 1e-3
  c.optim.warmup_epochs = 0.5
  c.checkpoint.every_steps = 2
  c.checkpoint.keep = 10
  c.log_every_steps = 1
  c.mask_png_every_steps = 0
  c.probe.synthetic_clips = 40
  c.probe.seeds = 1
  return c
