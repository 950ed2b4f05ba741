"""Independent references for the M2D layout, written from ../shared/REFERENCES.md (not our code).

- :func:`mae_table`: MAE / M2D's ``get_2d_sincos_pos_embed(D, (H, W), cls_token=True)``.
- :func:`timm_m2d_vit`: a timm ``VisionTransformer`` in the M2D layout with randomized weights.
- :func:`authors_frames`: the authors' runtime (``examples/portable_m2d.py``) on a log-mel batch:
  normalization, ``encode_lms`` windows / padding / cut table, timm's blocks, CLS dropped,
  ``b (f t) d -> b t (f d)``, windows concatenated in time; with ``return_layers`` every block's
  output as M2D's ``forward_encoder(return_layers=True)`` (``m2d/models_mae.py``: the blocks'
  outputs, the last one replaced by the final norm's) through ``runtime_audio.encode_lms``.
torch and timm are imported inside the functions (tests using them ``importorskip`` first).
"""
from __future__ import annotations

import functools

import numpy as np


def mae_table(dim: int, grid_hw: tuple[int, int]) -> np.ndarray:
  """``[1 + H * W, dim]``: the grid is ``np.meshgrid(grid_w, grid_h)`` (columns first),
  flattened row-major over ``(H, W)``; the first half of the channels embeds ``grid[0]`` (the
  column), the second half ``grid[1]`` (the row); each half is ``[sin(p * w), cos(p * w)]`` with
  ``w = 1 / 10000 ** (arange(dim / 4) / (dim / 4))``; the CLS row is zero.
  """
  h, w = grid_hw
  grid = np.stack(np.meshgrid(np.arange(w, dtype=np.float32), np.arange(h, dtype=np.float32)))
  grid = grid.reshape(2, -1)

  def one_d(d, pos):
    omega = 1.0 / 10000 ** (np.arange(d // 2, dtype=float) / (d / 2.0))
    out = np.outer(pos, omega)
    return np.concatenate([np.sin(out), np.cos(out)], axis=1)

  emb = np.concatenate([one_d(dim // 2, grid[0]), one_d(dim // 2, grid[1])], axis=1)
  return np.concatenate([np.zeros((1, dim)), emb]).astype(np.float32)


def timm_m2d_vit(width: int, depth: int, heads: int, img=(80, 608), patch=16, seed=0,
                 pos_embed: np.ndarray | None = None, mlp_ratio: float = 4):
  """timm ViT as the authors build it (in_chans 1, LayerNorm eps 1e-6, exact GELU, qkv bias),
  every weight random and non-trivial (biases, LayerNorm scales), ``pos_embed`` = the MAE table
  (or the given ``[1 + N, D]``). Eval mode, float32."""
  import torch
  from timm.models.vision_transformer import VisionTransformer
  torch.manual_seed(seed)
  vit = VisionTransformer(img_size=tuple(img), patch_size=patch, in_chans=1, embed_dim=width,
                          depth=depth, num_heads=heads, mlp_ratio=mlp_ratio, qkv_bias=True,
                          num_classes=0, norm_layer=functools.partial(torch.nn.LayerNorm,
                                                                      eps=1e-6))
  gen = torch.Generator().manual_seed(seed + 1)
  with torch.no_grad():
    for name, p in vit.named_parameters():
      noise = torch.randn(p.shape, generator=gen)
      if "norm" in name and name.endswith("weight"):
        p.copy_(1.0 + 0.3 * noise)  # LayerNorm scales away from 1
      elif name.endswith("bias"):
        p.copy_(0.2 * noise)
      elif p.ndim >= 2 and name != "pos_embed" and name != "cls_token":
        fan_in = int(np.prod(p.shape[1:]))
        p.copy_(noise / np.sqrt(fan_in))
      else:  # cls_token
        p.copy_(noise)
    grid = (img[0] // patch, img[1] // patch)
    table = mae_table(width, grid) if pos_embed is None else pos_embed
    vit.pos_embed.copy_(torch.from_numpy(np.asarray(table, np.float32))[None])
  return vit.eval()


def runtime_encoder(vit, x, return_layers: bool = False):
  """The runtime's ``forward_encoder`` on one window ``x: [B, 1, F, w]`` (w a multiple of the
  patch width): conv patches, table cut to the window's columns, CLS + its table row, blocks,
  norm -> ``[B, 1 + Fp * tp, D]`` (``return_layers``: ``[L, B, 1 + Fp * tp, D]``)."""
  import torch
  tokens = vit.patch_embed.proj(x).flatten(2).transpose(1, 2)  # frequency-major
  pos = vit.pos_embed[:, 1:]
  fp = x.shape[2] // vit.patch_embed.proj.kernel_size[0]
  if tokens.shape[1] < pos.shape[1]:  # a short window: keep the first tp columns of the table
    tp = tokens.shape[1] // fp
    pos = pos.reshape(1, fp, -1, pos.shape[-1])[:, :, :tp].reshape(1, fp * tp, -1)
  tokens = tokens + pos
  cls = (vit.cls_token + vit.pos_embed[:, :1]).expand(x.shape[0], -1, -1)
  h = torch.cat([cls, tokens], dim=1)
  layers = []
  for blk in vit.blocks:
    h = blk(h)
    layers.append(h)
  h = vit.norm(h)
  if return_layers:
    return torch.stack(layers[:-1] + [h])
  return h


def authors_frames(vit, lms: np.ndarray, mean: float, std: float, unit_frames: int,
                   use_timm_for_full_windows: bool = True, return_layers: bool = False
                   ) -> np.ndarray:
  """``lms: [B, F, T]`` raw log-mels -> frame embeddings ``[B, T', Fp * D]`` (float64 numpy);
  ``return_layers``: ``[B, T', L, Fp * D]`` (the runtime's ``[L, B, T', Fp * D]``, transposed).

  Full windows go through timm's own ``forward_features`` (checked equal to
  :func:`runtime_encoder` elsewhere; not with ``return_layers``); the last short window through
  :func:`runtime_encoder`.
  """
  import torch
  ph, pw = vit.patch_embed.proj.kernel_size
  d = vit.patch_embed.proj.out_channels
  x = torch.from_numpy(np.asarray(lms, np.float32))[:, None]  # [B, 1, F, T]
  x = (x - np.float32(mean)) / np.float32(std)
  t = x.shape[-1]
  chunks = -(-t // unit_frames)
  pad = (pw - t % unit_frames % pw) % pw
  x = torch.nn.functional.pad(x, (0, pad))  # zeros after normalization
  fp = x.shape[2] // ph
  out = []
  with torch.no_grad():
    for i in range(chunks):
      win = x[..., i * unit_frames:(i + 1) * unit_frames]
      if return_layers:
        emb = runtime_encoder(vit, win, return_layers=True)
      elif win.shape[-1] == unit_frames and use_timm_for_full_windows:
        emb = vit.forward_features(win)
      else:
        emb = runtime_encoder(vit, win)
      emb = emb[..., 1:, :]  # drop CLS
      *lead, n, _ = emb.shape
      # 'b (f t) d -> b t (f d)': f is the outer factor of the token index.
      emb = emb.reshape(*lead, fp, n // fp, d).transpose(-3, -2).reshape(*lead, n // fp, fp * d)
      out.append(emb)
  x = torch.cat(out, dim=-2)
  if return_layers:
    x = x.permute(1, 2, 0, 3)  # [L, B, T', E] -> [B, T', L, E]
  return x.double().numpy()


def state_dict_numpy(vit) -> dict[str, np.ndarray]:
  return {k: v.detach().numpy().copy() for k, v in vit.state_dict().items()}


def rel_err(a: np.ndarray, b: np.ndarray) -> float:
  """``max |a - b| / max |b|``."""
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  return float(np.abs(a - b).max() / np.abs(b).max())
