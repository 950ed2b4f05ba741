"""The fine-tuned classifier: encoder -> M2D clip embedding -> (BatchNorm) -> linear head.

Parameters: ``{"encoder": ViTEncoder params, "head": {"kernel": [E, C], "bias": [C]}}`` with
``E = Fp * D``. The embedding of a window is M2D's, as ``dwm_jax.evaluate.embed`` computes it
(each time step's ``Fp`` frequency tokens concatenated, mean over time; with patch dropout, over
the kept time steps); a clip's is the mean over its windows (``data.eval_windows``). The head
follows EVAR's
``TaskHead`` / M2D's runtime: ``BatchNorm1d(affine=False)`` then ``Linear``; its running
statistics ``stats = {"mean", "var"}`` (``[E]``) are part of the train state.
"""
from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from dwm_jax import patching
from dwm_jax.evaluate.finetuning import augment

BN_EPS = 1e-5  # torch BatchNorm1d's


def clip_embedding(module: Any, enc_params: Any, patches: jnp.ndarray, grid: patching.Grid,
                   pos: jnp.ndarray, cols: jnp.ndarray | None, *, train: bool,
                   rng: jax.Array | None = None) -> jnp.ndarray:
  """``patches: [B, N, P]`` -> clip embeddings ``[B, Fp * D]`` (float32).

  ``cols: int [B, k]``: the time columns each clip keeps (patch dropout); None keeps all.
  """
  b = patches.shape[0]
  if cols is None:
    ids, k = None, grid.time
  else:
    ids, k = augment.column_token_ids(cols, grid.freq, grid.time), cols.shape[1]
  rngs = {"dropout": rng} if rng is not None else {}
  tokens = module.apply({"params": enc_params}, patches, ids, pos_embed=pos, train=train,
                        rngs=rngs)[:, 1:]  # CLS dropped
  tokens = tokens.astype(jnp.float32).reshape(b, grid.freq, k, -1)
  return tokens.transpose(0, 2, 1, 3).reshape(b, k, -1).mean(axis=1)


def init_head(key: jax.Array, dim: int, num_classes: int, init_std: float) -> dict:
  return {"kernel": jax.random.normal(key, (dim, num_classes), jnp.float32) * init_std,
          "bias": jnp.zeros((num_classes,), jnp.float32)}


def init_stats(dim: int) -> dict:
  return {"mean": jnp.zeros((dim,), jnp.float32), "var": jnp.ones((dim,), jnp.float32)}


def head(params: dict, stats: dict, z: jnp.ndarray, *, norm: str, train: bool,
         momentum: float) -> tuple[jnp.ndarray, dict]:
  """``z: [B, E]`` -> ``(logits [B, C], new stats)``.

  ``norm="batchnorm"``: in training, batch statistics normalize (biased variance) and the
  running ones move towards them (unbiased variance, as torch); in evaluation the running
  statistics normalize. ``"none"``: the linear layer alone.
  """
  if norm == "batchnorm":
    if train:
      n = z.shape[0]
      mean, var = z.mean(axis=0), z.var(axis=0)
      unbiased = var * n / max(n - 1, 1)
      stats = {"mean": (1 - momentum) * stats["mean"] + momentum * mean,
               "var": (1 - momentum) * stats["var"] + momentum * unbiased}
    else:
      mean, var = stats["mean"], stats["var"]
    z = (z - mean) * jax.lax.rsqrt(var + BN_EPS)
  return z @ params["kernel"] + params["bias"], stats


def layer_ids(params: dict, depth: int) -> Any:
  """BEiT / MAE / timm layer ids: patch embedding and CLS 0, block ``i`` ``i + 1``, the final
  norm and the head ``depth + 1``."""

  def layer(path, _):
    names = [str(getattr(k, "key", k)) for k in path]
    if names[0] == "encoder" and len(names) > 1:
      if names[1] in ("patch_embed", "cls_token"):
        return 0
      if names[1].startswith("block_"):
        return int(names[1].split("_")[1]) + 1
    return depth + 1

  return jax.tree_util.tree_map_with_path(layer, params)


def layer_scales(params: dict, depth: int, decay: float, head_scale: float = 1.0) -> Any:
  """Per-leaf lr factors ``decay ** (depth + 1 - layer id)``: 1 for the final norm, ``decay **
  (depth + 1)`` for the patch embedding; ``head_scale`` for the head."""
  scales = jax.tree.map(lambda i: float(decay) ** (depth + 1 - i), layer_ids(params, depth))
  if "head" in scales:
    scales["head"] = jax.tree.map(lambda s: s * float(head_scale), scales["head"])
  return scales
