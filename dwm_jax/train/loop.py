"""The pretraining loop: data -> compiled train step -> logs and checkpoints, resumable exactly.

A run is a pure function of (config, the number of steps done): the state and the data iterator
position come from the latest checkpoint, the step's mask/dropout key is the run key folded with
the step counter, and every schedule is a function of that counter inside the step. So a run
stopped anywhere and restarted from its last checkpoint ends with the same parameters as one that
never stopped.

What the host does per step, and only that: take the next host batch, start its copy to the
devices (one step ahead, so it overlaps the running step) and dispatch the compiled step. Metrics
come back to the host only at logging steps, masks only at mask-PNG steps; the non-finite check
reads a flag the step keeps on the device, at logging and checkpoint steps. At most two steps are
in flight, so the host never runs further ahead than the next batch.
"""
from __future__ import annotations

import collections
import itertools
import logging
import signal
import threading
import time
from typing import Any, Callable, Iterator

import jax
import ml_collections

from dwm_jax import config as config_lib
from dwm_jax import faults, paths
from dwm_jax.data import pipeline, sources
from dwm_jax.train import checkpoint as ckpt
from dwm_jax.train import compile_cache
from dwm_jax.train import deadline as deadline_lib
from dwm_jax.train import memory
from dwm_jax.train import mesh as mesh_lib
from dwm_jax.train import metrics_log, mfu
from dwm_jax.train import profile as profile_lib
from dwm_jax.train import setup as setup_lib
from dwm_jax.train import state as state_lib

log = logging.getLogger("dwm_jax.train")

IN_FLIGHT = 2  # steps dispatched but not yet waited for
# How long the processes of a multi-host run wait for each other after compiling (compile times
# differ by host; the first cross-process collective would otherwise time out after 30 s).
START_BARRIER_SECONDS = 1800
_starts = itertools.count()  # barrier names must be unique: one per train() call


class NonFiniteLossError(faults.Fault, RuntimeError):
  """The loss (or gradient norm) became NaN/Inf; the run stopped without saving that state."""


class DataPipelineError(faults.Fault):
  """The input pipeline failed (a data worker died, too many unreadable files)."""


class DataStorageDown(faults.RestartFault, DataPipelineError):
  """The data's bucket stopped answering: nothing to fix in the job (status 75)."""


def _pipeline_error(e: BaseException) -> type[DataPipelineError]:
  """The error class for a failed ``next(data_iter)``: a storage outage (raised in this process,
  or by a grain worker, whose error grain re-raises under another type) restarts, the rest is a
  fault to fix."""
  while e is not None:
    if isinstance(e, sources.StorageUnavailable) or "StorageUnavailable" in str(e):
      return DataStorageDown
    e = e.__cause__ or e.__context__
  return DataPipelineError


class StopRequest:
  """SIGTERM / SIGINT set a flag the loop checks after every step (a second SIGINT aborts).

  Multi-process runs instead ask JAX's preemption sync point, so every process stops at the same
  step (a collective save needs all of them); handlers only go in on the main thread.
  """

  def __init__(self, multi_process: bool):
    self.multi_process = multi_process
    self.signal_name: str | None = None
    self._previous: dict[int, Any] = {}

  def _handle(self, signum, frame):
    del frame
    if self.signal_name == "SIGINT" and signum == signal.SIGINT:
      raise KeyboardInterrupt  # second Ctrl-C: stop now, without the checkpoint
    self.signal_name = signal.Signals(signum).name
    log.warning("received %s: saving a checkpoint after this step, then exiting",
                self.signal_name)

  def __enter__(self) -> "StopRequest":
    if not self.multi_process and threading.current_thread() is threading.main_thread():
      for sig in (signal.SIGTERM, signal.SIGINT):
        self._previous[sig] = signal.signal(sig, self._handle)
    return self

  def __exit__(self, *exc) -> None:
    for sig, handler in self._previous.items():
      signal.signal(sig, handler)

  def should_stop(self, step: int) -> bool:
    if self.multi_process:
      from jax.experimental import multihost_utils  # pylint: disable=import-outside-toplevel
      if multihost_utils.reached_preemption_sync_point(step):
        self.signal_name = "preemption"
    return self.signal_name is not None


class DataPosition:
  """The data iterator's position after one batch, in the form grain's orbax handler saves.

  The loop pulls the next batch before it saves the current step, so the live iterator is one
  batch ahead of the state; this snapshot is taken right after the batch the step trained on.
  """

  def __init__(self, data_iter: Any):
    import json  # pylint: disable=import-outside-toplevel
    self._state = json.dumps(data_iter.get_state()).encode()

  def get_state(self) -> bytes:
    return self._state


def _raise_nonfinite(bad_step: int, last_saved: int | None, workdir: str) -> None:
  where = (f"the last good checkpoint (step {last_saved}) in {ckpt.checkpoint_dir(workdir)} "
           "is intact" if last_saved is not None else "no checkpoint was saved")
  raise NonFiniteLossError(
      f"loss or gradient norm is NaN/Inf at step {bad_step}: stopping; {where}. "
      "Lower optim.base_lr, set optim.clip_norm, or check the data.")


def _write_mask_png(workdir: str, writer: Any, setup: setup_lib.RunSetup, batch: Any,
                    mask: Any, step: int, hint: float) -> None:
  """The first clip of the global batch and the mask the step trained on (process 0)."""
  logmel, row = mesh_lib.first_row(batch["logmel"]), mesh_lib.first_row(mask)
  if logmel is None or row is None:
    return
  title = (f"step {step}, epoch {step / setup.steps_per_epoch:.2f}: first clip of the batch and "
           f"its trained mask ({setup.mask_name}, ratio {setup.mask_ratio}, hint {hint:.2f})")
  img = metrics_log.mask_png(paths.join(workdir, "masks", f"step_{step:08d}.png"), logmel,
                             row, setup.patch_size, title=title)
  writer.write_images(step, {"masks": img[None]})


def _initial_state(setup: setup_lib.RunSetup, mesh: Any, key: jax.Array) -> Any:
  """A fresh state created on the devices, already replicated (no host round trip)."""
  rep = mesh_lib.replicated(mesh)
  return jax.jit(lambda k: state_lib.create_train_state(setup, k), out_shardings=rep)(key)


# Fields that never change what a run trains: a resume with other values is not warned about.
_NEUTRAL = ("log_every_steps", "mask_png_every_steps", "checkpoint.", "profile.", "storage.",
            "compile_cache", "peak_tflops")


def _data_location(config: ml_collections.ConfigDict) -> str:
  """A bucket path the input pipeline reads (its waits are bounded), or '' for local data."""
  values = config_lib.flatten(config.data).values()
  return next((v for v in values if isinstance(v, str) and paths.is_remote(v)), "")


def _compile(setup: setup_lib.RunSetup, mesh: Any, config: ml_collections.ConfigDict,
             primary: bool) -> tuple[Any, memory.MemoryPlan, dict[str, Any]]:
  """The step compiled ahead of time (through the persistent cache), its memory plan, and
  ``{"compile_seconds", "compile_cache", "compile_cache_hit"}``."""
  cache = compile_cache.configure(config.compile_cache)
  t = time.perf_counter()
  with compile_cache.count_hits() as counts:
    compiled, plan = memory.compile_step(setup, mesh)
  info = {"compile_seconds": time.perf_counter() - t, "compile_cache": cache,
          "compile_cache_hit": counts["hits"] > 0}
  if primary:
    how = ("loaded from the persistent cache" if info["compile_cache_hit"] else "compiled") + (
        f" ({cache})" if cache else " (persistent cache off)")
    log.info("train step %s in %.1f s; %s", how, info["compile_seconds"], plan.summary())
  return compiled, plan, info


def _progress(setup: setup_lib.RunSetup, compiled: Any, config: ml_collections.ConfigDict,
              primary: bool) -> metrics_log.Progress:
  """The log line's figures: XLA's FLOPs of the compiled step and the device's peak."""
  flops = mfu.step_flops(compiled)
  peak, source = mfu.peak_flops(str(config.model.dtype), config.peak_tflops)
  if primary:
    log.info("XLA: %s per step per device; peak %.3g TFLOP/s per device (%s)",
             f"{flops / 1e9:.3g} GFLOP" if flops else "no FLOP count", peak / 1e12, source)
  return metrics_log.Progress(setup.total_steps, setup.batch_size, devices=jax.device_count(),
                              flops_per_step=flops, peak_flops=peak)


def train(config: ml_collections.ConfigDict, workdir: str, *,
          on_step: Callable[[int], None] | None = None,
          batches: Iterator[dict] | None = None) -> dict[str, Any]:
  """Pretrains ``config`` in ``workdir``, resuming from its latest checkpoint if any.

  ``on_step(steps_done)`` runs after every step (and its logging / checkpointing): a hook for
  notebooks and for the tests that interrupt a run at a chosen step. ``batches`` replaces the
  config's input pipeline (benchmarks feed device-resident batches; checkpoints then hold no
  data position).

  Returns this launch's summary: ``{"step", "total_steps", "preempted", "resumed_from",
  "final_loss", "train_seconds", "steps_trained", "clips_per_sec", "throughput", "launch",
  "memory", "workdir", ...}`` (``throughput``: :meth:`metrics_log.Progress.totals`; ``launch``:
  the figures :func:`dwm_jax.main.merge_summary` adds up over the run's launches). Raises
  :class:`NonFiniteLossError` on NaN/Inf and :class:`memory.DoesNotFit` before step 1 when the
  step cannot fit in device memory; a bucket that stops answering ends the process
  (:mod:`dwm_jax.train.deadline`).
  """
  t_launch = time.perf_counter()
  workdir = paths.absolute(workdir)
  paths.set_request_timeout(float(config.storage.request_timeout_seconds))
  saver = None

  def resume_point() -> str:
    if saver is None:  # the checkpoints have not been read yet: a rerun finds the newest
      return ""
    good = saver.last_committed()
    return (f"checkpoint {good} is the last good one" if good is not None
            else "no checkpoint of this run is saved yet")

  deadline = deadline_lib.Deadline(float(config.storage.timeout_seconds), state=resume_point)
  ckpt_dir = ckpt.checkpoint_dir(workdir)
  data_at = _data_location(config) if batches is None else ""
  with deadline.guard("checking", workdir):
    paths.check_writable(workdir)  # a bad bucket fails here, before anything is read or built
  primary = jax.process_index() == 0
  setup = setup_lib.build(config, pipeline.dataset_size(config.data))
  mesh = mesh_lib.data_mesh()
  if primary:
    with deadline.guard("writing the config to", workdir):
      ckpt.write_config(workdir, config)
    log.info("config:\n%s", config)
    log.info("%d devices (%d local), %d processes; global batch %d (%d per device); "
             "%d steps per epoch, %d steps (%.2f epochs)", jax.device_count(),
             jax.local_device_count(), jax.process_count(), setup.batch_size,
             setup.batch_size // jax.device_count(), setup.steps_per_epoch, setup.total_steps,
             setup.total_epochs)

  compiled, plan, compile_info = _compile(setup, mesh, config, primary)
  memory.check(plan)
  progress = _progress(setup, compiled, config, primary)
  if jax.process_count() > 1:
    import orbax.checkpoint as ocp  # pylint: disable=import-outside-toplevel
    ocp.multihost.get_barrier_sync_fn()(key=f"dwm_jax_compiled_{next(_starts)}",
                                        timeout_ms=START_BARRIER_SECONDS * 1000)
  if batches is None and not config.data.stats and config.data.get("stats_crops", 0) > 0:
    # The training data's normalization statistics (after the memory plan: reading thousands of
    # crops can take minutes), recorded in the config the checkpoints and config.json keep.
    config = pipeline.with_run_stats(config, workdir, write=primary)
    if primary:
      with deadline.guard("writing the config to", workdir):
        ckpt.write_config(workdir, config)

  if batches is None:
    loader = pipeline.make_pretrain_loader(
        config.data, input_shape=setup.input_shape, global_batch_size=setup.batch_size,
        seed=int(config.seed), process_index=jax.process_index(),
        process_count=jax.process_count())
    data_iter = iter(loader)
  else:
    data_iter = batches

  k_init, key = jax.random.split(jax.random.key(int(config.seed)))
  with deadline.guard("restoring the latest checkpoint from", ckpt_dir):
    # Only the second manager, the one that saves, removes unfinished saves (nothing built twice).
    manager = ckpt.make_manager(workdir, config.checkpoint, cleanup=False)
    restored = ckpt.restore_latest(
        workdir, manager, state_template=state_lib.abstract_train_state(setup),
        data_iter=data_iter if batches is None else None)
    manager.close()  # a fresh manager: the restore may have moved damaged checkpoints aside
    manager = ckpt.make_manager(workdir, config.checkpoint, on_commit=lambda: saver.committed())
  if restored is None:
    start = None
    state = _initial_state(setup, mesh, k_init)
  else:
    start, host_state, key, saved = restored
    diff = [d for d in ckpt.config_diff(saved, config) if not d.startswith(_NEUTRAL)]
    if diff:
      log.warning("resuming with a config that differs from the checkpoint's (the run will not "
                  "match an uninterrupted one):\n  %s", "\n  ".join(diff))
    state = mesh_lib.put_replicated(host_state, mesh)
    del host_state
    log.info("resumed from step %d of %s", start, ckpt_dir)
  host_key, key = key, mesh_lib.put_replicated(key, mesh)
  saver = ckpt.Saver(manager, workdir, last_good=start,
                     synchronous=not config.checkpoint.async_save)
  clock = ckpt.SaveClock(float(config.checkpoint.every_minutes))

  with deadline.guard("reading the run's logs from", workdir):
    # How far an earlier launch got beyond the checkpoint this one resumes from.
    reached = metrics_log.last_logged_step(workdir) if primary and start is not None else None
    writer = metrics_log.make_writer(workdir, is_primary=primary)
  steps_repeated = max(0, reached - start) if reached is not None else 0
  writer.write_hparams(metrics_log.hparams(config))
  png_every = int(config.mask_png_every_steps)
  step = first = start or 0
  profiler = profile_lib.Profiler(config.profile, workdir, first_step=first,
                                  total_steps=setup.total_steps, guard=deadline.guard)
  last_saved = start
  last_logged: dict[str, float] = {}
  in_flight: collections.deque = collections.deque()
  t_start = time.perf_counter()
  startup_seconds, checkpoint_seconds = None, 0.0
  stop = StopRequest(multi_process=jax.process_count() > 1)

  def pull() -> tuple[Any, Any]:
    t = time.perf_counter()
    try:
      with deadline.guard("reading the next batch from", data_at):
        host_batch = next(data_iter)
    except Exception as e:  # pylint: disable=broad-except  (grain re-raises workers' errors)
      raise _pipeline_error(e)(f"the input pipeline failed after step {step} "
                               f"({faults.one_line(e)})") from e
    progress.waited(time.perf_counter() - t)
    batch = mesh_lib.put_batch(host_batch, mesh)
    return batch, (DataPosition(data_iter) if batches is None else None)

  def save(position: Any) -> None:
    nonlocal last_saved, checkpoint_seconds
    check_finite()  # waits for the step (compute, not checkpoint time)
    t = time.perf_counter()
    with deadline.guard(f"saving checkpoint {step} to", ckpt_dir):
      saver.save(step, state=mesh_lib.to_host(state), rng=host_key, data_iter=position,
                 config=config)
    checkpoint_seconds += time.perf_counter() - t
    clock.saved()
    last_saved = step

  def check_finite() -> None:
    bad = int(mesh_lib.to_host(state.first_nonfinite))
    if bad >= 0:
      _raise_nonfinite(bad, last_saved, workdir)

  def wait_in_flight() -> None:
    jax.block_until_ready(list(in_flight))

  position = None
  try:
    with stop:
      upcoming = pull() if step < setup.total_steps else None
      while step < setup.total_steps:
        profiler.at(step, wait_in_flight)
        batch, position = upcoming
        with profiler.step(step):
          state, metrics, mask = compiled(state, batch, key)
        step += 1
        if step < setup.total_steps:
          try:
            upcoming = pull()  # copied to the devices while the step runs
          except DataPipelineError as e:
            if jax.process_count() > 1:
              # A save is collective, and the other processes may have gone on one step (their
              # batch came) into a step that waits for this one: no save. They see this
              # process lost; the rerun resumes from the last checkpoint.
              raise type(e)(f"{e}; {resume_point()}") from e.__cause__
            if step != last_saved:
              save(position)  # what was trained is kept; the rerun resumes right here
              saver.finish()
            raise type(e)(f"{e}; saved checkpoint {step}, rerun the same command to resume "
                          "from it") from e.__cause__
        if step == first + 1:  # the launch's first step: compilation and warm-up end here
          jax.block_until_ready(metrics["loss"])
          startup_seconds = time.perf_counter() - t_launch
          progress.start(step)
        in_flight.append(metrics["loss"])
        if len(in_flight) > IN_FLIGHT:
          in_flight.popleft().block_until_ready()
        if primary and png_every and (step - 1) % png_every == 0:
          with deadline.guard("writing a mask PNG to", workdir):
            _write_mask_png(workdir, writer, setup, batch, mask, step - 1,
                            float(mesh_lib.to_host(metrics["hint"])))
        due = False
        if step % config.log_every_steps == 0 or step == setup.total_steps:
          check_finite()
          host = {k: float(v) for k, v in mesh_lib.to_host(metrics).items()}
          line, rates = progress.line(step, host, step / setup.steps_per_epoch)
          writer.write_scalars(step, {**host, **rates, "epoch": step / setup.steps_per_epoch})
          last_logged = {**host, **rates}
          if primary:
            log.info("%s", line)
          due = clock.due()
        stopping = stop.should_stop(step)
        if (step % config.checkpoint.every_steps == 0 or step == setup.total_steps or stopping
            or due):
          save(position)
        if stopping:
          break
        if on_step is not None:
          on_step(step)
    with deadline.guard(f"finishing checkpoint {last_saved} in", ckpt_dir):
      t = time.perf_counter()
      saver.finish()
      checkpoint_seconds += time.perf_counter() - t
  finally:
    with deadline.guard("waiting for the checkpoint writes to", ckpt_dir):
      try:
        manager.wait_until_finished()  # after a failure: whatever is still being written
      except Exception:  # pylint: disable=broad-except  (already reported by the saver)
        pass
      manager.close()
    profiler.finish()
    writer.flush()
    with deadline.guard("uploading the logs to", workdir):
      writer.close()
    deadline.close()
  seconds = time.perf_counter() - t_start
  totals = progress.totals()
  launch = {"resumed_from": start, "steps": step - first, "steps_repeated": steps_repeated,
            "startup_seconds": startup_seconds, "checkpoint_seconds": checkpoint_seconds,
            "train_seconds": seconds, **compile_info,
            "timed_steps": totals.get("timed_steps", 0),
            "timed_seconds": totals.get("timed_seconds", 0.0),
            "data_wait_seconds": totals.get("data_wait", 0.0) * totals.get("timed_seconds", 0.0),
            "clips_per_step": setup.batch_size, "devices": jax.device_count(),
            "flops_per_step": progress.flops, "peak_flops": progress.peak}
  summary = {
      "workdir": workdir, "step": step, "total_steps": setup.total_steps,
      "steps_per_epoch": setup.steps_per_epoch, "preempted": stop.signal_name is not None,
      "resumed_from": start, "steps_trained": step - first,
      "final_loss": last_logged.get("loss"), "clips_per_sec": totals.get("clips_per_sec"),
      "train_seconds": seconds, "throughput": totals, "launch": launch,
      "memory": {"needed_bytes_per_device": plan.needed_bytes,
                 "temp_bytes_per_clip": plan.temp_bytes_per_clip,
                 "available_bytes_per_device": plan.available_bytes},
  }
  if primary:
    how = f"stopped by {stop.signal_name}" if summary["preempted"] else "finished"
    log.info("%s at step %d/%d after %.1f s; checkpoints in %s", how, step, setup.total_steps,
             seconds, ckpt_dir)
  return summary
