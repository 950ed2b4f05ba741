"""Compiling the tests' small programs without XLA's backend optimisations (a helper, not tests).

A test compiles a small program and runs it a few times, so LLVM's optimisation of the machine
code (XLA:CPU's -O2) costs more than it saves: about 40% of a tiny train step's compile time.
``jax_disable_most_optimizations`` skips it (``xla_backend_optimization_level=0``, no expensive
LLVM passes). The HLO passes, which decide what the program computes (fusion, conds, loops,
sharding), still run: the compiled step's HLO text is identical either way, so tests that read
it (no cond on the GPU path, known trip counts) check the same program.

Use ``pytestmark = pytest.mark.usefixtures("fast_compile")`` after importing the fixture, or
the ``autouse`` wrapper in a directory's conftest. Subprocesses take ``ENV``.
"""
import contextlib

import jax
import pytest

FLAG = "jax_disable_most_optimizations"
ENV = {FLAG.upper(): "1"}


@contextlib.contextmanager
def unoptimized_backend():
  """Compiles inside skip the backend (LLVM) optimisations; the old setting is restored."""
  old = jax.config.read(FLAG)
  jax.config.update(FLAG, True)
  try:
    yield
  finally:
    jax.config.update(FLAG, old)


@pytest.fixture(scope="module")
def fast_compile():
  """:func:`unoptimized_backend` for a whole test module."""
  with unoptimized_backend():
    yield
