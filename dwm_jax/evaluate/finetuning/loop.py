"""One fine-tuning run (one task, one seed): train, evaluate on valid, early-stop, test, resumable.

Like pretraining (``dwm_jax.train.loop``), a run is a pure function of (config, seed, the steps
done): the batch of a step is a function of the seed and the step (``data.train_batch``), every
in-step draw comes from the run key folded with the step counter, and the early-stopping record
(best score, its step, evaluations since) is saved with the state. So a run killed anywhere and
restarted ends with exactly the parameters of one that never stopped.

Per step the host only builds the next batch, starts its copy to the devices (one step ahead)
and dispatches the compiled step; metrics come back at logging steps, and the valid split is
evaluated (and a checkpoint written) at the end of every ``early_stop.eval_every_epochs``
epochs. The test split is scored once, with the best valid evaluation's parameters.
"""
from __future__ import annotations

import collections
import json
import logging
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh

from dwm_jax import faults, paths
from dwm_jax.evaluate import probe
from dwm_jax.evaluate.encoder import Encoder
from dwm_jax.evaluate.finetuning import data, model
from dwm_jax.evaluate.finetuning.step import FinetuneSetup, abstract_state, init_state, snapshot_best
from dwm_jax.train import checkpoint as ckpt
from dwm_jax.train import mesh as mesh_lib
from dwm_jax.train import metrics_log
from dwm_jax.train.loop import IN_FLIGHT, NonFiniteLossError, StopRequest

log = logging.getLogger("dwm_jax.finetune")

RESULT_FILE = "result.json"


class Preempted(RuntimeError):
  """A signal stopped the run after it saved a checkpoint; rerunning resumes it."""


def put_global(tree: Any, mesh: Mesh) -> Any:
  """A global batch every process holds in full -> arrays split over ``mesh``'s batch axis."""
  sharding = mesh_lib.batch_sharded(mesh)

  def put(x):
    x = np.asarray(x)
    return jax.make_array_from_callback(x.shape, sharding, lambda index: x[index])

  return jax.tree.map(put, tree)


# Fields that do not change one run's result (the number of runs, logging, checkpoint upkeep).
_NEUTRAL = ("seeds", "log_every_steps", "checkpoint.")


def config_diff(saved: Any, config: Any) -> list[str]:
  """``field: old -> new`` where a checkpoint's config ``saved`` and ``config`` differ in a way
  that changes the run."""
  return [d for d in ckpt.config_diff(saved, config) if not d.startswith(_NEUTRAL)]


def _fresh_tracker() -> dict[str, np.ndarray]:
  return {"best_score": np.float64(-np.inf), "best_loss": np.float64(np.inf),
          "best_step": np.int64(0), "since_best": np.int64(0), "stopped": np.int64(0)}


def _tracker_template() -> dict[str, jax.ShapeDtypeStruct]:
  return {k: jax.ShapeDtypeStruct((), v.dtype) for k, v in _fresh_tracker().items()}


def score(logits: np.ndarray, y: np.ndarray, multilabel: bool) -> float:
  """Accuracy, or mAP for multi-label targets ``[n, C]`` (the probe's metrics)."""
  if multilabel:
    return probe.mean_average_precision(logits, y)
  return float(np.mean(np.argmax(logits, axis=-1) == y))


class Evaluator:
  """Clip embeddings and scores of a model on fixed splits: the splits' windows are cut once
  (``data.eval_windows``) and embedded with one compiled function per task."""

  def __init__(self, setup: FinetuneSetup, mesh: Mesh, embed_fn: Any):
    self.setup, self.mesh, self.embed_fn = setup, mesh, embed_fn
    self._windows: dict[int, tuple[list, np.ndarray, np.ndarray]] = {}

  def clip_embeddings(self, encoder_params: Any, clips: list[np.ndarray], *,
                      cache: bool = True) -> np.ndarray:
    """``[n, E]``: the mean of each clip's window embeddings. With ``cache``, the windows of
    this list of clips are kept for the next call (the valid split, evaluated every epoch)."""
    hit = self._windows.get(id(clips))
    if hit is not None and hit[0] is clips:  # the cache holds the list: its id stays its own
      windows, owner = hit[1:]
    else:
      windows, owner = data.eval_windows(clips, window=self.setup.input_shape[1],
                                         pad_value=self.setup.norm_mean)
      if cache:
        self._windows[id(clips)] = (clips, windows, owner)
    bs = int(self.setup.config.eval_batch_size)
    outs = []
    for b0 in range(0, len(windows), bs):  # dispatched back to back, read once at the end
      part = windows[b0:b0 + bs]
      if len(part) < bs:  # one static batch shape: pad the last batch
        part = np.concatenate([part, np.repeat(part[-1:], bs - len(part), axis=0)])
      outs.append(self.embed_fn(encoder_params, put_global(part, self.mesh)))
    z = np.concatenate([np.asarray(o) for o in outs])[:len(windows)]
    sums = np.zeros((len(clips), z.shape[1]), np.float64)
    np.add.at(sums, owner, z)
    return (sums / np.bincount(owner, minlength=len(clips))[:, None]).astype(np.float32)


def evaluate(evaluator: Evaluator, params: Any, stats: Any,
             split: tuple[list[np.ndarray], np.ndarray]) -> tuple[float, float]:
  """``(score, loss)`` of ``params`` on a split: its clip embeddings, then the head with the
  running statistics."""
  setup = evaluator.setup
  clips, y = split
  z = jnp.asarray(evaluator.clip_embeddings(params["encoder"], clips))
  head, stats = mesh_lib.to_host(params["head"]), mesh_lib.to_host(stats)
  logits, _ = model.head(head, stats, z, norm=str(setup.config.head.norm), train=False,
                         momentum=0.0)
  logits = np.asarray(logits, np.float32)
  y = np.asarray(y)
  if setup.multilabel:
    loss = optax.sigmoid_binary_cross_entropy(logits, (y > 0).astype(np.float32)).mean()
  else:
    loss = optax.softmax_cross_entropy_with_integer_labels(logits, y.astype(np.int32)).mean()
  return score(logits, y, setup.multilabel), float(loss)


def probe_head(evaluator: Evaluator, encoder_params: Any, splits: data.Splits,
               seed: int) -> tuple[dict, dict]:
  """The head that starts from the linear probe (``head.init="probe"``): the probe's classifier
  fitted on the frozen encoder's train clip embeddings (the evaluation's: whole windows; early
  stopped on valid, seed ``seed``), as
  ``(head params, BatchNorm statistics)``; without BatchNorm the standardization is folded
  into the linear layer."""
  setup = evaluator.setup
  feats = {s: evaluator.clip_embeddings(encoder_params, getattr(splits, s)[0],
                                        cache=s == "valid") for s in ("train", "valid")}
  clf = probe.fit_linear((feats["train"], splits.train[1]), (feats["valid"], splits.valid[1]),
                         seed=seed, multilabel=setup.multilabel, num_classes=setup.num_classes)
  w, b = np.asarray(clf.w, np.float32), np.asarray(clf.b, np.float32)
  mean, std = clf.mean.astype(np.float32), clf.std.astype(np.float32)
  if str(setup.config.head.norm) == "batchnorm":
    return {"kernel": w, "bias": b}, {"mean": mean, "var": std ** 2}
  return ({"kernel": w / std[:, None], "bias": b - (mean / std) @ w},
          {"mean": np.zeros_like(mean), "var": np.ones_like(std)})


def write_json(path: str, obj: Any) -> None:
  """Atomic JSON write, local or in a bucket (:func:`dwm_jax.paths.write_text`)."""
  paths.write_text(path, json.dumps(obj, indent=2))


def read_result(workdir: str) -> dict | None:
  """The finished run's result, or None."""
  try:
    return json.loads(paths.read_text(paths.join(workdir, RESULT_FILE)))
  except (OSError, ValueError):
    return None


def run(setup: FinetuneSetup, compiled: Any, evaluator: Evaluator, encoder: Encoder,
        splits: data.Splits, workdir: str, seed: int, *,
        on_step: Callable[[int], None] | None = None) -> dict:
  """Fine-tunes ``encoder`` on ``splits`` in ``workdir`` (resuming), returns the result:
  ``{"score", "metric", "valid_score", "best_step", "best_epoch", "steps", "stopped_early",
  "preempted", "seconds"}`` (``score`` None when a signal stopped the run before the end).

  ``compiled`` is :func:`dwm_jax.evaluate.finetuning.step.compile_step`'s executable for
  ``setup`` and ``evaluator`` embeds the splits; ``on_step(steps_done)`` runs after every step
  (the tests interrupt runs with it).
  """
  mesh = evaluator.mesh
  workdir = paths.absolute(workdir)
  config = setup.config
  done = read_result(workdir)
  if done is not None and done.get("score") is not None:
    # The config of the newest checkpoint that reads (a damaged newest one is skipped, not
    # moved: nothing trains here).
    manager = ckpt.make_manager(workdir, read_only=True)
    try:
      _, saved = ckpt.readable_steps(workdir, manager, lambda s: ckpt.saved_config(manager, s))
    except (ckpt.NoReadableCheckpoint, FileNotFoundError) as e:
      saved = None
      log.warning("%s: finished before (score %.4f), but its config cannot be checked (%s); "
                  "returning the saved result", workdir, done["score"], faults.one_line(e))
    finally:
      manager.close()
    diff = [] if saved is None else config_diff(saved, config)
    if diff:
      raise ValueError(f"{workdir} holds a run finished with another config ("
                       f"{'; '.join(diff[:5])}): use another output folder or delete it")
    log.info("%s: finished before (score %.4f); not retrained", workdir, done["score"])
    return done
  window = setup.input_shape[1]
  train = data.train_set(*splits.train, window=window, pad_value=setup.norm_mean)
  k_head, key = jax.random.split(jax.random.key(int(seed)))
  manager = ckpt.make_manager(workdir, config.checkpoint, cleanup=False)  # the saving one cleans
  template = {"model": abstract_state(setup, encoder.params), "tracker": _tracker_template()}
  # The newest checkpoint that restores; damaged ones are set aside (never trained over), as
  # in pretraining.
  restored = ckpt.restore_latest(workdir, manager, state_template=template, data_iter=None)
  manager.close()  # a fresh manager: the restore may have moved damaged checkpoints aside
  manager = ckpt.make_manager(workdir, config.checkpoint)
  start = None
  if restored is None:
    head = stats = None
    if str(config.head.init) == "probe":
      head, stats = probe_head(evaluator, mesh_lib.put_replicated(encoder.params, mesh), splits,
                               seed)
    state = init_state(setup, mesh, encoder.params, k_head, head, stats)
    tracker = _fresh_tracker()
    if head is not None:  # where fine-tuning starts from: the probe, on valid
      v0 = evaluate(evaluator, state.params, state.stats, splits.valid)
      log.info("start (the linear probe's head): valid %.4f (loss %.4f)", *v0)
  else:
    start, host, key, saved = restored
    diff = config_diff(saved, config)
    if diff:
      log.warning("resuming with a config that differs from the checkpoint's:\n  %s",
                  "\n  ".join(diff))
    state = mesh_lib.put_replicated(host["model"], mesh)
    tracker = {k: np.asarray(v).astype(_fresh_tracker()[k].dtype)[()]
               for k, v in host["tracker"].items()}
    log.info("resumed from step %d of %s", start, ckpt.checkpoint_dir(workdir))
  host_key, key = key, mesh_lib.put_replicated(key, mesh)

  # metrics.jsonl only (one TensorBoard run per task and seed would be noise); in a bucket
  # workdir it is staged locally and uploaded at each log step, as pretraining's.
  writer = metrics_log.make_writer(workdir, is_primary=True, tensorboard=False)
  progress = metrics_log.Progress(setup.total_steps, setup.batch_size)
  snap = snapshot_best(mesh)
  spe = setup.steps_per_epoch
  eval_every = spe * int(config.early_stop.eval_every_epochs)
  patience = int(config.early_stop.patience)
  step = start or 0
  in_flight: collections.deque = collections.deque()
  stop = StopRequest(multi_process=False)
  t0 = time.perf_counter()

  def pull(s: int) -> Any:
    return put_global(data.train_batch(train, batch_size=setup.batch_size, window=window,
                                       seed=seed, step=s,
                                       random_crop=bool(config.augment.random_crop)), mesh)

  def check_finite() -> None:
    bad = int(mesh_lib.to_host(state.first_nonfinite))
    if bad >= 0:
      raise NonFiniteLossError(f"loss or gradient norm is NaN/Inf at step {bad} in {workdir}: "
                               "lower optim.base_lr or set optim.clip_norm")

  def save(s: int) -> None:
    ckpt.save(manager, s, state={"model": mesh_lib.to_host(state), "tracker": dict(tracker)},
              rng=host_key, data_iter=None, config=config)

  try:
    with stop:
      running = step < setup.total_steps and not tracker["stopped"]
      upcoming = pull(step) if running else None
      while running:
        state, metrics = compiled(state, upcoming, key)
        step += 1
        if step < setup.total_steps:
          upcoming = pull(step)  # copied to the devices while the step runs
        in_flight.append(metrics["loss"])
        if len(in_flight) > IN_FLIGHT:
          in_flight.popleft().block_until_ready()
        if step % int(config.log_every_steps) == 0 or step == setup.total_steps:
          check_finite()
          host = {k: float(v) for k, v in mesh_lib.to_host(metrics).items()}
          line, rates = progress.line(step, host, step / spe)
          writer.write_scalars(step, {**host, **rates})
          log.info("%s", line)
        evaluating = step % eval_every == 0 or step == setup.total_steps
        if evaluating:
          check_finite()
          valid = evaluate(evaluator, state.params, state.stats, splits.valid)
          if valid[0] > tracker["best_score"] or (valid[0] == tracker["best_score"]
                                                 and valid[1] < tracker["best_loss"]):
            state = snap(state)
            tracker.update(best_score=np.float64(valid[0]), best_loss=np.float64(valid[1]),
                           best_step=np.int64(step), since_best=np.int64(0))
          else:
            tracker["since_best"] = np.int64(tracker["since_best"] + 1)
            if patience and tracker["since_best"] >= patience:
              tracker["stopped"] = np.int64(1)
          writer.write_scalars(step, {"valid/score": valid[0], "valid/loss": valid[1]})
          log.info("epoch %.2f: valid %.4f (loss %.4f); best %.4f at epoch %.2f%s", step / spe,
                   valid[0], valid[1], tracker["best_score"], tracker["best_step"] / spe,
                   "; early stop" if tracker["stopped"] else "")
        stopping = stop.should_stop(step)
        if evaluating or stopping:
          save(step)
        running = step < setup.total_steps and not tracker["stopped"] and not stopping
        if on_step is not None:
          on_step(step)
  finally:
    manager.wait_until_finished()
    manager.close()
    writer.close()
  seconds = time.perf_counter() - t0
  result = {"metric": "mAP" if setup.multilabel else "accuracy",
            "valid_score": float(tracker["best_score"]), "best_step": int(tracker["best_step"]),
            "best_epoch": int(tracker["best_step"]) / spe, "steps": step,
            "stopped_early": bool(tracker["stopped"]), "held_out_valid": splits.held_out,
            "preempted": stop.signal_name is not None, "seconds": seconds, "score": None}
  if result["preempted"]:
    log.warning("stopped by %s at step %d; rerun to resume", stop.signal_name, step)
    return result
  result["score"], _ = evaluate(evaluator, state.best_params, state.best_stats, splits.test)
  write_json(paths.join(workdir, RESULT_FILE), result)
  log.info("test %s %.4f (best valid epoch %.2f)", result["metric"], result["score"],
           result["best_epoch"])
  return result
