"""Test-wide setup: two host CPU devices so pmap paths run in-process (set before jax imports)."""
import os

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=2")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
