"""EMA of the M2D target: decay schedule and the update itself."""
from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

SCHEDULES = ("linear", "cosine")


def ema_decay(step: Any, total_steps: int, start: float, end: float,
              schedule: str = "linear") -> jnp.ndarray:
  """Decay at ``step`` (0-based step calls), ramping from ``start`` to ``end``, float32.

  ``linear`` (the authors' ``ema_decay_sched``): ``start + (end - start) * step / (T - 1)``, so
  the last step of a ``T``-step run uses ``end`` exactly. ``cosine`` (BYOL's ramp):
  ``end - (end - start) * (1 + cos(pi * step / T)) / 2``. ``step`` may be traced; past the
  ramp the decay stays at ``end``.
  """
  total = int(total_steps)
  step = jnp.asarray(step, jnp.float32)
  if schedule == "linear":
    t = jnp.clip(step / max(total - 1, 1), 0.0, 1.0)
    return (start + (end - start) * t).astype(jnp.float32)
  if schedule == "cosine":
    t = jnp.clip(step / max(total, 1), 0.0, 1.0)
    return (end - (end - start) * 0.5 * (1.0 + jnp.cos(jnp.pi * t))).astype(jnp.float32)
  raise ValueError(f"unknown EMA schedule {schedule!r}; valid: {', '.join(SCHEDULES)}")


def ema_update(target: Any, online: Any, decay: jnp.ndarray) -> Any:
  """``target <- decay * target + (1 - decay) * online`` leaf by leaf (float32 params)."""
  return jax.tree.map(lambda t, o: decay * t + (1.0 - decay) * o, target, online)
