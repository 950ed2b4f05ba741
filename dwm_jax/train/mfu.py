"""FLOPs of the compiled step and the device's peak: TFLOP/s and MFU in every log line.

``step_flops`` is XLA's cost analysis of the compiled train step, read once before step 1: the
FLOPs of the per-device program (the step is one SPMD program, so every device runs that many).
It counts what XLA will run, rematerialized recomputation included, and the body of a while loop
once (the train step's loops are the mask samplers', a negligible share); with
``model.remat=True`` the figure is therefore closer to hardware-FLOPs utilization than to the
model-FLOPs kind.

The peak is, in this order: ``config.peak_tflops`` (per device); the :data:`PEAKS` table for the
chip's ``device_kind`` and the compute dtype; else (CPU, or a chip not in the table) a matmul
measured at start on every local device at once (:func:`measured_peak_flops`), so on CPU the
figure is a utilization of what the host's cores deliver to one of its devices.

The table gives dense (no sparsity) tensor-core / MXU figures in TFLOP/s per chip from the
vendors' datasheets: NVIDIA A100, H100 (SXM, PCIe, NVL), H200 (SXM, NVL), GH200, B200 (HGX), L4
(their sparse figures halved); Google Cloud TPU v4, v5e, v5p, v6e. ``float32`` means float32
matmuls at JAX's default precision, which on these chips run as TF32 (NVIDIA) or one bfloat16
pass (TPU); with ``jax_default_matmul_precision`` raised, set ``peak_tflops`` yourself.
"""
from __future__ import annotations

import re
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from dwm_jax import timing

# (device_kind pattern, bf16 TFLOP/s, float32-at-default-precision TFLOP/s) per chip, dense.
# First match wins: the more specific kinds come first.
PEAKS: tuple[tuple[str, float, float], ...] = (
    (r"H100.*PCIe", 756.0, 378.0),
    (r"H100 NVL", 835.0, 417.5),
    (r"GH200", 989.0, 494.5),
    (r"H100", 989.0, 494.5),            # SXM5: "NVIDIA H100 80GB HBM3"
    (r"H200 NVL", 835.0, 417.5),
    (r"H200", 989.0, 494.5),            # SXM
    (r"B200", 2250.0, 1100.0),          # HGX B200
    (r"A100", 312.0, 156.0),            # SXM4 and PCIe, 40 and 80 GB
    (r"\bL4$", 121.0, 60.0),
    (r"^TPU v4$", 275.0, 275.0),
    (r"^TPU v5 ?(lite|e)$", 197.0, 197.0),
    (r"^TPU v5p?$", 459.0, 459.0),     # jax names v5p "TPU v5"
    (r"^TPU v6 ?(lite|e)$", 918.0, 918.0),
)

_measured: dict[tuple, float] = {}  # one matmul measurement per process and device set


def step_flops(compiled: Any) -> float | None:
  """FLOPs of one call of a compiled (per-device) program, from XLA's cost analysis; None
  when the backend gives none."""
  try:
    cost = compiled.cost_analysis()
  except Exception:  # pylint: disable=broad-except  (some backends do not implement it)
    return None
  if isinstance(cost, (list, tuple)):
    cost = cost[0] if cost else None
  flops = float(cost.get("flops", 0.0)) if cost else 0.0
  return flops if flops > 0 else None


def table_peak_flops(device_kind: str, dtype: str) -> float | None:
  """FLOP/s per chip of :data:`PEAKS` for ``dtype`` (``bfloat16`` | ``float32``), or None."""
  for pattern, bf16, f32 in PEAKS:
    if re.search(pattern, device_kind.strip()):
      return 1e12 * (bf16 if dtype == "bfloat16" else f32)
  return None


def measured_peak_flops(dtype: str, devices: list | None = None, n: int | None = None,
                        steps: int = 3) -> float:
  """FLOP/s per device of ``n x n`` matmuls run on all ``devices`` at once (default: the local
  ones), so devices that share a host's cores are measured sharing them. Measured once per
  process for each (devices, dtype)."""
  devices = list(devices or jax.local_devices())
  n = n or (512 if devices[0].platform == "cpu" else 8192)
  key = (tuple(d.id for d in devices), dtype, n)
  if key not in _measured:
    mesh = jax.sharding.Mesh(np.asarray(devices), ("d",))
    split = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("d"))
    shape = (len(devices), n, n)
    a = jax.device_put(jnp.ones(shape, dtype) / n, split)
    b = jax.device_put(jnp.ones(shape, dtype) / n, split)
    chain = 8  # matmuls per call: the launch overhead stays out of the figure

    @jax.jit
    def matmuls(x, y):
      return jax.lax.fori_loop(0, chain, lambda i, acc: jnp.einsum("dij,djk->dik", acc, y), x)

    seconds = timing.median_seconds(lambda: matmuls(a, b).block_until_ready(), steps)
    _measured[key] = chain * 2 * n**3 / seconds
  return _measured[key]


def peak_flops(dtype: str, override_tflops: float | None = None,
               device: Any = None) -> tuple[float, str]:
  """``(FLOP/s per device, where it comes from)``: the override, the table, or measured."""
  if override_tflops:
    return float(override_tflops) * 1e12, "peak_tflops"
  device = device or jax.local_devices()[0]
  peak = table_peak_flops(device.device_kind, dtype)
  if peak is not None:
    return peak, f"{device.device_kind} {dtype} table"
  return measured_peak_flops(dtype), f"{dtype} matmul measured on {device.platform}"


def utilization(flops_per_step: float | None, seconds_per_step: float,
                peak: float | None) -> dict[str, float]:
  """``{"tflops_per_device", "mfu"}`` of a step that takes ``seconds_per_step`` (the keys that
  can be computed)."""
  if not flops_per_step or seconds_per_step <= 0:
    return {}
  out = {"tflops_per_device": flops_per_step / seconds_per_step / 1e12}
  if peak:
    out["mfu"] = flops_per_step / seconds_per_step / peak
  return out
