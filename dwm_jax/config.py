"""The config schema shared by every job: defaults of every field, documented in one place.

``configs/*.py`` start from :func:`base_config` and override what their setup changes. Field
meanings are listed in ``docs/config.md``; validation lives in ``dwm_jax.validate``.
"""
from __future__ import annotations

import json

import ml_collections
from ml_collections import config_dict


def base_config() -> ml_collections.ConfigDict:
  """Defaults: the DWM paper's M2D ViT-B setup on AudioSet-like log-mel clips."""
  c = ml_collections.ConfigDict()
  c.seed = 0

  c.model = ml_collections.ConfigDict()
  c.model.name = "base"            # tiny | small | base | large
  c.model.input_shape = (80, 608)  # [F bins, T frames]
  c.model.patch_size = (16, 16)
  c.model.dtype = "float32"        # compute dtype: float32 | bfloat16 (params stay float32)
  c.model.dropout = 0.0
  c.model.drop_path = 0.0
  # Rematerialise every transformer block (encoder and predictor/decoder) in the backward pass:
  # activation memory per clip falls several-fold for about a third more compute.
  c.model.remat = False
  # Optional overrides of the named size (None = the size's value; see models.vit.MODEL_SIZES).
  c.model.width = config_dict.placeholder(int)
  c.model.depth = config_dict.placeholder(int)
  c.model.heads = config_dict.placeholder(int)
  c.model.mlp_dim = config_dict.placeholder(int)

  c.objective = ml_collections.ConfigDict()
  c.objective.name = "m2d"         # m2d | mae
  c.objective.predictor_depth = 8  # M2D predictor / MAE decoder
  c.objective.predictor_dim = 512
  c.objective.predictor_heads = 16
  c.objective.ema_decay_start = 0.99995  # M2D target EMA decay, ramped to the end value
  c.objective.ema_decay_end = 0.99999
  # linear: the authors' start + (end - start) * step / (total_steps - 1); cosine: BYOL's ramp.
  c.objective.ema_schedule = "linear"
  # Standardized targets (the authors' norm_pix_loss): M2D standardizes each target token over its
  # channels before the 2 - 2 cos loss; MAE reconstructs per-patch normalized log-mel.
  c.objective.norm_pix_loss = True
  # M2D target blocks + norm at step 0: "independent" (their own init, as the authors') or
  # "copy" (of the online encoder).
  c.objective.target_init = "independent"

  c.mask = ml_collections.ConfigDict()
  c.mask.name = "dwm"              # any name in dwm_jax.masking.names()
  c.mask.ratio = 0.7
  # Strategy options, e.g. metric="variance" for dwm. Any registered option of the strategy can be
  # set from the command line too: --config.mask.options.NAME=VALUE (see dwm_jax.main).
  c.mask.options = ml_collections.ConfigDict()
  c.mask.hint = ml_collections.ConfigDict()
  c.mask.hint.start_epoch = 50.0   # h = 1 (random) before this epoch
  c.mask.hint.k = 2.0              # then h = 1 - (epoch / epochs) ** k
  c.mask.hint.fixed = config_dict.placeholder(float)  # abs_hint_ratio: pins h

  c.data = ml_collections.ConfigDict()
  c.data.source = "synthetic"      # synthetic | npy | shards | audio | tfds
  c.data.csv = ""                  # npy: files.csv; shards: clips.csv; audio: a file_name CSV
  c.data.root = ""                 # audio: folder scanned for audio files when csv is empty
  c.data.tfds_name = ""
  c.data.tfds_data_dir = ""
  c.data.tfds_split = "train"
  c.data.tfds_audio_key = "audio"  # tfds: the Audio feature to read
  c.data.norm_mean = -7.1          # M2D's AudioSet log-mel statistics
  c.data.norm_std = 4.2
  c.data.stats = ""                # stats JSON (written by `dwm-jax prepare`): overrides the two above
  # Without data.stats: > 0 computes mean/std at the start of the run from this many random crops
  # of the training data (the authors' way; seeded by `seed`), recorded in WORKDIR/stats.json and
  # in the run's config; 0 uses norm_mean / norm_std as given.
  c.data.stats_crops = 5000
  c.data.num_workers = 0           # grain worker processes (0: decode in the training process)
  c.data.prefetch = 2              # batches in flight per process (threads) / per worker
  c.data.synthetic = ml_collections.ConfigDict()
  c.data.synthetic.num_clips = 2048
  c.data.synthetic.seconds = 6.08
  c.data.synthetic.seed = 0

  c.batch_size = 2048              # global, over all devices and hosts
  c.epochs = 300
  c.steps_per_epoch = config_dict.placeholder(int)  # default: dataset size // batch_size
  c.total_steps = config_dict.placeholder(int)      # default: epochs * steps_per_epoch

  c.optim = ml_collections.ConfigDict()
  c.optim.base_lr = 3e-4           # lr = base_lr * batch_size * accum_steps / 256
  c.optim.min_lr = 0.0
  c.optim.warmup_epochs = 20.0
  c.optim.weight_decay = 0.05
  c.optim.b1 = 0.9
  c.optim.b2 = 0.95
  c.optim.clip_norm = 3.0          # global-norm gradient clipping (the authors' 3.0); 0 = off
  # timm: decay every >= 2-D parameter but biases (cls / mask tokens too, as the authors' timm
  # param_groups_weight_decay); kernels: decay Dense / patch-embedding kernels only.
  c.optim.decay_groups = "timm"
  c.optim.accum_steps = 1          # optax.MultiSteps gradient accumulation

  c.checkpoint = ml_collections.ConfigDict()
  c.checkpoint.every_steps = 1000
  c.checkpoint.keep = 3
  c.checkpoint.keep_period = 0     # > 0: also keep every checkpoint whose step divides by this
  c.checkpoint.async_save = True
  # Also save once this many minutes have passed since the last save (checked at log steps,
  # process 0's clock); 0 = only every_steps.
  c.checkpoint.every_minutes = 15.0

  c.log_every_steps = 50
  c.mask_png_every_steps = 1000    # 0 = never
  # MFU's peak, TFLOP/s per device. None: the chip's entry in dwm_jax.train.mfu.PEAKS for
  # model.dtype, else (CPU, other chips) a matmul measured at start.
  c.peak_tflops = config_dict.placeholder(float)
  # JAX's persistent compilation cache: "auto" (JAX's own setting, else ~/.cache/dwm-jax/jax),
  # a folder or a bucket URL, or "off".
  c.compile_cache = "auto"

  c.profile = ml_collections.ConfigDict()
  c.profile.start_step = 5         # trace the steps after this many are done (not a launch's first)
  c.profile.num_steps = 0          # 0 = no trace; else WORKDIR/profile/ (XProf, Perfetto)
  c.profile.processes = (0,)       # the process indices that trace

  c.storage = ml_collections.ConfigDict()
  # A wait of the run on a bucket (a save, a batch, an upload) longer than this ends it with one
  # line (exit status 75: restart once the bucket answers); the last good checkpoint is kept.
  c.storage.timeout_seconds = 600.0
  # A bucket request that moves no data for this long is abandoned and retried with backoff.
  c.storage.request_timeout_seconds = 60.0

  c.probe = ml_collections.ConfigDict()
  c.probe.tasks = ()               # EVAR CSVs or tfds:NAME; synthetic tasks when source=synthetic
  c.probe.seeds = 3
  c.probe.after_pretrain = False   # train_and_evaluate ends with a probe vs a random-init encoder
  c.probe.synthetic_clips = 600    # clips per synthetic task (source=synthetic, no tasks given)
  c.probe.rendered = ()            # real-audio tasks rendered by Debian packages and probed too,
  #                                  where installed (dwm_jax.data.rendered: words, instruments)
  c.probe.rendered_per_class = (40, 10, 20)  # their clips per class in train / valid / test
  c.probe.evar_lr = 3e-5           # `probe --protocol evar`'s lr: EVAR's lr_lineareval (m2d.yaml)
  return c


# ``configs/m2d.py:mask=NAME``: the paper's strategies as (mask.name, mask.options).
MASK_PRESETS: dict[str, tuple[str, dict]] = {
    "random": ("random", {}),
    "dwm": ("dwm", {"metric": "mad"}),
    "dwm_var": ("dwm", {"metric": "variance"}),
    "dwm_topk": ("dwm", {"probabilistic": False}),
    "inverse_block": ("inverse_block", {}),
    "informed": ("informed", {}),
}


def flatten(c: ml_collections.ConfigDict) -> dict:
  """``{"mask.ratio": 0.7, "model.input_shape": [80, 608], ...}``: JSON values by dotted field."""
  out = {}

  def walk(d: dict, prefix: str) -> None:
    for k, v in d.items():
      if isinstance(v, dict):
        walk(v, f"{prefix}{k}.")
      else:
        out[f"{prefix}{k}"] = v
  walk(json.loads(c.to_json_best_effort()), "")
  return out


def parse_arg(arg: str | None, **defaults: str) -> dict[str, str]:
  """``"mask=dwm,model=base"`` -> ``{"mask": "dwm", "model": "base"}`` over ``defaults``.

  The keys of ``defaults`` are the only keys accepted, so a typo fails with the valid keys.
  """
  out = dict(defaults)
  for item in filter(None, (arg or "").split(",")):
    key, sep, value = item.partition("=")
    key = key.strip()
    if not sep or key not in defaults:
      raise ValueError(f"config argument {item!r}: expected KEY=VALUE with KEY in "
                       f"{', '.join(sorted(defaults))}")
    out[key] = value.strip()
  return out


def apply_mask_preset(c: ml_collections.ConfigDict, preset: str) -> None:
  """Sets ``c.mask.name`` / ``c.mask.options`` from a :data:`MASK_PRESETS` name."""
  if preset not in MASK_PRESETS:
    raise ValueError(f"unknown mask preset {preset!r}; valid: {', '.join(MASK_PRESETS)}")
  name, options = MASK_PRESETS[preset]
  c.mask.name = name
  c.mask.options = ml_collections.ConfigDict(options)
