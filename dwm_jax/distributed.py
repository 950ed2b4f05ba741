"""Multi-host start-up: ``jax.distributed.initialize`` from flags or the environment.

One process per host (TPU VM worker, GPU node). Three ways to start, first match wins:
  1. explicit: ``--coordinator_address HOST:PORT --num_processes N --process_id I`` (or the
     environment variables ``JAX_COORDINATOR_ADDRESS``, ``JAX_NUM_PROCESSES``, ``JAX_PROCESS_ID``);
  2. ``--distributed`` alone: JAX's cluster auto-detection (Cloud TPU pods, SLURM, Open MPI);
  3. neither: a single-process run, nothing to initialize.
Must run before anything touches a JAX backend (device counts included).
"""
from __future__ import annotations

import dataclasses
import logging
import os

ENV = {"coordinator_address": "JAX_COORDINATOR_ADDRESS", "num_processes": "JAX_NUM_PROCESSES",
       "process_id": "JAX_PROCESS_ID"}


@dataclasses.dataclass(frozen=True)
class Setup:
  """How to start this process; all None and ``auto=False`` means single-process."""
  coordinator_address: str | None = None
  num_processes: int | None = None
  process_id: int | None = None
  auto: bool = False

  @property
  def explicit(self) -> bool:
    return self.coordinator_address is not None


def resolve(coordinator_address: str | None = None, num_processes: int | None = None,
            process_id: int | None = None, auto: bool = False,
            environ: dict[str, str] | None = None) -> Setup:
  """Flags first, then ``JAX_*`` environment variables; checks the explicit triple is complete."""
  env = os.environ if environ is None else environ
  addr = coordinator_address or env.get(ENV["coordinator_address"]) or None
  n = num_processes if num_processes is not None else env.get(ENV["num_processes"])
  i = process_id if process_id is not None else env.get(ENV["process_id"])
  if addr is None:
    if n is not None or i is not None:
      raise ValueError("num_processes/process_id given without a coordinator address "
                       f"(--coordinator_address or {ENV['coordinator_address']})")
    return Setup(auto=bool(auto))
  if n is None or i is None:
    raise ValueError(f"coordinator address {addr!r} given: also give --num_processes and "
                     f"--process_id (or {ENV['num_processes']} / {ENV['process_id']})")
  n, i = int(n), int(i)
  if n < 1 or not 0 <= i < n:
    raise ValueError(f"need num_processes >= 1 and 0 <= process_id < num_processes, got "
                     f"{n} and {i}")
  return Setup(addr, n, i, auto=False)


def initialize(setup: Setup) -> None:
  """Starts the JAX distributed runtime as ``setup`` says (no-op for a single process)."""
  import jax

  if setup.explicit:
    _cpu_collectives()
    jax.distributed.initialize(setup.coordinator_address, setup.num_processes, setup.process_id)
  elif setup.auto:
    jax.distributed.initialize()
  else:
    return
  logging.info("jax.distributed: process %d of %d, %d local / %d global devices",
               jax.process_index(), jax.process_count(), jax.local_device_count(),
               jax.device_count())


def _cpu_collectives() -> None:
  """CPU processes need a collectives implementation for cross-process pmap (gloo).

  Only the CPU backend reads this option, so setting it is harmless on GPU and TPU hosts.
  """
  import jax

  try:
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
  except (AttributeError, ValueError):  # option absent or renamed in this JAX
    pass
