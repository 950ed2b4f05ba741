"""The encoder on packed rows: several windows per row, each encoded exactly as if alone.

A row holds ``Tp`` patch columns; each window of it (a segment) has its own CLS token (one of
``S`` slots) and sees only its own tokens (an attention mask built from the segment ids), and each
column takes the positional table's column of its place in its own window: the runtime's table
cut to a short window's columns. Attention is permutation-equivariant, so a window's tokens give
what the window alone gives (to float32 rounding: the softmax sums run over the row's length).
One program per encoder architecture, batch and ``S``, whatever the clip lengths.
"""
from __future__ import annotations

import functools
import json
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from dwm_jax import patching
from dwm_jax.evaluate.encoder import Encoder, _model_cfg
from dwm_jax.models.vit import encoder_from_config


@functools.lru_cache(maxsize=16)
def _packed_forward_for(config_key: str, layers: bool) -> Callable:
  cfg = _model_cfg(json.loads(config_key))
  module = encoder_from_config(cfg)
  ps = tuple(cfg.patch_size)
  g = patching.grid_for(tuple(cfg.input_shape), ps)

  def encode(m, patches, pos, mask, num_cls: int):
    """The encoder's own modules on packed rows: ``[B, S + N, D]`` (or per block
    ``[B, L, S + N, D]``, the last block's output replaced by the final norm's, as the authors'
    ``forward_encoder(return_layers=True)``)."""
    x = m.patch_embed(patches.astype(m.dtype)) + pos.astype(m.dtype)
    cls = jnp.broadcast_to(m.cls_token.astype(x.dtype), (x.shape[0], num_cls, m.width))
    h = jnp.concatenate([cls, x], axis=1)
    outs = []
    for block in m.blocks:
      h = block(h, True, mask)
      outs.append(h)
    outs[-1] = m.norm(h)
    return jnp.stack(outs, axis=1) if layers else outs[-1]

  def forward(params, table, windows, segment, position, cls):
    b, s = cls.shape
    patches = patching.patchify(windows, ps)                          # [B, N, P], n = f Tp + t
    # Each column takes the table's column of its place in its own window (the runtime's table
    # cut to a short window's columns); the CLS tokens take the CLS row, zero.
    pos = jnp.asarray(table).reshape(g.freq, g.time, -1)[:, position]  # [Fp, B, Tp, D]
    pos = pos.transpose(1, 0, 2, 3).reshape(b, g.num_patches, -1)
    ids = jnp.concatenate([cls, jnp.tile(segment, (1, g.freq))], axis=1)  # [B, S + N]
    mask = (ids[:, :, None] == ids[:, None, :])[:, None]              # a token sees its window
    h = module.apply({"params": params}, patches, pos, mask, s, method=encode)
    h = h[..., s:, :].astype(jnp.float32)
    if layers:  # [B, L, Fp * Tp, D] -> [B, Tp, L, Fp * D]
      h = h.reshape(b, -1, g.freq, g.time, h.shape[-1]).transpose(0, 3, 1, 2, 4)
      return h.reshape(b, g.time, h.shape[2], -1)
    h = h.reshape(b, g.freq, g.time, -1).transpose(0, 2, 1, 3)       # 'b (f t) d -> b t (f d)'
    return h.reshape(b, g.time, -1)

  return jax.jit(forward)


def packed_forward(encoder: Encoder, layers: bool = False) -> Callable:
  """Jitted ``(params, table [N, D], windows [B, F, W], segment int32 [B, Tp], position int32
  [B, Tp], cls int32 [B, S]) -> [B, Tp, Fp * D]`` (``layers``: ``[B, Tp, L, Fp * D]``).

  Shared per architecture: parameters and table are arguments, so checkpoints compile once.
  """
  return _packed_forward_for(encoder.config_key, bool(layers))


def abstract_inputs(encoder: Encoder, batch: int, segments: int, replicated: Any = None,
                    split: Any = None) -> tuple[Any, ...]:
  """The program's arguments as ``jax.ShapeDtypeStruct``: parameters and table with the
  ``replicated`` sharding, the batch arrays with ``split`` (None: the default device)."""
  f, w = encoder.input_shape
  cols = w // encoder.patch_size[1]

  def spec(shape, dtype, s):
    return jax.ShapeDtypeStruct(shape, dtype, sharding=s)

  return (jax.tree.map(lambda a: spec(np.shape(a), jnp.float32, replicated), encoder.params),
          spec(encoder.position_table.shape, jnp.float32, replicated),
          spec((batch, f, w), jnp.float32, split), spec((batch, cols), jnp.int32, split),
          spec((batch, cols), jnp.int32, split), spec((batch, segments), jnp.int32, split))
