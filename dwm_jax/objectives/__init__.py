"""Pretraining objectives: M2D (EMA target, cosine loss) and MAE (reconstruction)."""
from dwm_jax.objectives.m2d import M2D
from dwm_jax.objectives.mae import MAE
from dwm_jax.objectives.registry import OBJECTIVES, from_config, names

__all__ = ["M2D", "MAE", "OBJECTIVES", "from_config", "names"]
