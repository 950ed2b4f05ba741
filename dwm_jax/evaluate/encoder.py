"""A frozen encoder for downstream use: model config + parameters + input normalization.

Export format (one file, written by ``dwm-jax export`` through :func:`save_encoder`): a msgpack
dict ``{"format", "model_cfg" (JSON), "norm_mean", "norm_std", "params"}``. It needs neither
orbax nor the pretraining config to load. :func:`load_encoder` also accepts a pretraining workdir
(its latest checkpoint, through ``dwm_jax.train.checkpoint.restore_encoder``).
"""
from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import os
from typing import Any

import flax.serialization
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from dwm_jax import patching
from dwm_jax.models.vit import ViTEncoder, encoder_from_config

FORMAT = "dwm-jax-encoder/1"
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
  """
  model_cfg: Any
  params: Any
  norm_mean: float
  norm_std: float

  def __post_init__(self):
    object.__setattr__(self, "model_cfg", _model_cfg(self.model_cfg))
    if not np.isfinite(self.norm_std) or self.norm_std <= 0:
      raise ValueError(f"norm_std must be a positive number, got {self.norm_std}")

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
                 norm_std: float) -> str:
  """Writes the export file atomically (temp file + rename); returns ``path``."""
  cfg = _model_cfg(model_cfg)
  host = jax.tree_util.tree_map(lambda a: np.asarray(a, np.float32), jax.device_get(params))
  payload = {"format": FORMAT, "model_cfg": json.dumps(cfg.to_dict()),
             "norm_mean": float(norm_mean), "norm_std": float(norm_std),
             "params": flax.serialization.to_state_dict(host)}
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  tmp = f"{path}.tmp-{os.getpid()}"
  with open(tmp, "wb") as f:
    f.write(flax.serialization.msgpack_serialize(payload))
  os.replace(tmp, path)
  return path


def _load_file(path: str) -> Encoder:
  with open(path, "rb") as f:
    raw = f.read()
  try:
    payload = flax.serialization.msgpack_restore(raw)
  except Exception as e:  # msgpack raises several types on foreign bytes
    raise ValueError(f"{path} is not a dwm-jax encoder export ({type(e).__name__}: {e})") from e
  if not isinstance(payload, dict) or payload.get("format") != FORMAT:
    raise ValueError(f"{path} is not a dwm-jax encoder export (format {FORMAT!r} expected)")
  return Encoder(json.loads(payload["model_cfg"]), payload["params"],
                 float(payload["norm_mean"]), float(payload["norm_std"]))


def _load_workdir(workdir: str) -> Encoder:
  from dwm_jax.train.checkpoint import restore_encoder  # heavy (orbax): only for workdirs
  from dwm_jax.data.pipeline import norm_stats  # data.stats JSON when set, else norm_mean/std
  config, params = restore_encoder(workdir)
  mean, std = norm_stats(config.data)
  return Encoder(config.model, params, mean, std)


def load_encoder(path_or_workdir: str) -> Encoder:
  """An export file (``dwm-jax export``) or a pretraining workdir (its latest checkpoint)."""
  if os.path.isdir(path_or_workdir):
    return _load_workdir(path_or_workdir)
  if os.path.isfile(path_or_workdir):
    return _load_file(path_or_workdir)
  raise FileNotFoundError(f"no encoder export file or workdir at {path_or_workdir!r}")
