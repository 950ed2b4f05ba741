"""The memory plan: compile the step ahead of time from shapes alone and check that it fits.

Before any data is read or any parameter allocated, the jitted step is lowered with abstract
arguments and compiled; XLA's memory analysis of that executable gives the bytes one device needs
(arguments + outputs + temporaries - donated buffers + code). It is compared with what the device
offers: the backend's ``bytes_limit`` where it reports one (GPU, TPU), else the machine's RAM
(shared by all local CPU devices). A run that cannot fit stops with :class:`DoesNotFit` (exit 2)
instead of dying a minute later with ``RESOURCE_EXHAUSTED``. The compiled executable is then the
one the loop runs: the step is compiled exactly once.

:func:`residual_bytes_per_clip` measures what ``model.remat`` controls, independently of the
backend: the activations the forward pass keeps for the backward pass (the VJP's residuals),
per clip. XLA:CPU compiles the recomputation but does not schedule for memory, so on CPU the
compiled temporaries do not shrink with remat while the residuals do; GPU/TPU schedulers use
it (``experiments/device_check`` measures both).
"""
from __future__ import annotations

import dataclasses
import os
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from dwm_jax import faults
from dwm_jax.train import mesh as mesh_lib
from dwm_jax.train import state as state_lib
from dwm_jax.train import step as step_lib
from dwm_jax.train.setup import RunSetup

# What the framework, the input pipeline and fragmentation need beside XLA's buffers.
HEADROOM = 0.9
# The fields that lower the memory a step needs, for the message.
REMEDIES = ("batch_size", "optim.accum_steps", "model.dtype=bfloat16", "model.remat=True")


class DoesNotFit(faults.UsageFault):
  """The compiled step needs more memory per device than the device has."""


@dataclasses.dataclass(frozen=True)
class MemoryPlan:
  """Bytes per device of the compiled step, and what one device offers."""
  argument_bytes: int
  output_bytes: int
  temp_bytes: int
  alias_bytes: int
  code_bytes: int
  available_bytes: int | None  # None: the backend says nothing and the RAM is unknown
  available_source: str        # "bytes_limit", "RAM / N local devices" or "unknown"
  batch_per_device: int

  @property
  def needed_bytes(self) -> int:
    return (self.argument_bytes + self.output_bytes + self.temp_bytes - self.alias_bytes
            + self.code_bytes)

  @property
  def temp_bytes_per_clip(self) -> float:
    """Temporaries per clip of the per-device batch (activations dominate them)."""
    return self.temp_bytes / max(self.batch_per_device, 1)

  @property
  def fits(self) -> bool:
    return self.available_bytes is None or self.needed_bytes <= HEADROOM * self.available_bytes

  def summary(self) -> str:
    avail = ("unknown" if self.available_bytes is None
             else f"{human(self.available_bytes)} ({self.available_source})")
    return (f"memory plan per device: {human(self.needed_bytes)} needed (state and batch "
            f"{human(self.argument_bytes)}, temporaries {human(self.temp_bytes)} = "
            f"{human(self.temp_bytes_per_clip)} per clip x {self.batch_per_device}), "
            f"{avail} available")


def human(n: float) -> str:
  """``1536 -> '1.5 KiB'``."""
  for unit in ("B", "KiB", "MiB", "GiB"):
    if abs(n) < 1024 or unit == "GiB":
      return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
    n /= 1024
  return f"{n:.1f} GiB"


def physical_memory_bytes() -> int | None:
  """The machine's RAM, or the container's memory limit when that is lower."""
  try:
    total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
  except (ValueError, OSError, AttributeError):
    total = None
  for path in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
    try:
      with open(path) as f:
        text = f.read().strip()
    except OSError:
      continue
    if text.isdigit() and (total is None or int(text) < total):
      total = int(text)
  return total


def device_memory(device: Any) -> tuple[int | None, str]:
  """``(bytes one device offers, where the figure comes from)``."""
  stats = None
  try:
    stats = device.memory_stats()
  except Exception:  # some backends raise instead of returning None
    stats = None
  if stats and stats.get("bytes_limit"):
    return int(stats["bytes_limit"]), "bytes_limit"
  ram = physical_memory_bytes()
  if ram is None:
    return None, "unknown"
  n = jax.local_device_count()
  return ram // n, f"RAM / {n} local devices" if n > 1 else "RAM"


def abstract_args(setup: RunSetup, mesh: Mesh) -> tuple[Any, Any, Any]:
  """``(state, batch, key)`` as ``jax.ShapeDtypeStruct`` trees with their shardings."""
  rep, split = mesh_lib.replicated(mesh), mesh_lib.batch_sharded(mesh)
  state = jax.tree.map(lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=rep),
                       state_lib.abstract_train_state(setup))
  f, t = setup.input_shape
  batch = {"logmel": jax.ShapeDtypeStruct((setup.batch_size, f, t), jnp.float32, sharding=split)}
  key = jax.eval_shape(lambda: jax.random.key(0))
  return state, batch, jax.ShapeDtypeStruct(key.shape, key.dtype, sharding=rep)


def compile_step(setup: RunSetup, mesh: Mesh) -> tuple[Any, MemoryPlan]:
  """The step compiled from shapes alone, and its :class:`MemoryPlan`."""
  compiled = step_lib.jit_train_step(setup, mesh).lower(*abstract_args(setup, mesh)).compile()
  return compiled, plan_of(compiled, setup.batch_size // mesh.devices.size,
                           mesh.devices.flat[0])


def plan_of(compiled: Any, batch_per_device: int, device: Any) -> MemoryPlan:
  stats = compiled.memory_analysis()
  available, source = device_memory(device)
  return MemoryPlan(
      argument_bytes=int(stats.argument_size_in_bytes),
      output_bytes=int(stats.output_size_in_bytes),
      temp_bytes=int(stats.temp_size_in_bytes),
      alias_bytes=int(stats.alias_size_in_bytes),
      code_bytes=int(stats.generated_code_size_in_bytes),
      available_bytes=available, available_source=source, batch_per_device=batch_per_device)


def check(plan: MemoryPlan) -> None:
  """Raises :class:`DoesNotFit` (one short message) unless the plan fits with headroom."""
  if plan.fits:
    return
  raise DoesNotFit(
      f"the train step does not fit in memory: it needs {human(plan.needed_bytes)} per device "
      f"({human(plan.temp_bytes_per_clip)} of temporaries per clip x {plan.batch_per_device} "
      f"clips), the device has {human(plan.available_bytes)} ({plan.available_source}). "
      f"Lower it with: {', '.join(REMEDIES)}")


def residual_bytes_per_clip(setup: RunSetup, batches: tuple[int, int] = (2, 6)) -> float:
  """Bytes per clip the forward pass keeps for the backward pass (shapes only, no compile).

  The residuals of ``jax.vjp`` of the objective's loss, counted at two batch sizes: their
  difference per clip leaves out what does not grow with the batch (the parameters).
  """
  abstract = state_lib.abstract_train_state(setup)

  def residual_bytes(b: int) -> int:
    patches, ids = state_lib.dummy_inputs(setup, b)

    def residuals(params, target_params):
      def loss(p):
        return setup.objective.loss(p, target_params, patches, ids, rng=jax.random.key(0),
                                    train=True)[0]
      return jax.tree.leaves(jax.vjp(loss, params)[1])

    leaves = jax.eval_shape(residuals, abstract.params, abstract.target_params)
    return sum(int(np.prod(x.shape)) * x.dtype.itemsize for x in leaves)

  lo, hi = batches
  return (residual_bytes(hi) - residual_bytes(lo)) / (hi - lo)
