"""JAX's persistent compilation cache, on by default: a restarted run loads its step instead of
compiling it again.

``config.compile_cache``:

- ``"auto"`` (default): the cache JAX was already given (``JAX_COMPILATION_CACHE_DIR`` or
  ``jax.config.update("jax_compilation_cache_dir", ...)``), else :func:`default_dir`
  (``$XDG_CACHE_HOME/dwm-jax/jax``, i.e. ``~/.cache/dwm-jax/jax``);
- a folder or a bucket URL (``gs://bucket/jax_cache``, shared by the hosts of a pod);
- ``"off"`` (or ``""``): no persistent cache.

JAX keys each entry by the program, the compile options, the devices and the JAX / XLA versions,
so an entry is only reused for the very same program; it caches compilations that took at least
``jax_persistent_cache_min_compile_time_secs`` (1 s by default). The setting is the process's:
JAX has one cache.
"""
from __future__ import annotations

import contextlib
import os
from typing import Iterator

import jax
from jax.experimental.compilation_cache import compilation_cache

OFF = ("", "off", "none")
_HITS = "/jax/compilation_cache/cache_hits"
_MISSES = "/jax/compilation_cache/cache_misses"


def default_dir() -> str:
  base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
  return os.path.join(base, "dwm-jax", "jax")


def resolve(setting: str) -> str | None:
  """The cache folder ``setting`` names (None: off)."""
  setting = str(setting or "").strip()
  if setting.lower() in OFF:
    return None
  if setting == "auto":
    return jax.config.jax_compilation_cache_dir or default_dir()
  return setting if "://" in setting else os.path.abspath(os.path.expanduser(setting))


def configure(setting: str) -> str | None:
  """Points JAX's persistent cache at ``resolve(setting)`` (or turns it off); returns the
  folder. JAX opens its cache at the next compilation."""
  path = resolve(setting)
  if path is None:
    if jax.config.jax_enable_compilation_cache:
      jax.config.update("jax_enable_compilation_cache", False)
      compilation_cache.reset_cache()
    return None
  if path != jax.config.jax_compilation_cache_dir or not jax.config.jax_enable_compilation_cache:
    jax.config.update("jax_enable_compilation_cache", True)
    jax.config.update("jax_compilation_cache_dir", path)
    compilation_cache.reset_cache()
  return path


@contextlib.contextmanager
def count_hits() -> Iterator[dict[str, int]]:
  """``{"hits": h, "misses": m}`` of the persistent cache during the ``with`` block."""
  counts = {"hits": 0, "misses": 0}

  def listener(event: str, **kwargs) -> None:
    del kwargs
    if event == _HITS:
      counts["hits"] += 1
    elif event == _MISSES:
      counts["misses"] += 1

  jax.monitoring.register_event_listener(listener)
  try:
    yield counts
  finally:
    jax.monitoring.unregister_event_listener(listener)
