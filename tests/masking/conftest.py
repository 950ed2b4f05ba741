import jax
import pytest

from dwm_jax.masking import ops


@pytest.fixture
def gpu_variant(monkeypatch):
  """The masks as compiled for GPUs (loops with known trip counts), run here on CPU."""
  monkeypatch.setattr(ops, "HOST_PREDICATE_PLATFORMS", ("cpu", "cuda", "rocm"))
  jax.clear_caches()   # the jitted pieces were traced with the CPU branches
  yield
  monkeypatch.undo()
  jax.clear_caches()
