"""Orbax checkpoints of a pretraining run: train state, RNG, data iterator state and config.

Layout: ``WORKDIR/checkpoints/<step>/{state,data,config}``. ``state`` holds the unreplicated
``TrainState`` (params, optimizer state, EMA target, step) and the run's base RNG key; ``data``
the grain iterator state (one JSON file per process, grain's own orbax handler); ``config`` the
run's config as JSON, so a checkpoint alone can rebuild its model.

Saves are asynchronous and atomic: orbax writes into ``<step>.orbax-checkpoint-tmp-*`` and renames
it only once everything is written, so a run killed mid-save leaves a temporary folder that is
ignored (and removed) at the next start, never a half-written step.

A finished checkpoint can still be damaged afterwards (a full disk, a failing network file
system, a crash during fsync truncate its files). :func:`restore_latest` therefore restores the
newest checkpoint that restores *completely* (state, RNG, data position, config); one that fails
is logged in one line, moved aside to ``WORKDIR/damaged_checkpoints/`` (renamed, never deleted)
and the next older one is tried. With damaged checkpoints and no readable one it refuses to
start (:class:`NoReadableCheckpoint`) rather than train over them. Readers (export, probe,
``load_encoder``) use the same order read-only: they skip a damaged checkpoint and say so.

A workdir may be a bucket (``gs://bucket/run``): orbax then commits a save by writing
``commit_success.txt`` last (an object store has no atomic rename), an unfinished save is a step
folder without it, and moving a damaged checkpoint aside copies its objects, then deletes them
(:func:`dwm_jax.paths.move_dir`).
"""
from __future__ import annotations

import collections
import itertools
import json
import logging
import os
import sys
import threading
import time
from typing import Any, Callable

import grain.checkpoint as grain_ckpt
import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
from etils import epath

from dwm_jax import config as config_lib
from dwm_jax import faults, paths

log = logging.getLogger(__name__)

CHECKPOINT_DIR = "checkpoints"
DAMAGED_DIR = "damaged_checkpoints"
CONFIG_FILE = "config.json"
_barriers = itertools.count()  # names of the move-aside barriers (unique, same on every process)


class NoReadableCheckpoint(faults.Fault):
  """Damaged checkpoints and no readable one: starting over would train over saved work."""


class CheckpointMismatch(faults.UsageFault):
  """The checkpoint holds a different model or optimizer than the config builds."""


class CheckpointWriteError(faults.Fault):
  """A save failed (e.g. the disk is full); the previous checkpoint is intact."""


def checkpoint_dir(workdir: str) -> str:
  return paths.join(paths.absolute(workdir), CHECKPOINT_DIR)


class _QuietOrbax(logging.Filter):
  """Drops orbax's 'Given directory is read only' (every reader's manager is, on purpose) and
  the tracebacks its background threads log when an async save fails: the same error reaches
  the :class:`Saver`, which reports it in one line (``DWM_JAX_DEBUG=1`` keeps the tracebacks)."""

  def filter(self, record: logging.LogRecord) -> bool:
    if str(record.msg).startswith("Given directory is read only"):
      return False
    from_orbax = f"{os.sep}orbax{os.sep}" in (record.pathname or "")
    return not (from_orbax and record.exc_info and not faults.debug_enabled())


logging.getLogger("absl").addFilter(_QuietOrbax())


def make_manager(workdir: str, ckpt_cfg: ml_collections.ConfigDict | None = None, *,
                 read_only: bool = False, cleanup: bool = True,
                 on_commit: Callable[[], None] | None = None) -> ocp.CheckpointManager:
  """A manager keeping the last ``keep`` saves plus every ``keep_period``-th step.

  The loop decides when to save (``save(..., force=True)``), so no save interval is set here.
  ``on_commit`` runs (in orbax's background thread, on process 0) after each asynchronous save
  has committed. ``cleanup``: remove unfinished saves' temporary folders, in a background thread
  that the first save waits for; give it to one manager of a workdir at a time (two such threads
  removing the same folder fail each other: ``FileNotFoundError`` at the first save).
  """
  keep = int(ckpt_cfg.keep) if ckpt_cfg is not None else 3
  period = int(ckpt_cfg.keep_period) if ckpt_cfg is not None else 0
  policies = [ocp.checkpoint_managers.LatestN(n=keep)]
  if period > 0:
    policies.append(ocp.checkpoint_managers.EveryNSteps(interval_steps=period))
  async_save = bool(ckpt_cfg.async_save) if ckpt_cfg is not None else False
  options = ocp.CheckpointManagerOptions(
      enable_async_checkpointing=async_save,
      async_options=ocp.AsyncOptions(post_finalization_callback=on_commit)
      if async_save and on_commit is not None else None,
      preservation_policy=ocp.checkpoint_managers.AnyPreservationPolicy(policies),
      save_interval_steps=0 if read_only else 1,
      cleanup_tmp_directories=cleanup and not read_only,
      read_only=read_only,
      create=not read_only)
  return ocp.CheckpointManager(checkpoint_dir(workdir), options=options)


def save(manager: ocp.CheckpointManager, step: int, *, state: Any, rng: jax.Array,
         data_iter: Any, config: ml_collections.ConfigDict) -> None:
  """Starts an (async) save of ``state`` (host pytree, unreplicated) at ``step``.

  The data iterator's state is read now, synchronously: the iterator may advance as soon as this
  returns. Call ``manager.wait_until_finished()`` before exiting.
  """
  items = dict(
      state=ocp.args.StandardSave({"train": state, "rng": np.asarray(jax.random.key_data(rng))}),
      config=ocp.args.JsonSave(json.loads(config.to_json_best_effort())))
  if data_iter is not None:
    items["data"] = grain_ckpt.CheckpointSave(data_iter)
  manager.save(step, args=ocp.args.Composite(**items), force=True)


class Saver:
  """The loop's saves: a failed one (disk full, lost mount) becomes one
  :class:`CheckpointWriteError` naming the step that failed and the last one known intact.

  Saves are asynchronous: a background write that fails surfaces at the next save or at
  :meth:`finish`, which is why the saver tracks the step in flight.
  """

  def __init__(self, manager: ocp.CheckpointManager, workdir: str, last_good: int | None, *,
               synchronous: bool = False):
    self.manager, self.workdir, self.synchronous = manager, workdir, synchronous
    self.last_good, self.in_flight = last_good, None
    self._started: collections.deque = collections.deque()  # saves not yet known committed
    self._committed = last_good
    self._lock = threading.Lock()

  def committed(self) -> None:
    """``on_commit`` of :func:`make_manager`: the oldest started save has committed (orbax
    commits its saves one at a time, in order)."""
    with self._lock:
      if self._started:
        self._committed = self._started.popleft()

  def last_committed(self) -> int | None:
    """The newest checkpoint known to be committed, from what the saves reported (no storage
    access: the storage may be what does not answer)."""
    with self._lock:
      known = [s for s in (self._committed, self.last_good) if s is not None]
    return max(known, default=None)

  def _failed(self, step: int, e: Exception) -> CheckpointWriteError:
    intact = (f"checkpoint {self.last_good} is intact and the run resumes from it"
              if self.last_good is not None else "no earlier checkpoint exists")
    return CheckpointWriteError(
        f"saving checkpoint {step} to {checkpoint_dir(self.workdir)} failed ({faults.one_line(e)}); "
        f"{intact}. Free space there (or lower checkpoint.keep), then rerun the same command")

  def _settle(self) -> int | None:
    """Moves a finished in-flight save to ``last_good``; returns the in-flight step if it did
    not finish (then it is the one that failed)."""
    if self.in_flight is not None and _finished(self.workdir, self.in_flight):
      self.last_good, self.in_flight = self.in_flight, None
    return self.in_flight

  def save(self, step: int, **items: Any) -> None:
    with self._lock:
      self._started.append(step)
    try:
      save(self.manager, step, **items)  # first waits for the save in flight, raising its error
    except Exception as e:  # pylint: disable=broad-except  (orbax/tensorstore raise many types)
      try:
        self.manager.wait_until_finished()  # did the save in flight finish, or fail?
      except Exception:  # pylint: disable=broad-except  (then that one is what failed)
        pass
      unfinished = self._settle()
      raise self._failed(step if unfinished is None else unfinished, e) from e
    if self.synchronous:
      # Committed when it returns: nothing to look up in the storage (a bucket that stalls
      # now would hold this save open after it committed, and name the one before as good).
      self.last_good = step
      self.committed()
      return
    self._settle()
    self.in_flight = step

  def finish(self) -> None:
    """Waits for the save in flight; raises :class:`CheckpointWriteError` if it failed."""
    try:
      self.manager.wait_until_finished()
    except Exception as e:  # pylint: disable=broad-except
      unfinished = self._settle()
      raise self._failed(unfinished if unfinished is not None else -1, e) from e
    self._settle()


class SaveClock:
  """``checkpoint.every_minutes``: a save is due once that many minutes have passed since the
  last save of any kind (or the start of the launch), next to ``every_steps``, whichever comes
  first. The loop asks at its log steps; process 0's clock decides and, on a multi-process run,
  one broadcast gives every process its answer, so all save the same step."""

  def __init__(self, minutes: float, clock: Callable[[], float] | None = None):
    self.seconds, self._clock = 60.0 * float(minutes), clock or time.monotonic
    self._last = self._clock()

  def saved(self) -> None:
    self._last = self._clock()

  def due(self) -> bool:
    if self.seconds <= 0:
      return False
    due = self._clock() - self._last >= self.seconds
    if jax.process_count() > 1:
      from jax.experimental import multihost_utils  # pylint: disable=import-outside-toplevel
      due = bool(multihost_utils.broadcast_one_to_all(np.int32(due)))
    return due


def restore(manager: ocp.CheckpointManager, step: int, *, state_template: Any,
            data_iter: Any) -> tuple[Any, jax.Array]:
  """Restores ``(host_state, rng)`` of ``step`` and sets ``data_iter`` to its saved position.

  ``state_template`` is a host (numpy) pytree of the right structure, shapes and dtypes.
  """
  key_template = np.asarray(jax.random.key_data(jax.random.key(0)))
  items = dict(state=ocp.args.StandardRestore({"train": state_template, "rng": key_template}))
  if data_iter is not None:
    items["data"] = grain_ckpt.CheckpointRestore(data_iter)
  out = manager.restore(step, args=ocp.args.Composite(**items))
  restored = out["state"]
  state = jax.tree.map(np.asarray, restored["train"])
  return state, jax.random.wrap_key_data(np.asarray(restored["rng"], np.uint32))


def saved_config(manager: ocp.CheckpointManager, step: int) -> ml_collections.ConfigDict:
  """The config stored with checkpoint ``step``."""
  out = manager.restore(step, args=ocp.args.Composite(config=ocp.args.JsonRestore()))
  return ml_collections.ConfigDict(out["config"])


def _shapes(tree: Any) -> collections.Counter:
  """The multiset of ``(shape, dtype)`` of a tree's arrays: a structure check that does not
  depend on how containers are named in orbax's metadata."""
  leaves = jax.tree.leaves(tree, is_leaf=lambda x: hasattr(x, "shape") and hasattr(x, "dtype"))
  return collections.Counter((tuple(x.shape), np.dtype(x.dtype).name) for x in leaves)


def _check_structure(workdir: str, step: int, state_template: Any) -> None:
  """Raises :class:`CheckpointMismatch` when checkpoint ``step`` holds other shapes than the
  config's state (metadata only: a damaged metadata file raises whatever orbax raises)."""
  meta = ocp.StandardCheckpointHandler().metadata(step_dir(workdir, step) / "state")
  saved = _shapes(meta.item_metadata["train"] if hasattr(meta, "item_metadata") else meta["train"])
  wanted = _shapes(state_template)
  if saved != wanted:
    only_saved = sorted((saved - wanted).elements())[:3]
    only_wanted = sorted((wanted - saved).elements())[:3]
    raise CheckpointMismatch(
        f"checkpoint {step} in {checkpoint_dir(workdir)} holds another model or optimizer than "
        f"this config builds (arrays only there: {only_saved}; only here: {only_wanted}). Run "
        "with the config it was written with, or use a new workdir")


def step_dir(workdir: str, step: int) -> epath.Path:
  return epath.Path(checkpoint_dir(workdir)) / str(step)


def _finished(workdir: str, step: int) -> bool:
  """Whether the save of ``step`` committed (a renamed folder locally; a bucket's step folder
  exists from its first object on, so there it is its ``commit_success.txt``)."""
  path = step_dir(workdir, step)
  return path.exists() and ocp.path.step.is_path_finalized(path)


def finished_steps(workdir: str) -> list[int]:
  """Steps of the committed checkpoints of ``workdir`` (what a restart resumes from, unless
  damaged), oldest first; temporary folders of unfinished saves are not among them."""
  path = checkpoint_dir(workdir)
  if not paths.isdir(path):
    return []
  return sorted(int(n) for n in paths.listdir(path) if n.isdigit() and _finished(workdir, int(n)))


def damaged_dir(workdir: str) -> str:
  return paths.join(paths.absolute(workdir), DAMAGED_DIR)


def move_aside(workdir: str, step: int) -> str:
  """Moves checkpoint ``step`` to ``WORKDIR/damaged_checkpoints/<step>-<unix time>``."""
  target = paths.join(damaged_dir(workdir), f"{step}-{int(time.time())}")
  paths.move_dir(os.fspath(step_dir(workdir, step)), target)
  return target


def newest_first(names: list[str]) -> list[str]:
  """Set-aside checkpoint folders (``<step>-<time>``) by step, newest first."""
  def step(name: str) -> int:
    head = name.split("-", 1)[0]
    return int(head) if head.isdigit() else -1
  return sorted(names, key=lambda n: (step(n), n), reverse=True)


def damaged_checkpoints(workdir: str) -> list[str]:
  path = damaged_dir(workdir)
  return paths.listdir(path) if paths.isdir(path) else []


_failed_reads: set[str] = set()  # step folders whose restore failed (and was reported)


class _ReportedReadFilter(logging.Filter):
  """Drops asyncio's 'Task exception was never retrieved' records for reads of a checkpoint
  whose failure was already reported in one line. Orbax leaves those read tasks behind when a
  restore fails, and asyncio logs each one, with a traceback, whenever the garbage collector
  finds it: possibly much later, in the middle of training or of another command."""

  def filter(self, record: logging.LogRecord) -> bool:
    message = record.getMessage()
    if not message.startswith("Task exception was never retrieved"):
      return True
    text = message + (str(record.exc_info[1]) if record.exc_info else "")
    return not any(path in text for path in _failed_reads)


def _reported(workdir: str, step: int) -> None:
  _failed_reads.add(str(step_dir(workdir, step)))


def _quiet_cancelled_reads() -> None:
  """After a failed restore, tensorstore completes the reads still in flight and calls back into
  orbax's event loop, which is closed by then: each callback prints an 'Event loop is closed'
  traceback (hundreds of them, burying the real error). Those, and only those, are dropped, and
  so are asyncio's late reports of the same reads (:class:`_ReportedReadFilter`)."""
  asyncio_log = logging.getLogger("asyncio")
  if not any(isinstance(f, _ReportedReadFilter) for f in asyncio_log.filters):
    asyncio_log.addFilter(_ReportedReadFilter())
  previous = sys.unraisablehook
  if getattr(previous, "dwm_jax_filter", False):
    return

  def hook(unraisable):
    e = unraisable.exc_value
    if isinstance(e, RuntimeError) and str(e) == "Event loop is closed":
      return
    previous(unraisable)

  hook.dwm_jax_filter = True
  sys.unraisablehook = hook


def _agree(ok: bool) -> bool:
  """Whether every process restored its checkpoint (all must resume from the same step)."""
  if jax.process_count() == 1:
    return ok
  from jax.experimental import multihost_utils  # pylint: disable=import-outside-toplevel
  return bool(np.all(multihost_utils.process_allgather(np.int32(ok))))


def restore_latest(workdir: str, manager: ocp.CheckpointManager, *, state_template: Any,
                   data_iter: Any) -> tuple[int, Any, jax.Array, ml_collections.ConfigDict] | None:
  """``(step, host_state, rng, saved_config)`` of the newest checkpoint that restores
  completely, or None when there is none to resume from (a fresh start).

  A checkpoint that fails to restore is logged (step, path, error) and moved aside (process 0),
  then the next older one is tried. Raises :class:`NoReadableCheckpoint` when damaged
  checkpoints exist (now or from an earlier start) and none restores, and
  :class:`CheckpointMismatch` for a checkpoint of another model (which is not damage).
  """
  _quiet_cancelled_reads()
  for step in sorted(manager.all_steps(), reverse=True):
    try:
      _check_structure(workdir, step, state_template)
      config = saved_config(manager, step)
      state, rng = restore(manager, step, state_template=state_template, data_iter=data_iter)
      ok = True
    except CheckpointMismatch:
      raise
    except Exception as e:  # pylint: disable=broad-except  (damage shows as any error)
      ok, error = False, e
      _reported(workdir, step)
    if _agree(ok):
      return step, state, rng, config
    if ok:
      error = RuntimeError("another process could not restore it")
    log.warning("checkpoint %d at %s does not restore (%s); moving it to %s/ and trying the "
                "previous one", step, step_dir(workdir, step), faults.one_line(error), DAMAGED_DIR)
    if jax.process_index() == 0:
      move_aside(workdir, step)
    if jax.process_count() > 1:
      ocp.multihost.get_barrier_sync_fn()(key=f"dwm_jax_moved_{next(_barriers)}",
                                          timeout_ms=600_000)
  damaged = damaged_checkpoints(workdir)
  if damaged:
    raise NoReadableCheckpoint(
        f"no readable checkpoint in {checkpoint_dir(workdir)}, and {len(damaged)} damaged one(s) "
        f"in {damaged_dir(workdir)} ({faults.listing(newest_first(damaged))}): "
        "refusing to train over them. Restore them from a backup, or delete that folder to "
        "start this run from step 0")
  return None


def readable_steps(workdir: str, manager: ocp.CheckpointManager, restore_fn: Callable[[int], Any],
                   step: int | None = None) -> tuple[int, Any]:
  """Read-only fallback for readers: ``(step, restore_fn(step))`` of the newest checkpoint
  that restores (or exactly ``step``); damaged ones are skipped with a warning, not moved."""
  steps = [step] if step is not None else sorted(manager.all_steps(), reverse=True)
  errors = []
  _quiet_cancelled_reads()
  for s in steps:
    try:
      out = restore_fn(s)
    except Exception as e:  # pylint: disable=broad-except  (damage shows as any error)
      _reported(workdir, s)
      errors.append(f"step {s}: {faults.one_line(e)}")
      log.warning("checkpoint %d at %s does not restore (%s); trying the previous one", s,
                  step_dir(workdir, s), faults.one_line(e))
      continue
    if errors:
      log.warning("using checkpoint %d of %s (newer ones do not restore)", s, workdir)
    return s, out
  if not steps:
    raise FileNotFoundError(f"{checkpoint_dir(workdir)!r} holds no finished checkpoint")
  # Each failure was logged as it happened; the message keeps the newest one and a count.
  raise NoReadableCheckpoint(f"no checkpoint of {checkpoint_dir(workdir)} restores ("
                             f"{len(errors)} tried; the newest, {errors[0]}): restore them "
                             "from a backup, or read another run")


def config_diff(old: ml_collections.ConfigDict, new: ml_collections.ConfigDict) -> list[str]:
  """``field: old -> new`` lines for the fields where two configs differ."""
  a, b = config_lib.flatten(old), config_lib.flatten(new)
  return [f"{k}: {a.get(k)!r} -> {b.get(k)!r}" for k in sorted(set(a) | set(b))
          if a.get(k) != b.get(k)]


def write_config(workdir: str, config: ml_collections.ConfigDict) -> str:
  """``WORKDIR/config.json`` for people and tools (the checkpoints carry their own copy)."""
  return paths.write_text(paths.join(workdir, CONFIG_FILE),
                          config.to_json_best_effort(indent=2, sort_keys=True))


def restore_encoder(workdir: str, step: int | None = None
                    ) -> tuple[ml_collections.ConfigDict, Any]:
  """``(config, encoder_params)`` of a workdir's latest (or given) checkpoint, on the host.

  Used by ``dwm_jax.evaluate.encoder.load_encoder`` and ``dwm-jax export``.
  """
  from dwm_jax.train.state import encoder_params  # the state module knows the params layout

  if not paths.isdir(checkpoint_dir(workdir)):
    raise FileNotFoundError(f"no checkpoints under {checkpoint_dir(workdir)!r}: is {workdir!r} "
                            "a pretraining workdir?")
  manager = make_manager(workdir, read_only=True)

  def read(s: int) -> Any:
    return manager.restore(s, args=ocp.args.Composite(state=ocp.args.StandardRestore(),
                                                     config=ocp.args.JsonRestore()))
  try:
    step, out = readable_steps(workdir, manager, read, step)
  finally:
    manager.close()
  params = out["state"]["train"]["params"]
  log.info("restored encoder of %s at step %d", workdir, step)
  return ml_collections.ConfigDict(out["config"]), jax.tree.map(np.asarray, encoder_params(params))
