"""Data-parallel placement: one ``'batch'`` mesh axis over every device of every process.

The train step is one jitted program over *global* arrays: the state is replicated, the batch is
split along its first axis. XLA inserts the gradient all-reduce (what ``pmap`` + ``pmean`` did by
hand), and because every random draw covers the global batch, the masks and dropout of an example
do not depend on how many devices share the batch (``jax_threefry_partitionable``, on by default,
lets each device draw its own rows without communication).

Devices are ordered process-major, so process ``p``'s local batch is the global rows
``[p * B / P, (p + 1) * B / P)`` and process 0 holds global example 0.
"""
from __future__ import annotations

from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

AXIS = "batch"


def data_mesh(devices: list | None = None) -> Mesh:
  """A 1-D mesh over ``devices`` (default: all devices of all processes, process-major)."""
  if devices is None:
    devices = sorted(jax.devices(), key=lambda d: (d.process_index, d.id))
  return Mesh(np.asarray(devices), (AXIS,))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, PartitionSpec())


def batch_sharded(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, PartitionSpec(AXIS))


def put_replicated(tree: Any, mesh: Mesh) -> Any:
  """Host values (the same on every process) -> global arrays replicated over ``mesh``."""
  sharding = replicated(mesh)

  def put(x):
    if jax.dtypes.issubdtype(getattr(x, "dtype", None), jax.dtypes.prng_key):
      return jax.random.wrap_key_data(put(jax.random.key_data(x)))
    x = np.asarray(x)
    return jax.make_array_from_callback(x.shape, sharding, lambda index: x[index])

  return jax.tree.map(put, tree)


def put_batch(local: Any, mesh: Mesh) -> Any:
  """This process's batch ``{name: [B_local, ...]}`` -> global arrays ``[B, ...]`` split over
  ``mesh`` (the host-to-device copy; it runs asynchronously)."""
  sharding = batch_sharded(mesh)
  n_local = len([d for d in mesh.devices.flat if d.process_index == jax.process_index()])

  def put(x):
    if isinstance(x, jax.Array) and x.sharding == sharding:
      return x  # already placed (benchmarks feed device-resident batches)
    if np.shape(x)[0] % n_local:
      raise ValueError(f"local batch {np.shape(x)[0]} is not divisible by the {n_local} "
                       "local devices")
    return jax.make_array_from_process_local_data(sharding, np.asarray(x))

  return jax.tree.map(put, local)


def to_host(tree: Any) -> Any:
  """Replicated global arrays -> numpy (this process's first copy; works on every process)."""
  def one(x):
    if isinstance(x, jax.Array):
      return np.asarray(x.addressable_shards[0].data)
    return np.asarray(x)
  return jax.tree.map(one, tree)


def first_row(x: jax.Array) -> np.ndarray | None:
  """Global row 0 of a batch-split array, if this process holds it (process 0 does), else None."""
  for shard in x.addressable_shards:
    if (shard.index[0].start or 0) == 0:
      return np.asarray(shard.data[0])
  return None
