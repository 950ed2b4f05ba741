"""The paper's setups (``configs/m2d.py``) with the MAE objective instead of M2D.

  dwm-jax pretrain --config configs/mae.py:mask=random,model=base --workdir W \
      --config.data.csv=/data/audioset_lms/files.csv

Same argument keys as ``configs/m2d.py`` (default mask: random, as in MAE). The decoder
(``objective.predictor_*``, 8 x 512) reconstructs the per-patch normalized log-mel of the masked
patches; everything else (input, ViT, ratio 0.7, batch, schedule, hint) stays as in m2d.py so the
two objectives compare under one setup.
"""
from configs import m2d
from dwm_jax import config as config_lib


def get_config(arg: str | None = None):
  a = config_lib.parse_arg(arg, mask="random", model="base", data="npy")
  c = m2d.get_config(",".join(f"{k}={v}" for k, v in a.items()))
  c.objective.name = "mae"
  c.objective.norm_pix_loss = True
  return c
