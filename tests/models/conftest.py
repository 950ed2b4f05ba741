"""The model tests compile many small programs, each run a few times: compile them without the
backend (LLVM) optimisations (same HLO; see tests/fast_compile.py)."""
import pytest

from tests.fast_compile import unoptimized_backend


@pytest.fixture(scope="module", autouse=True)
def fast_compile():
  with unoptimized_backend():
    yield
