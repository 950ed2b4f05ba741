"""The DWM paper's M2D pretraining setups (Niizumi et al. 2026; M2D's ``patch_m2d.diff``).

  dwm-jax pretrain --config configs/m2d.py:mask=dwm,model=base --workdir W \
      --config.data.csv=/data/audioset_lms/files.csv

Argument keys (all optional): ``mask`` in random, dwm (MAD), dwm_var (variance), dwm_topk,
inverse_block, informed (default dwm); ``model`` in tiny, small, base, large (default base);
``data`` in npy (files prepared by ``dwm-jax prepare``), shards (``dwm-jax prepare --layout
shards``: large sets, buckets, pods), audio (raw audio decoded on the fly), tfds, synthetic
(default npy). Paths and every other field: ``--config.FIELD=VALUE``.
"""
from dwm_jax import config as config_lib


def get_config(arg: str | None = None):
  a = config_lib.parse_arg(arg, mask="dwm", model="base", data="npy")
  c = config_lib.base_config()
  config_lib.apply_mask_preset(c, a["mask"])
  c.model.name = a["model"]
  c.model.input_shape = (80, 608)  # 16 kHz log-mel, 80 bins x 608 frames (6.08 s)
  c.model.patch_size = (16, 16)    # a 5 x 38 patch grid

  c.objective.name = "m2d"
  c.objective.predictor_depth = 8
  c.objective.predictor_dim = 512
  c.objective.predictor_heads = 16
  c.objective.ema_decay_start = 0.99995
  c.objective.ema_decay_end = 0.99999
  # The authors' training defaults (docs/pretraining.md, "M2D training defaults"):
  c.objective.ema_schedule = "linear"      # start + (end - start) * step / (total_steps - 1)
  c.objective.norm_pix_loss = True         # target tokens standardized before 2 - 2 cos
  c.objective.target_init = "independent"  # target blocks get their own init, not a copy

  c.mask.ratio = 0.7
  c.mask.hint.start_epoch = 50.0   # plain random masking for the first 50 epochs
  c.mask.hint.k = 2.0              # then h = 1 - (epoch / epochs) ** 2

  c.data.source = a["data"]
  c.data.num_workers = 8           # decoding / cropping processes per host

  c.batch_size = 2048
  c.epochs = 300
  c.optim.base_lr = 3e-4           # lr = 3e-4 * 2048 / 256 = 2.4e-3
  c.optim.warmup_epochs = 20.0
  c.optim.weight_decay = 0.05
  c.optim.b1, c.optim.b2 = 0.9, 0.95
  c.optim.clip_norm = 3.0          # --clip_grad 3.0
  c.optim.decay_groups = "timm"    # timm's param_groups_weight_decay: cls / mask tokens decayed
  c.data.stats_crops = 5000        # mean / std of 5000 random crops at start, unless data.stats

  c.checkpoint.every_steps = 1000
  c.checkpoint.keep = 3
  c.checkpoint.keep_period = 10000
  c.log_every_steps = 100
  c.mask_png_every_steps = 2000
  return c
