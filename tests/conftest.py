"""Test-wide setup (before jax imports): two host CPU devices so pmap paths run in-process, no
backend optimisations; shared fixtures."""
import importlib.util
import os

import pytest

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=2")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# Tests compile many small programs and run each a few times, so XLA:CPU's LLVM optimisation of
# the machine code costs more than it saves (about 40% of a tiny step's compile time). The HLO
# passes, which decide what a program computes (fusion, conds, loops, sharding), still run: the
# compiled HLO is the same either way, so tests that read it check the program users run. Set
# in the environment, so the tests' subprocesses (two-process runs, CLIs, HEAR kits) inherit it;
# JAX_DISABLE_MOST_OPTIMIZATIONS=0 runs the suite fully optimised.
os.environ.setdefault("JAX_DISABLE_MOST_OPTIMIZATIONS", "1")

# With the CUDA build of torch (the one pip takes here), loading triton's C extension after
# tensorflow segfaults the process (tensorflow 2.x + triton 3.8 symbol clash); torch imports
# triton lazily, e.g. when timm pulls in torchvision. Loading triton first avoids it.
if importlib.util.find_spec("triton") is not None:
    import triton  # noqa: F401


@pytest.fixture
def gpu_variant(monkeypatch):
  """The masks as compiled for GPUs (no cond, loops with known trip counts), run here on CPU."""
  # pylint: disable=import-outside-toplevel,protected-access
  from dwm_jax.masking import block, hint, inverse_block, ops
  # The jitted functions whose trace reads ops.HOST_PREDICATE_PLATFORMS (an outer jit caches the
  # inner ones' traces with it). Only these: jax.clear_caches() would make every later test in
  # the worker compile again.
  traced_with_the_branch = (ops._largest_mask_keys, ops._largest_mask_keys_split,
                            block._beit_blocks, hint._hint_swap, hint._fill_and_swap,
                            inverse_block.random_at_full_hint)
  monkeypatch.setattr(ops, "HOST_PREDICATE_PLATFORMS", ("cpu", "cuda", "rocm"))
  for fn in traced_with_the_branch:
    fn.clear_cache()
  yield
  monkeypatch.undo()
  for fn in traced_with_the_branch:
    fn.clear_cache()


_EMULATOR_DERIVED = ("TENSORSTORE_GCS_HTTP_URL", "EPATH_USE_TF", "GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT",
                     "NO_GCE_CHECK", "GOOGLE_AUTH_TOKEN_FOR_TESTING")


@pytest.fixture(scope="session")
def gcs(tmp_path_factory):
  """A real GCS-protocol server (fake-gcs-server on 127.0.0.1, a free port) for the session.

  Only ``STORAGE_EMULATOR_HOST`` is set, as a user would; ``dwm_jax.paths`` derives what
  tensorstore (``TENSORSTORE_GCS_HTTP_URL``), etils (``EPATH_USE_TF=false``) and gcsfs need.
  Subprocesses inherit all of it. Skipped, with the reason, only where the server cannot run.
  """
  from dwm_jax import paths  # pylint: disable=import-outside-toplevel
  from dwm_jax.testing import gcs_server  # pylint: disable=import-outside-toplevel
  try:
    server = gcs_server.FakeGcs(str(tmp_path_factory.mktemp("fake_gcs")))
  except gcs_server.Unavailable as e:
    pytest.skip(f"no GCS-protocol server: {e}")
  saved = dict(os.environ)
  for name in _EMULATOR_DERIVED:
    os.environ.pop(name, None)
  os.environ[paths.EMULATOR_ENV] = server.url
  paths.configure_emulator()
  assert os.environ["TENSORSTORE_GCS_HTTP_URL"] == server.url
  assert os.environ["EPATH_USE_TF"] == "false"
  yield server
  server.stop()
  os.environ.clear()
  os.environ.update(saved)


@pytest.fixture(scope="session")
def tfds_dir(tmp_path_factory):
  """A tiny audio dataset built and prepared locally in ArrayRecord format (no download):
  train 10 / validation 4 / test 4 clips of int16 audio at 8 kHz (``tests/tiny_tfds.py``)."""
  from tests import tiny_tfds  # pylint: disable=import-outside-toplevel
  data_dir = tmp_path_factory.mktemp("tfds")
  tiny_tfds.prepare(str(data_dir))
  return data_dir
