"""Test-wide setup: two host CPU devices so pmap paths run in-process (set before jax imports)."""
import importlib.util
import os

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=2")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

# With the CUDA build of torch (the one pip takes here), loading triton's C extension after
# tensorflow segfaults the process (tensorflow 2.x + triton 3.8 symbol clash); torch imports
# triton lazily, e.g. when timm pulls in torchvision. Loading triton first avoids it.
if importlib.util.find_spec("triton") is not None:
    import triton  # noqa: F401
