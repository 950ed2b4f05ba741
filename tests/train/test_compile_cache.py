"""The persistent compilation cache: where it goes, and that a run loaded from it trains exactly
what a compiled one does."""
import json
import os

import jax
import pytest

from dwm_jax.train import compile_cache, loop

from .conftest import assert_same_tree, saved_state, tiny_config


@pytest.fixture
def jax_cache_dir():
  """Sets ``jax_compilation_cache_dir`` for one test (restored after)."""
  old = jax.config.jax_compilation_cache_dir
  yield lambda path: jax.config.update("jax_compilation_cache_dir", path)
  jax.config.update("jax_compilation_cache_dir", old)


def test_where_the_cache_goes(monkeypatch, tmp_path, jax_cache_dir):
  monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
  assert compile_cache.default_dir() == str(tmp_path / "xdg" / "dwm-jax" / "jax")
  jax_cache_dir(None)
  assert compile_cache.resolve("auto") == compile_cache.default_dir()
  jax_cache_dir("/set/by/user")
  assert compile_cache.resolve("auto") == "/set/by/user"  # JAX's own setting wins
  for off in ("off", "", "none", "OFF"):
    assert compile_cache.resolve(off) is None
  assert compile_cache.resolve("gs://bkt/jax_cache") == "gs://bkt/jax_cache"
  monkeypatch.setenv("HOME", str(tmp_path))
  assert compile_cache.resolve("~/c") == str(tmp_path / "c")


@pytest.mark.slow
@pytest.mark.usefixtures("compile_cache")  # caches even sub-second compilations
def test_a_run_loaded_from_the_cache_equals_a_compiled_one(reference_run, cache_dir, tmp_path):
  """The reference run went through the session's cache, so a second launch with that cache
  loads its step; a launch without a cache compiles it. All three train the same."""
  _, reference = reference_run
  config = tiny_config()
  config.compile_cache = "off"
  off = loop.train(config, str(tmp_path / "off"))["launch"]
  assert off["compile_cache"] is None and not off["compile_cache_hit"]
  config.compile_cache = cache_dir
  warm = loop.train(config, str(tmp_path / "warm"))["launch"]
  assert warm["compile_cache"] == cache_dir and warm["compile_cache_hit"]
  assert_same_tree(saved_state(str(tmp_path / "off"))[1], reference)
  assert_same_tree(saved_state(str(tmp_path / "warm"))[1], reference)
  losses = [[json.loads(line)["loss"] for line in open(os.path.join(w, "metrics.jsonl"))]
            for w in (reference_run[0], tmp_path / "off", tmp_path / "warm")]
  assert losses[0] == losses[1] == losses[2]
