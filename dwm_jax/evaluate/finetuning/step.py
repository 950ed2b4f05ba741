"""The fine-tuning setup (built once), its train state and the jitted data-parallel train step.

As in pretraining (``dwm_jax.train.step``), the step is one program over the *global* batch,
jitted over the data mesh (``dwm_jax.train.mesh``): state replicated and donated, batch split,
gradients averaged by XLA. Every random draw (mixup, SpecAugment, patch dropout, drop path) comes
from the run key folded with the step counter inside the step, and covers the global batch, so
an example's augmentation does not depend on the device count. The lr schedule is evaluated in
the step from the counter: the host passes nothing that changes per step.
"""
from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from jax.sharding import Mesh

from dwm_jax import patching
from dwm_jax.evaluate.encoder import Encoder
from dwm_jax.evaluate.finetuning import augment, model, optim
from dwm_jax.evaluate.finetuning.config import kept_columns
from dwm_jax.models.vit import ViTEncoder, encoder_from_config
from dwm_jax.train import mesh as mesh_lib
from dwm_jax.train import memory
from dwm_jax.train.optimizer import make_schedule


class FinetuneState(flax.struct.PyTreeNode):
  """``params = {"encoder", "head"}``; ``stats``: the head's BatchNorm running statistics;
  ``best_*``: the parameters and statistics of the best valid evaluation so far (early
  stopping's model); ``first_nonfinite``: step count of the first NaN/Inf loss (-1: none)."""
  step: jnp.ndarray
  params: Any
  opt_state: Any
  stats: Any
  best_params: Any
  best_stats: Any
  first_nonfinite: jnp.ndarray


@dataclasses.dataclass(frozen=True, eq=False)
class FinetuneSetup:
  """Everything one fine-tuning run derives from the config, the encoder and the task."""
  config: ml_collections.ConfigDict
  model_cfg: Any                 # the encoder's model config with the fine-tuning overrides
  module: ViTEncoder
  grid: patching.Grid
  patch_size: tuple[int, int]
  pos_embed: np.ndarray          # [N, D] the encoder's positional table (a constant)
  norm_mean: float
  norm_std: float
  num_classes: int
  multilabel: bool
  steps_per_epoch: int
  total_steps: int
  keep_columns: int              # time columns kept per clip in training
  tx: optax.GradientTransformation
  lr_schedule: optax.Schedule

  @property
  def batch_size(self) -> int:
    return int(self.config.batch_size)

  @property
  def input_shape(self) -> tuple[int, int]:
    return (self.grid.freq * self.patch_size[0], self.grid.time * self.patch_size[1])

  @property
  def embedding_size(self) -> int:
    return self.grid.freq * int(self.module.width)

  @property
  def depth(self) -> int:
    return int(self.module.depth)

  def learning_rate(self, step: Any) -> jnp.ndarray:
    """The peak-scaled base learning rate at ``step`` (layer factors apply on top)."""
    return self.lr_schedule(jnp.asarray(step) // int(self.config.optim.accum_steps))


def finetune_model_cfg(encoder: Encoder, config: ml_collections.ConfigDict,
                       window: int | None = None) -> dict:
  """The encoder's model config with ``config.model``'s overrides (dtype, drop path, ...) and
  an input of ``window`` frames (default: the encoder's)."""
  cfg = encoder.model_cfg.to_dict()
  cfg.update({k: config.model[k] for k in config.model.keys()})
  if window is not None:
    cfg["input_shape"] = (encoder.input_shape[0], int(window))
  return cfg


def task_window(config: ml_collections.ConfigDict, encoder: Encoder, lengths: Any) -> int:
  """Frames of the training crops and evaluation windows for a task whose train clips have
  ``lengths`` frames: ``config.window_frames``, or (0) the longest clip rounded up to whole
  patch columns, at most the encoder's input."""
  if int(config.window_frames):
    return int(config.window_frames)
  pw, w = encoder.patch_size[1], encoder.input_shape[1]
  return min(w, -(-int(np.max(lengths)) // pw) * pw)


def window_position_table(encoder: Encoder, columns: int) -> np.ndarray:
  """``[Fp * columns, D]``: the encoder's table cut to its first ``columns`` time columns,
  frequency-major (M2D's runtime cuts it so for a short input; ``embed`` selects the same
  rows)."""
  g = encoder.grid
  table = np.asarray(encoder.position_table, np.float32).reshape(g.freq, g.time, -1)
  return table[:, :columns].reshape(g.freq * columns, -1)


def build(config: ml_collections.ConfigDict, encoder: Encoder, *, num_train: int,
          num_classes: int, multilabel: bool, window: int | None = None) -> FinetuneSetup:
  """The setup of fine-tuning ``encoder`` on a task with ``num_train`` train clips, on inputs
  of ``window`` frames (a whole number of patch columns; default: the encoder's input)."""
  window = encoder.input_shape[1] if window is None else int(window)
  pw = encoder.patch_size[1]
  if window % pw or not 0 < window <= encoder.input_shape[1]:
    raise ValueError(f"window of {window} frames: must be a positive multiple of the patch "
                     f"width {pw}, at most the encoder's {encoder.input_shape[1]} frames")
  model_cfg = Encoder(finetune_model_cfg(encoder, config, window), encoder.params,
                      encoder.norm_mean, encoder.norm_std).model_cfg
  module = encoder_from_config(model_cfg)
  grid = patching.grid_for(tuple(model_cfg.input_shape), tuple(model_cfg.patch_size))
  spe = -(-num_train // int(config.batch_size))
  total = int(math.ceil(float(config.epochs) * spe))
  schedule = make_schedule(config, total_steps=total, steps_per_epoch=spe)
  params_shape = jax.eval_shape(lambda: {
      "encoder": encoder.params,
      "head": model.init_head(jax.random.key(0), grid.freq * module.width, num_classes, 0.01)})
  tx = optim.make_optimizer(config, schedule, params_shape, int(module.depth))
  return FinetuneSetup(
      config=config, model_cfg=model_cfg, module=module, grid=grid,
      patch_size=encoder.patch_size, pos_embed=window_position_table(encoder, grid.time),
      norm_mean=float(encoder.norm_mean), norm_std=float(encoder.norm_std),
      num_classes=int(num_classes), multilabel=bool(multilabel), steps_per_epoch=spe,
      total_steps=total,
      keep_columns=max(1, kept_columns(grid.time, config.augment.patch_dropout)),
      tx=tx, lr_schedule=schedule)


def create_state(setup: FinetuneSetup, encoder_params: Any, key: jax.Array, head: Any = None,
                 stats: Any = None) -> FinetuneState:
  """Step 0: the pretrained encoder, the given head (and BatchNorm statistics) or a fresh one
  (from ``key``), optimizer state."""
  if head is None:
    head = model.init_head(key, setup.embedding_size, setup.num_classes,
                           float(setup.config.head.init_std))
  params = {"encoder": jax.tree.map(jnp.asarray, encoder_params),
            "head": jax.tree.map(jnp.asarray, head)}
  stats = model.init_stats(setup.embedding_size) if stats is None else jax.tree.map(
      jnp.asarray, stats)
  return FinetuneState(step=jnp.zeros((), jnp.int32), params=params,
                       opt_state=setup.tx.init(params), stats=stats,
                       best_params=jax.tree.map(jnp.copy, params),
                       best_stats=jax.tree.map(jnp.copy, stats),
                       first_nonfinite=jnp.full((), -1, jnp.int32))


def abstract_state(setup: FinetuneSetup, encoder_params: Any) -> FinetuneState:
  return jax.eval_shape(lambda k: create_state(setup, encoder_params, k), jax.random.key(0))


def _targets(setup: FinetuneSetup, y: jnp.ndarray) -> jnp.ndarray:
  if setup.multilabel:
    return y.astype(jnp.float32)
  return jax.nn.one_hot(y, setup.num_classes, dtype=jnp.float32)


def _loss(setup: FinetuneSetup, logits: jnp.ndarray, targets: jnp.ndarray) -> jnp.ndarray:
  if setup.multilabel:
    return optax.sigmoid_binary_cross_entropy(logits, targets).mean()
  return optax.softmax_cross_entropy(logits, targets).mean()


def augment_batch(setup: FinetuneSetup, key: jax.Array, logmel: jnp.ndarray,
                  targets: jnp.ndarray) -> tuple[jnp.ndarray, jnp.ndarray, jnp.ndarray | None]:
  """Raw crops ``[B, F, W]`` + targets ``[B, C]`` -> ``(patches [B, N, P] normalized and
  augmented, mixed targets, kept columns int [B, k] or None)``."""
  a = setup.config.augment
  k_mix, k_spec, k_cols = jax.random.split(key, 3)
  if float(a.mixup) > 0:
    logmel, targets, _ = augment.mixup(k_mix, logmel, targets, float(a.mixup))
  x = (logmel - setup.norm_mean) / setup.norm_std
  x = augment.spec_augment(k_spec, x, freq_mask=int(a.freq_mask), time_mask=int(a.time_mask),
                           num_freq_masks=int(a.num_freq_masks),
                           num_time_masks=int(a.num_time_masks))
  cols = None
  if setup.keep_columns < setup.grid.time:
    cols = augment.keep_columns(k_cols, x.shape[0], setup.grid.time, setup.keep_columns)
  return patching.patchify(x, setup.patch_size), targets, cols


def train_step(state: FinetuneState, batch: dict[str, jnp.ndarray], key: jax.Array, *,
               setup: FinetuneSetup) -> tuple[FinetuneState, dict[str, jnp.ndarray]]:
  """One update on the global batch ``{"logmel": raw [B, F, W], "targets": [B] | [B, C]}``."""
  k_aug, k_drop = jax.random.split(jax.random.fold_in(key, state.step))
  patches, targets, cols = augment_batch(setup, k_aug, batch["logmel"].astype(jnp.float32),
                                         _targets(setup, batch["targets"]))
  h = setup.config.head
  pos = jnp.asarray(setup.pos_embed)

  def loss_fn(params):
    z = model.clip_embedding(setup.module, params["encoder"], patches, setup.grid, pos, cols,
                             train=True, rng=k_drop)
    logits, stats = model.head(params["head"], state.stats, z, norm=str(h.norm), train=True,
                               momentum=float(h.bn_momentum))
    return _loss(setup, logits, targets), stats

  (loss, stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
  updates, opt_state = setup.tx.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  grad_norm = optax.global_norm(grads)
  done = state.step + 1
  finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
  first_nonfinite = jnp.where((state.first_nonfinite < 0) & ~finite, done, state.first_nonfinite)
  metrics = {"loss": loss, "grad_norm": grad_norm, "lr": setup.learning_rate(state.step)}
  return state.replace(step=done, params=params, opt_state=opt_state, stats=stats,
                       first_nonfinite=first_nonfinite), metrics


def jit_train_step(setup: FinetuneSetup, mesh: Mesh) -> Any:
  """:func:`train_step` jitted over ``mesh``: state replicated (donated), batch split."""
  rep, split = mesh_lib.replicated(mesh), mesh_lib.batch_sharded(mesh)
  return jax.jit(functools.partial(_traced_step, setup=setup), in_shardings=(rep, split, rep),
                 out_shardings=(rep, rep), donate_argnums=(0,))


def _traced_step(state, batch, key, *, setup):
  return train_step(state, batch, key, setup=setup)


def abstract_args(setup: FinetuneSetup, mesh: Mesh, encoder_params: Any) -> tuple:
  """``(state, batch, key)`` shapes with their shardings, for the ahead-of-time compile."""
  rep, split = mesh_lib.replicated(mesh), mesh_lib.batch_sharded(mesh)
  state = jax.tree.map(lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=rep),
                       abstract_state(setup, encoder_params))
  b = setup.batch_size
  f, w = setup.input_shape
  y = ((b, setup.num_classes), jnp.float32) if setup.multilabel else ((b,), jnp.int32)
  batch = {"logmel": jax.ShapeDtypeStruct((b, f, w), jnp.float32, sharding=split),
           "targets": jax.ShapeDtypeStruct(*y, sharding=split)}
  key = jax.eval_shape(lambda: jax.random.key(0))
  return state, batch, jax.ShapeDtypeStruct(key.shape, key.dtype, sharding=rep)


def compile_step(setup: FinetuneSetup, mesh: Mesh, encoder_params: Any
                 ) -> tuple[Any, memory.MemoryPlan]:
  """The step compiled from shapes alone (before any data is read) and its memory plan."""
  compiled = jit_train_step(setup, mesh).lower(*abstract_args(setup, mesh, encoder_params)
                                               ).compile()
  return compiled, memory.plan_of(compiled, setup.batch_size // mesh.devices.size,
                                  mesh.devices.flat[0])


def init_state(setup: FinetuneSetup, mesh: Mesh, encoder_params: Any, key: jax.Array,
               head: Any = None, stats: Any = None) -> FinetuneState:
  """A fresh state created on the devices, replicated (``head`` / ``stats``: host arrays to
  start from, e.g. the linear probe's)."""
  rep = mesh_lib.replicated(mesh)
  params, head, stats = mesh_lib.put_replicated((encoder_params, head, stats), mesh)
  return jax.jit(lambda p, k, h, s: create_state(setup, p, k, h, s),
                 out_shardings=rep)(params, key, head, stats)


def snapshot_best(mesh: Mesh) -> Any:
  """Jitted ``state -> state`` with ``best_params`` / ``best_stats`` set to copies of the
  current ones (state donated; the copies are new buffers, so the next step may donate
  ``params`` without touching the best ones)."""
  rep = mesh_lib.replicated(mesh)

  def snap(state):
    return state.replace(best_params=jax.tree.map(jnp.copy, state.params),
                         best_stats=jax.tree.map(jnp.copy, state.stats))

  return jax.jit(snap, out_shardings=rep, donate_argnums=(0,))


def jit_embed_windows(setup: FinetuneSetup, mesh: Mesh) -> Any:
  """Jitted ``(encoder params, windows [B, F, W] raw) -> clip embeddings [B, E]`` of whole
  windows (evaluation: no augmentation, no dropout), batch split over ``mesh``."""
  rep, split = mesh_lib.replicated(mesh), mesh_lib.batch_sharded(mesh)
  pos = jnp.asarray(setup.pos_embed)

  def embed(enc_params, windows):
    x = (windows - setup.norm_mean) / setup.norm_std
    patches = patching.patchify(x, setup.patch_size)
    return model.clip_embedding(setup.module, enc_params, patches, setup.grid, pos, None,
                                train=False)

  return jax.jit(embed, in_shardings=(rep, split), out_shardings=split)
