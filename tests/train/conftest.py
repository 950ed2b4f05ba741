"""Shared helpers of the launcher tests: the tiny config and reading a run's final state."""
import contextlib
import glob
import importlib.util
import os

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest
from jax.experimental.compilation_cache import compilation_cache

TESTS = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = os.path.join(TESTS, "configs", "tiny.py")
REPO = os.path.dirname(TESTS)


_CACHE_OPTIONS = {"jax_compilation_cache_dir": None,
                  "jax_persistent_cache_min_compile_time_secs": 0.0,
                  "jax_persistent_cache_min_entry_size_bytes": 0}


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory):
  """One persistent compilation cache for all workers of this session (they share a parent)."""
  base = tmp_path_factory.getbasetemp()
  root = base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base
  path = root / "jax_compilation_cache"
  path.mkdir(exist_ok=True)
  return str(path)


@contextlib.contextmanager
def persistent_cache(path: str):
  """The launcher tests build the same tiny step again and again (every run, every restart):
  JAX's persistent compilation cache turns the repeats into cache hits. Restored on exit."""
  old = {name: getattr(jax.config, name) for name in _CACHE_OPTIONS}
  for name, value in {**_CACHE_OPTIONS, "jax_compilation_cache_dir": path}.items():
    jax.config.update(name, value)
  compilation_cache.reset_cache()
  try:
    yield path
  finally:
    for name, value in old.items():
      jax.config.update(name, value)
    compilation_cache.reset_cache()


@pytest.fixture
def compile_cache(cache_dir, monkeypatch):
  """:func:`persistent_cache` for one test; its subprocesses get it through the environment."""
  for name, value in {**_CACHE_OPTIONS, "jax_compilation_cache_dir": cache_dir}.items():
    monkeypatch.setenv(name.upper(), str(value))
  with persistent_cache(cache_dir):
    yield cache_dir


def truncate_arrays(workdir: str, step: int) -> None:
  """What a full disk or a failing network file system leaves: array files cut in half."""
  files = [p for p in glob.glob(os.path.join(workdir, "checkpoints", str(step), "state", "**", "*"),
                                recursive=True)
           if os.path.isfile(p) and os.sep + "d" + os.sep in p]
  assert files
  for path in files:
    os.truncate(path, os.path.getsize(path) // 2)


def tiny_config():
  spec = importlib.util.spec_from_file_location("tiny_config", TINY)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config()


def saved_state(workdir: str, step: int | None = None):
  """``(step, host pytree of the saved train state)`` of a workdir's latest (or given) step."""
  from dwm_jax.train import checkpoint as ckpt
  manager = ckpt.make_manager(workdir, read_only=True)
  step = manager.latest_step() if step is None else step
  out = manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore()))
  manager.close()
  return step, jax.tree.map(np.asarray, out["state"])


def assert_same_tree(a, b):
  la, ta = jax.tree.flatten_with_path(a)[0], jax.tree.structure(a)
  lb, tb = jax.tree.flatten_with_path(b)[0], jax.tree.structure(b)
  assert ta == tb
  for (path, x), (_, y) in zip(la, lb):
    assert np.array_equal(x, y), f"{jax.tree_util.keystr(path)} differs"


@pytest.fixture(scope="session")
def reference_run(tmp_path_factory, cache_dir):
  """An uninterrupted 8-step tiny run: ``(workdir, final saved state)``."""
  from dwm_jax.train import loop
  workdir = str(tmp_path_factory.mktemp("reference"))
  with persistent_cache(cache_dir):
    summary = loop.train(tiny_config(), workdir)
  assert summary["step"] == 8 and not summary["preempted"]
  step, state = saved_state(workdir)
  assert step == 8
  return workdir, state
