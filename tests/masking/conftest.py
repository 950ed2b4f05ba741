import pytest

from dwm_jax.masking import block, hint, ops

# The jitted functions whose trace reads ops.HOST_PREDICATE_PLATFORMS (an outer jit caches the
# inner ones' traces with it).
_TRACED_WITH_THE_BRANCH = (ops._largest_mask_keys, ops._largest_mask_keys_split,  # pylint: disable=protected-access
                           block._beit_blocks, hint._hint_swap, hint._fill_and_swap)  # pylint: disable=protected-access


def _clear():
  # Only these: jax.clear_caches() would make every later test in the worker compile again.
  for fn in _TRACED_WITH_THE_BRANCH:
    fn.clear_cache()


@pytest.fixture
def gpu_variant(monkeypatch):
  """The masks as compiled for GPUs (loops with known trip counts), run here on CPU."""
  monkeypatch.setattr(ops, "HOST_PREDICATE_PLATFORMS", ("cpu", "cuda", "rocm"))
  _clear()
  yield
  monkeypatch.undo()
  _clear()
