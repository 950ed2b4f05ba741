"""Device profiles on request: a ``jax.profiler`` trace of chosen steps, into ``WORKDIR/profile/``.

``config.profile.num_steps`` > 0 traces the steps after ``profile.start_step`` steps are done
(counted over the whole run, like the log lines' ``step N``), on the processes listed in
``profile.processes``. The window must start after the invocation's first step (which carries
the warm-up); a run resumed past ``start_step`` traces nothing and says so.

The trace starts and stops at step boundaries with the devices idle (the loop waits for the
steps in flight first), so the window holds exactly those steps; each carries a
``StepTraceAnnotation`` (XProf's step markers). Tracing only observes: the steps compute the
same values, so a profiled run ends with the same parameters as an unprofiled one.

What is written, under ``WORKDIR/profile/plugins/profile/<date_time>/`` (``profile/process_<i>/``
on multi-process runs):

- ``<host>.xplane.pb``: the XSpace protobuf read by XProf and TensorBoard's profile plugin
  (``pip install xprof``, then ``xprof --logdir WORKDIR/profile``; or ``pip install
  tensorboard-plugin-profile``, then ``tensorboard --logdir WORKDIR/profile``, Profile tab);
- ``perfetto_trace.json.gz``: the same trace as Chrome trace-event JSON, which
  https://ui.perfetto.dev opens ("Open trace file").

A workdir on a bucket: the trace is written locally, then uploaded.
"""
from __future__ import annotations

import contextlib
import logging
import os
import shutil
import tempfile
from typing import Any, Callable, ContextManager

import jax
import ml_collections

from dwm_jax import paths

log = logging.getLogger("dwm_jax.train")

PROFILE_DIR = "profile"


def profile_dir(workdir: str, process_index: int, process_count: int) -> str:
  base = paths.join(workdir, PROFILE_DIR)
  return base if process_count == 1 else paths.join(base, f"process_{process_index}")


class Profiler:
  """Starts and stops the trace at the configured steps (see the module docstring)."""

  def __init__(self, cfg: ml_collections.ConfigDict, workdir: str, *, first_step: int,
               total_steps: int,
               guard: Callable[[str, str], ContextManager[Any]] = lambda what, where:
               contextlib.nullcontext()):
    self.guard = guard  # bounds the upload to a bucket (the loop's storage deadline)
    self.start = int(cfg.start_step)
    self.stop = min(self.start + int(cfg.num_steps), total_steps)
    self.target = profile_dir(workdir, jax.process_index(), jax.process_count())
    self.local: str | None = None
    self.active = (int(cfg.num_steps) > 0 and jax.process_index() in tuple(cfg.processes)
                   and self.start < self.stop)
    if self.active and self.start <= first_step:
      log.warning("profile: not tracing, this run starts at step %d and profile.start_step is "
                  "%d (the window must begin after the first step of a launch)", first_step,
                  self.start)
      self.active = False

  @property
  def tracing(self) -> bool:
    return self.local is not None

  def at(self, step: int, wait: Callable[[], None]) -> None:
    """Called with ``step`` steps done, before the next is dispatched; ``wait`` blocks until
    the steps in flight are done."""
    if not self.active:
      return
    if step == self.start and not self.tracing:
      wait()
      self.local = (self.target if not paths.is_remote(self.target)
                    else tempfile.mkdtemp(prefix="dwm-jax-profile-"))
      jax.profiler.start_trace(self.local, create_perfetto_trace=True)
      log.info("profile: tracing steps %d-%d", self.start + 1, self.stop)
    elif step == self.stop and self.tracing:
      wait()
      self.finish()

  def step(self, step: int) -> ContextManager:
    """Marks the dispatch of step ``step + 1`` in the trace (``step_num`` is that number, as in
    the log lines); nothing when not tracing."""
    if not self.tracing:
      return contextlib.nullcontext()
    return jax.profiler.StepTraceAnnotation("train", step_num=step + 1)

  def finish(self) -> None:
    """Stops the trace (if running) and, for a bucket workdir, uploads it."""
    if not self.tracing:
      return
    local, self.local, self.active = self.local, None, False
    jax.profiler.stop_trace()
    if local != self.target:
      with self.guard("uploading the profile to", self.target):
        for rel in paths.walk_files(local):
          paths.copy_file(os.path.join(local, rel), paths.join(self.target, rel))
      shutil.rmtree(local, ignore_errors=True)
    log.info("profile: trace of steps %d-%d in %s", self.start + 1, self.stop, self.target)


def trace_files(workdir: str) -> list[str]:
  """The trace files under ``WORKDIR/profile`` (relative paths), for tests and tools."""
  root = paths.join(workdir, PROFILE_DIR)
  return paths.walk_files(root) if paths.isdir(root) else []
