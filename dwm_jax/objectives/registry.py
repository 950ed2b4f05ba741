"""Name -> objective factory (``config.objective.name``)."""
from __future__ import annotations

from typing import Any, Callable

from dwm_jax.objectives import m2d, mae

OBJECTIVES: dict[str, Callable[[Any], Any]] = {"m2d": m2d.from_config, "mae": mae.from_config}


def names() -> list[str]:
  return sorted(OBJECTIVES)


def from_config(config) -> Any:
  """``config`` (the whole config: model + objective) -> an objective (``M2D`` or ``MAE``).

  An objective has ``init(key, patches, ids)``, ``init_target(key, params, patches, ids)``,
  ``loss(params, target_params, patches, ids, *, rng, train) -> (loss, aux)``, ``uses_target``.
  """
  name = config.objective.name
  if name not in OBJECTIVES:
    raise ValueError(f"unknown objective {name!r}; valid: {', '.join(names())}")
  return OBJECTIVES[name](config)
