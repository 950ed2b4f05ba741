"""The paper's setups (``configs/m2d.py``) with the MAE objective instead of M2D.

  dwm-jax pretrain --config configs/mae.py:mask=random,model=base --workdir W \
      --config.data.csv=/data/audioset_lms/files.csv

Same argument keys as ``configs/m2d.py`` (default mask: random, as in MAE). The decoder
(``objective.predictor_*``, 8 x 512) reconstructs the per-patch normalized log-mel of the masked
patches; everything else (input, ViT, ratio 0.7, batch, schedule, hint) stays as in m2d.py so the
two objectives compare under one setup.
"""
import importlib.util
import os


def _m2d():
  path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "m2d.py")
  spec = importlib.util.spec_from_file_location("dwm_jax_configs_m2d", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def get_config(arg: str | None = None):
  from dwm_jax import config as config_lib
  a = config_lib.parse_arg(arg, mask="random", model="base", data="npy")
  c = _m2d().get_config(",".join(f"{k}={v}" for k, v in a.items()))
  c.objective.name = "mae"
  c.objective.norm_pix_loss = True
  return c
