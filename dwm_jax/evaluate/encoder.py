"""A frozen encoder for downstream use: model config + parameters + input normalization.

Export format (one file, written by ``dwm-jax export`` through :func:`save_encoder`): a msgpack
dict ``{"format", "model_cfg" (JSON), "norm_mean", "norm_std", "params"}`` plus, for an imported
checkpoint whose positional table is not the project's sin-cos table, ``"pos_embed"`` (``[N, D]``
float32, passed to the encoder as a constant; the parameter tree stays the same). It needs
neither orbax nor the pretraining config to load. :func:`load_encoder` also accepts a pretraining
workdir (its latest checkpoint, through ``dwm_jax.train.checkpoint.restore_encoder``).

Format ``dwm-jax-encoder/1`` files were written when the sin-cos table had its channel halves in
the other order (frequency first); they load with that table, so they embed as they were trained.
"""
from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
from typing import Any

import flax.serialization
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from dwm_jax import paths, patching
from dwm_jax.models.vit import ViTEncoder, encoder_from_config, sincos_2d

FORMAT = "dwm-jax-encoder/2"
_LEGACY_FORMAT = "dwm-jax-encoder/1"  # sin-cos table with the frequency half first
_TUPLE_FIELDS = ("input_shape", "patch_size")


def _model_cfg(cfg: Any) -> ml_collections.ConfigDict:
  """A detached, frozen copy of a model config (dict or ConfigDict); shape fields as tuples."""
  d = cfg.to_dict() if isinstance(cfg, ml_collections.ConfigDict) else dict(cfg)
  for f in _TUPLE_FIELDS:
    if f not in d:
      raise ValueError(f"model config lacks the field {f!r}")
    d[f] = tuple(int(v) for v in d[f])
  return ml_collections.FrozenConfigDict(d)


@dataclasses.dataclass(frozen=True, eq=False)
class Encoder:
  """A frozen ViT encoder and the log-mel normalization it was trained with.

  ``params`` are the encoder's flax parameters (the ``params`` collection of
  :class:`dwm_jax.models.vit.ViTEncoder`); inputs are normalized as ``(x - norm_mean) / norm_std``.
  ``pos_embed: [N, D]`` is a checkpoint's own positional table (None: the sin-cos table).
  """
  model_cfg: Any
  params: Any
  norm_mean: float
  norm_std: float
  pos_embed: np.ndarray | None = None

  def __post_init__(self):
    object.__setattr__(self, "model_cfg", _model_cfg(self.model_cfg))
    if not np.isfinite(self.norm_std) or self.norm_std <= 0:
      raise ValueError(f"norm_std must be a positive number, got {self.norm_std}")
    if self.pos_embed is not None:
      table = np.asarray(self.pos_embed, np.float32)
      want = (self.grid.num_patches, self.width)
      if table.shape != want:
        raise ValueError(f"pos_embed must be {list(want)} for grid {tuple(self.grid)} and width "
                         f"{self.width}, got shape {list(table.shape)}")
      if not np.isfinite(table).all():
        raise ValueError("pos_embed contains NaN or Inf")
      object.__setattr__(self, "pos_embed", table)

  @functools.cached_property
  def module(self) -> ViTEncoder:
    return encoder_from_config(self.model_cfg)

  @property
  def input_shape(self) -> tuple[int, int]:
    return tuple(self.model_cfg.input_shape)

  @property
  def patch_size(self) -> tuple[int, int]:
    return tuple(self.model_cfg.patch_size)

  @property
  def grid(self) -> patching.Grid:
    return patching.grid_for(self.input_shape, self.patch_size)

  @property
  def width(self) -> int:
    return int(self.module.width)

  @functools.cached_property
  def position_table(self) -> np.ndarray:
    """``[N, D]``: the table the encoder adds to its patch embeddings."""
    if self.pos_embed is not None:
      return self.pos_embed
    return sincos_2d(self.width, self.grid)

  @property
  def embedding_size(self) -> int:
    """``Fp * D``: the M2D frame / clip embedding size."""
    return self.grid.freq * self.width

  @functools.cached_property
  def config_key(self) -> str:
    """The model config as canonical JSON: encoders with equal keys share compiled functions."""
    return json.dumps(self.model_cfg.to_dict(), sort_keys=True, default=str)

  @functools.cached_property
  def fingerprint(self) -> str:
    """Content hash of config, normalization and parameters: names embedding caches."""
    h = hashlib.sha1()
    h.update(self.config_key.encode())
    h.update(np.float64([self.norm_mean, self.norm_std]).tobytes())
    for path, leaf in jax.tree_util.tree_flatten_with_path(self.params)[0]:
      h.update(jax.tree_util.keystr(path).encode())
      h.update(np.ascontiguousarray(np.asarray(leaf, np.float32)).tobytes())
    if self.pos_embed is not None:  # only then: sin-cos encoders keep their fingerprints
      h.update(b"pos_embed")
      h.update(np.ascontiguousarray(self.pos_embed).tobytes())
    return h.hexdigest()[:16]


def random_encoder(model_cfg: Any, seed: int = 0, norm_mean: float = -7.1,
                   norm_std: float = 4.2) -> Encoder:
  """A random-init encoder of the same architecture: the baseline a pretrained one must beat."""
  cfg = _model_cfg(model_cfg)
  init = _init_fn(json.dumps(cfg.to_dict(), sort_keys=True, default=str))
  return Encoder(cfg, init(jax.random.key(seed))["params"], norm_mean, norm_std)


@functools.lru_cache(maxsize=8)
def _init_fn(config_key: str):
  """Jitted ``key -> variables`` of one architecture (compiled once, not op by op)."""
  cfg = _model_cfg(json.loads(config_key))
  module = encoder_from_config(cfg)
  g = patching.grid_for(tuple(cfg.input_shape), tuple(cfg.patch_size))
  ph, pw = cfg.patch_size
  return jax.jit(lambda key: module.init(key, jnp.zeros((1, g.num_patches, ph * pw))))


def save_encoder(path: str, *, model_cfg: Any, params: Any, norm_mean: float,
                 norm_std: float, pos_embed: np.ndarray | None = None) -> str:
  """Writes the export file atomically (a local temp file + rename, or one bucket object);
  returns ``path``.

  ``pos_embed: [N, D]``: a positional table to store (None: the encoder uses the sin-cos one).
  """
  cfg = _model_cfg(model_cfg)
  host = jax.tree_util.tree_map(lambda a: np.asarray(a, np.float32), jax.device_get(params))
  payload = {"format": FORMAT, "model_cfg": json.dumps(cfg.to_dict()),
             "norm_mean": float(norm_mean), "norm_std": float(norm_std),
             "params": flax.serialization.to_state_dict(host)}
  if pos_embed is not None:
    # Validated by the Encoder it would load as, before anything is written.
    payload["pos_embed"] = Encoder(cfg, host, norm_mean, norm_std, pos_embed).pos_embed
  return paths.write_bytes(path, flax.serialization.msgpack_serialize(payload))


def _load_file(path: str) -> Encoder:
  raw = paths.read_bytes(path)
  try:
    payload = flax.serialization.msgpack_restore(raw)
  except Exception as e:  # msgpack raises several types on foreign bytes
    raise ValueError(f"{path} is not a dwm-jax encoder export ({type(e).__name__}: {e})") from e
  fmt = payload.get("format") if isinstance(payload, dict) else None
  if fmt not in (FORMAT, _LEGACY_FORMAT):
    raise ValueError(f"{path} is not a dwm-jax encoder export (format {FORMAT!r} expected)")
  cfg = _model_cfg(json.loads(payload["model_cfg"]))
  table = payload.get("pos_embed")
  if fmt == _LEGACY_FORMAT:
    table = _legacy_table(cfg)
  return Encoder(cfg, payload["params"], float(payload["norm_mean"]), float(payload["norm_std"]),
                 None if table is None else np.asarray(table, np.float32))


def _legacy_table(cfg) -> np.ndarray:
  """The table ``dwm-jax-encoder/1`` models were trained with: frequency half, then time half."""
  g = patching.grid_for(tuple(cfg.input_shape), tuple(cfg.patch_size))
  table = sincos_2d(encoder_from_config(cfg).width, g)
  time_half, freq_half = np.split(table, 2, axis=1)
  return np.concatenate([freq_half, time_half], axis=1)


def _load_workdir(workdir: str) -> Encoder:
  from dwm_jax.train.checkpoint import restore_encoder  # heavy (orbax): only for workdirs
  from dwm_jax.data.pipeline import norm_stats  # data.stats JSON when set, else norm_mean/std
  config, params = restore_encoder(workdir)
  mean, std = norm_stats(config.data)
  return Encoder(config.model, params, mean, std)


def load_encoder(path_or_workdir: str) -> Encoder:
  """An export file (``dwm-jax export``) or a pretraining workdir (its latest checkpoint)."""
  if paths.isdir(path_or_workdir):
    return _load_workdir(path_or_workdir)
  if paths.isfile(path_or_workdir):
    return _load_file(path_or_workdir)
  raise FileNotFoundError(f"no encoder export file or workdir at {path_or_workdir!r}")
