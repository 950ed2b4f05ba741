"""EMA of the M2D target: decay schedule and the update itself."""
from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

SCHEDULES = ("cosine", "linear")


def ema_decay(step: Any, total_steps: int, start: float, end: float,
              schedule: str = "cosine") -> jnp.ndarray:
  """Decay at ``step`` ramping from ``start`` (step 0) to ``end`` (``total_steps``), float32.

  ``cosine``: ``end - (end - start) * (1 + cos(pi t)) / 2`` (BYOL's ramp); ``linear``: straight.
  ``step`` may be traced; past ``total_steps`` the decay stays at ``end``.
  """
  t = jnp.clip(jnp.asarray(step, jnp.float32) / max(int(total_steps), 1), 0.0, 1.0)
  if schedule == "cosine":
    w = 0.5 * (1.0 + jnp.cos(jnp.pi * t))
  elif schedule == "linear":
    w = 1.0 - t
  else:
    raise ValueError(f"unknown EMA schedule {schedule!r}; valid: {', '.join(SCHEDULES)}")
  return (end - (end - start) * w).astype(jnp.float32)


def ema_update(target: Any, online: Any, decay: jnp.ndarray) -> Any:
  """``target <- decay * target + (1 - decay) * online`` leaf by leaf (float32 params)."""
  return jax.tree.map(lambda t, o: decay * t + (1.0 - decay) * o, target, online)
