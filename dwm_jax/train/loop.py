"""The pretraining loop: data -> pmapped train step -> logs and checkpoints, resumable exactly.

A run is a pure function of (config, the number of steps done): the state and the data iterator
position come from the latest checkpoint, the step's mask/dropout key is the run key folded with
the step number, and the hint ratio is a function of the step. So a run stopped anywhere and
restarted from its last checkpoint ends with the same parameters as one that never stopped.
"""
from __future__ import annotations

import dataclasses
import logging
import math
import os
import signal
import threading
import time
from typing import Any, Callable

import jax
import ml_collections
import numpy as np

from dwm_jax import masking, objectives
from dwm_jax.data import pipeline
from dwm_jax.train import checkpoint as ckpt
from dwm_jax.train import metrics_log
from dwm_jax.train import state as state_lib
from dwm_jax.train import step as step_lib

log = logging.getLogger("dwm_jax.train")


class NonFiniteLossError(RuntimeError):
  """The loss (or gradient norm) became NaN/Inf; the run stopped without saving that state."""


@dataclasses.dataclass(frozen=True)
class Schedule:
  """Run length in train-step calls; ``total_epochs`` drives the hint schedule."""
  steps_per_epoch: int
  total_steps: int

  @property
  def total_epochs(self) -> float:
    return self.total_steps / self.steps_per_epoch


def make_schedule(config: ml_collections.ConfigDict, dataset_size: int) -> Schedule:
  """``steps_per_epoch`` defaults to ``dataset_size // batch_size``; ``total_steps`` to
  ``epochs * steps_per_epoch``."""
  spe = config.steps_per_epoch or dataset_size // int(config.batch_size)
  if spe < 1:
    raise ValueError(f"data: {dataset_size} clips make no full batch of {config.batch_size}; "
                     "lower batch_size or add data")
  total = config.total_steps or int(math.ceil(float(config.epochs) * spe))
  return Schedule(int(spe), int(total))


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


def _check_finite(metrics: dict[str, Any], step: int, last_saved: int | None,
                  workdir: str) -> None:
  """``metrics``: the host metrics of step ``step`` (1-based count of steps done)."""
  bad = {k: float(metrics[k]) for k in ("loss", "grad_norm") if k in metrics
         and not np.isfinite(metrics[k])}
  if bad:
    where = (f"the last good checkpoint (step {last_saved}) in {ckpt.checkpoint_dir(workdir)} "
             "is intact" if last_saved is not None else "no checkpoint was saved")
    raise NonFiniteLossError(
        f"{', '.join(f'{k} = {v}' for k, v in bad.items())} at step {step}: stopping; {where}. "
        "Lower optim.base_lr, set optim.clip_norm, or check the data.")


def _mask_features(config, state, patches: np.ndarray) -> Any:
  """Online-encoder tokens ``[1, N, D]`` for strategies that score features, else None."""
  if not step_lib.wants_features(config.mask.name):
    return None
  objective = objectives.from_config(config)
  params = ckpt.to_host(state.params)["encoder"]
  return objective.encoder.apply({"params": params}, patches, train=False)[:, 1:]


def _write_mask_png(workdir, writer, config, state, batch, step, epoch, hint, key) -> None:
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel

  from dwm_jax import patching  # pylint: disable=import-outside-toplevel

  logmel = np.asarray(batch["logmel"][0])
  patches = patching.patchify(jnp.asarray(logmel[None]), tuple(config.model.patch_size))
  img = metrics_log.mask_png(
      os.path.join(workdir, "masks", f"step_{step:08d}.png"), logmel, config,
      key=jax.random.fold_in(key, step), hint=hint,
      features=_mask_features(config, state, patches),
      title=f"step {step}, epoch {epoch:.2f}: first clip of the current batch, "
            f"{config.mask.name} at ratio {config.mask.ratio}, hint {hint:.2f}")
  writer.write_images(step, {"masks": img[None]})


def train(config: ml_collections.ConfigDict, workdir: str, *,
          on_step: Callable[[int], None] | None = None) -> dict[str, Any]:
  """Pretrains ``config`` in ``workdir``, resuming from its latest checkpoint if any.

  ``on_step(steps_done)`` runs after every step (and its logging / checkpointing): a hook for
  notebooks and for the tests that interrupt a run at a chosen step.

  Returns a summary: ``{"step", "total_steps", "preempted", "resumed_from", "final_loss",
  "train_seconds", "clips_per_sec", "workdir"}``. Raises :class:`NonFiniteLossError` on NaN/Inf.
  """
  workdir = os.path.abspath(workdir)
  primary = jax.process_index() == 0
  n_local = jax.local_device_count()
  sched = make_schedule(config, pipeline.dataset_size(config.data))
  if primary:
    ckpt.write_config(workdir, config)
    log.info("config:\n%s", config)
    log.info("%d devices (%d local), %d processes; global batch %d (%d per device); "
             "%d steps per epoch, %d steps (%.2f epochs)", jax.device_count(), n_local,
             jax.process_count(), config.batch_size, config.batch_size // jax.device_count(),
             sched.steps_per_epoch, sched.total_steps, sched.total_epochs)

  loader = pipeline.make_pretrain_loader(
      config.data, input_shape=tuple(config.model.input_shape),
      global_batch_size=int(config.batch_size), seed=int(config.seed),
      process_index=jax.process_index(), process_count=jax.process_count())
  data_iter = iter(loader)

  k_init, key = jax.random.split(jax.random.key(int(config.seed)))
  state = state_lib.create_train_state(config, k_init, total_steps=sched.total_steps,
                                       steps_per_epoch=sched.steps_per_epoch)
  host_state = jax.device_get(state)
  manager = ckpt.make_manager(workdir, config.checkpoint)
  start = manager.latest_step()
  if start is not None:
    diff = ckpt.config_diff(ckpt.saved_config(manager, start), config)
    if diff:
      log.warning("resuming with a config that differs from the checkpoint's (the run will not "
                  "match an uninterrupted one):\n  %s", "\n  ".join(diff))
    host_state, key = ckpt.restore(manager, start, state_template=host_state, data_iter=data_iter)
    log.info("resumed from step %d of %s", start, ckpt.checkpoint_dir(workdir))
  state = step_lib.replicate(host_state)
  del host_state

  p_step = step_lib.make_pmapped_train_step(config, total_steps=sched.total_steps,
                                            steps_per_epoch=sched.steps_per_epoch)
  writer = metrics_log.make_writer(workdir, is_primary=primary)
  writer.write_hparams(metrics_log.hparams(config))
  progress = metrics_log.Progress(sched.total_steps, int(config.batch_size))
  hint_cfg = config.mask.hint
  step = start or 0
  last_saved = start
  prev_metrics = None
  last_logged: dict[str, float] = {}
  t_start = time.perf_counter()
  stop = StopRequest(multi_process=jax.process_count() > 1)

  def save(step_done: int, metrics) -> None:
    nonlocal last_saved
    _check_finite(ckpt.to_host(metrics), step_done, last_saved, workdir)
    ckpt.save(manager, step_done, state=ckpt.to_host(state), rng=key, data_iter=data_iter,
              config=config)
    last_saved = step_done

  try:
    with stop:
      while step < sched.total_steps:
        epoch = step / sched.steps_per_epoch
        hint = float(masking.hint_schedule(epoch, sched.total_epochs,
                                           start_epoch=float(hint_cfg.start_epoch),
                                           k=float(hint_cfg.k), fixed=hint_cfg.fixed))
        batch = next(data_iter)
        if primary and config.mask_png_every_steps and step % config.mask_png_every_steps == 0:
          _write_mask_png(workdir, writer, config, state, batch, step, epoch, hint, key)
        state, metrics = p_step(state, step_lib.shard(batch), key, hint)
        if prev_metrics is not None:  # one step behind: the device stays busy
          _check_finite(ckpt.to_host({k: prev_metrics[k] for k in ("loss", "grad_norm")}),
                        step, last_saved, workdir)
        prev_metrics = metrics
        step += 1
        if step % config.log_every_steps == 0 or step == sched.total_steps:
          host = {k: float(v) for k, v in ckpt.to_host(metrics).items()}
          _check_finite(host, step, last_saved, workdir)
          line, rates = progress.line(step, host, step / sched.steps_per_epoch)
          writer.write_scalars(step, {**host, **rates, "epoch": step / sched.steps_per_epoch})
          last_logged = {**host, **rates}
          if primary:
            log.info("%s", line)
        stopping = stop.should_stop(step)
        if step % config.checkpoint.every_steps == 0 or step == sched.total_steps or stopping:
          save(step, metrics)
        if stopping:
          break
        if on_step is not None:
          on_step(step)
  finally:
    manager.wait_until_finished()
    manager.close()
    writer.flush()
    writer.close()
  seconds = time.perf_counter() - t_start
  summary = {
      "workdir": workdir, "step": step, "total_steps": sched.total_steps,
      "steps_per_epoch": sched.steps_per_epoch, "preempted": stop.signal_name is not None,
      "resumed_from": start, "final_loss": last_logged.get("loss"),
      "clips_per_sec": last_logged.get("clips_per_sec"), "train_seconds": seconds,
  }
  if primary:
    how = f"stopped by {stop.signal_name}" if summary["preempted"] else "finished"
    log.info("%s at step %d/%d after %.1f s; checkpoints in %s", how, step, sched.total_steps,
             seconds, ckpt.checkpoint_dir(workdir))
  return summary
