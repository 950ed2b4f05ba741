"""ViT encoder over log-mel patches (M2D / MAE style), as flax.linen modules.

The encoder consumes patches ``[B, N, P]`` from :func:`dwm_jax.patching.patchify`; its Dense patch
embedding over the ``P = 16 * 16`` values equals M2D's 16x16 stride-16 convolution. Positions are
a fixed 2-D sin-cos table over the (frequency, time) grid in MAE/M2D's channel order (so weights
move both ways with the authors' checkpoints): a constant, neither trained nor weight-decayed.
An imported checkpoint whose table is not this one passes its own as ``pos_embed``. Blocks are
pre-LN; attention goes through ``jax.nn.dot_product_attention`` so accelerators pick their fused
kernels. Parameters are float32; ``dtype`` is the compute dtype.

Three entry points (``nn.Module.apply(..., method=...)``):
- ``__call__(patches, ids_keep=None)``: embed, keep the visible tokens, encode -> ``[B, 1 + n, D]``.
- ``embed(patches)``: patch embedding + positions -> ``[B, N, D]`` (no CLS).
- ``encode_tokens(tokens)``: prepend CLS, blocks, final norm -> ``[B, 1 + n, D]``.
The first two take an optional ``pos_embed: [N, D]`` (default: :func:`sincos_2d` of the grid).
M2D's target runs ``embed`` with the online parameters and ``encode_tokens`` with the EMA ones.
"""
from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from dwm_jax import patching

# width, depth, heads, mlp_dim (DeiT/ViT naming; base = M2D's ViT-B).
MODEL_SIZES: dict[str, dict[str, int]] = {
    "tiny": dict(width=192, depth=12, heads=3, mlp_dim=768),
    "small": dict(width=384, depth=12, heads=6, mlp_dim=1536),
    "base": dict(width=768, depth=12, heads=12, mlp_dim=3072),
    "large": dict(width=1024, depth=24, heads=16, mlp_dim=4096),
}
DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}
LN_EPS = 1e-6  # timm / MAE LayerNorm epsilon

dense_init = nn.initializers.xavier_uniform()  # MAE initialises every Linear this way
token_init = nn.initializers.normal(stddev=0.02)  # MAE's cls / mask token init


def sincos_1d(dim: int, pos: np.ndarray) -> np.ndarray:
  """``pos: [M]`` -> ``[M, dim]`` (sin half, cos half), MAE's frequencies."""
  if dim % 2:
    raise ValueError(f"sin-cos embedding needs an even dimension, got {dim}")
  omega = 1.0 / 10000 ** (np.arange(dim // 2, dtype=np.float64) / (dim / 2.0))
  out = np.einsum("m,d->md", pos.astype(np.float64), omega)
  return np.concatenate([np.sin(out), np.cos(out)], axis=1)


def sincos_2d(dim: int, grid) -> np.ndarray:
  """Fixed 2-D position table ``[N, dim]`` in the patch order of :mod:`dwm_jax.patching`.

  MAE / M2D's ``get_2d_sincos_pos_embed(dim, (Fp, Tp))`` without its zero CLS row: the first
  half of the channels encodes the time column, the second half the frequency row (their grid is
  ``np.meshgrid(grid_w, grid_h)``, columns first).
  """
  if dim % 4:
    raise ValueError(f"2-D sin-cos embedding needs a dimension divisible by 4, got {dim}")
  rows, cols = patching.patch_coords(grid)
  emb = np.concatenate([sincos_1d(dim // 2, cols), sincos_1d(dim // 2, rows)], axis=1)
  return emb.astype(np.float32)


def as_dtype(name: str | Any) -> Any:
  if isinstance(name, str):
    if name not in DTYPES:
      raise ValueError(f"unknown model dtype {name!r}; valid: {', '.join(DTYPES)}")
    return DTYPES[name]
  return name


class DropPath(nn.Module):
  """Stochastic depth: drops the whole residual branch per sample (rng stream 'dropout')."""
  rate: float

  @nn.compact
  def __call__(self, x: jnp.ndarray, deterministic: bool) -> jnp.ndarray:
    if deterministic or self.rate == 0.0:
      return x
    keep = 1.0 - self.rate
    shape = (x.shape[0],) + (1,) * (x.ndim - 1)
    draw = jax.random.bernoulli(self.make_rng("dropout"), keep, shape)
    return jnp.where(draw, x / keep, jnp.zeros_like(x))


class Attention(nn.Module):
  width: int
  heads: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jnp.ndarray, mask: jnp.ndarray | None = None) -> jnp.ndarray:
    """``x: [B, L, D]`` -> ``[B, L, D]``; ``mask: bool [B, 1, L, L]`` (True: query attends to
    key) keeps packed sequences apart (None: every token attends to every token)."""
    if self.width % self.heads:
      raise ValueError(f"width {self.width} is not divisible by {self.heads} heads")
    b, l, _ = x.shape
    head_dim = self.width // self.heads
    qkv = nn.Dense(3 * self.width, dtype=self.dtype, kernel_init=dense_init, name="qkv")(x)
    q, k, v = jnp.split(qkv.reshape(b, l, 3, self.heads, head_dim), 3, axis=2)
    out = jax.nn.dot_product_attention(q[:, :, 0], k[:, :, 0], v[:, :, 0], mask=mask)  # [B,L,H,d]
    return nn.Dense(self.width, dtype=self.dtype, kernel_init=dense_init,
                    name="proj")(out.reshape(b, l, self.width))


class Block(nn.Module):
  """Pre-LN transformer block: x + attn(LN(x)), then x + mlp(LN(x))."""
  width: int
  heads: int
  mlp_dim: int
  dtype: Any = jnp.float32
  dropout: float = 0.0
  drop_path: float = 0.0

  @nn.compact
  def __call__(self, x: jnp.ndarray, deterministic: bool = True,
               mask: jnp.ndarray | None = None) -> jnp.ndarray:
    """``x: [B, L, D]``; ``mask``: see :class:`Attention`."""
    drop_path = DropPath(self.drop_path)
    y = nn.LayerNorm(epsilon=LN_EPS, dtype=self.dtype, name="norm1")(x)
    y = Attention(self.width, self.heads, self.dtype, name="attn")(y, mask)
    y = nn.Dropout(self.dropout)(y, deterministic=deterministic)
    x = x + drop_path(y, deterministic)
    y = nn.LayerNorm(epsilon=LN_EPS, dtype=self.dtype, name="norm2")(x)
    y = nn.Dense(self.mlp_dim, dtype=self.dtype, kernel_init=dense_init, name="fc1")(y)
    y = nn.gelu(y, approximate=False)
    y = nn.Dropout(self.dropout)(y, deterministic=deterministic)
    y = nn.Dense(self.width, dtype=self.dtype, kernel_init=dense_init, name="fc2")(y)
    y = nn.Dropout(self.dropout)(y, deterministic=deterministic)
    return x + drop_path(y, deterministic)


def block_class(remat: bool) -> type[Block]:
  """:class:`Block`, or with ``remat`` a version whose activations are recomputed in the
  backward pass: only each block's input is kept (``nothing_saveable``), which is what bounds
  the activation memory of a deep stack."""
  if not remat:
    return Block
  # Argument 2 (``deterministic``; 0 is the module) is a Python bool: static.
  return nn.remat(Block, static_argnums=(2,), policy=jax.checkpoint_policies.nothing_saveable)


class ViTEncoder(nn.Module):
  """ViT over patches of one ``(Fp, Tp)`` grid. See the module docstring for the entry points."""
  grid: tuple[int, int]
  width: int = 768
  depth: int = 12
  heads: int = 12
  mlp_dim: int = 3072
  dtype: Any = jnp.float32
  dropout: float = 0.0
  drop_path: float = 0.0
  remat: bool = False

  def setup(self):
    g = patching.as_grid(self.grid)
    self.num_patches = g.num_patches
    self.pos_embed = jnp.asarray(sincos_2d(self.width, g))  # constant, not a param
    # Kernel init as MAE: xavier over the flattened conv kernel == over the Dense kernel.
    self.patch_embed = nn.Dense(self.width, dtype=self.dtype, kernel_init=dense_init,
                                name="patch_embed")
    self.cls_token = self.param("cls_token", token_init, (1, 1, self.width), jnp.float32)
    # Stochastic depth grows linearly with depth, as in timm / MAE.
    rates = np.linspace(0.0, self.drop_path, self.depth) if self.depth else []
    block = block_class(self.remat)
    self.blocks = [block(self.width, self.heads, self.mlp_dim, self.dtype, self.dropout,
                         float(r), name=f"block_{i}") for i, r in enumerate(rates)]
    self.norm = nn.LayerNorm(epsilon=LN_EPS, dtype=self.dtype, name="norm")

  def embed(self, patches: jnp.ndarray, pos_embed: jnp.ndarray | None = None) -> jnp.ndarray:
    """``patches: [B, N, P]`` -> tokens with positions ``[B, N, D]`` (compute dtype).

    ``pos_embed: [N, D]`` replaces the sin-cos table (a constant: an imported checkpoint's own).
    """
    if patches.ndim != 3 or patches.shape[1] != self.num_patches:
      raise ValueError(f"patches must be [B, {self.num_patches}, P] for grid {tuple(self.grid)}, "
                       f"got shape {patches.shape}")
    if pos_embed is None:
      pos_embed = self.pos_embed
    elif pos_embed.shape != (self.num_patches, self.width):
      raise ValueError(f"pos_embed must be [{self.num_patches}, {self.width}], "
                       f"got shape {pos_embed.shape}")
    x = self.patch_embed(patches.astype(self.dtype))
    return x + pos_embed.astype(x.dtype)

  def encode_tokens(self, tokens: jnp.ndarray, *, train: bool = False) -> jnp.ndarray:
    """``tokens: [B, n, D]`` (embedded, with positions) -> ``[B, 1 + n, D]``, CLS first.

    The CLS position is zero (MAE), so the CLS token carries no position term.
    """
    b = tokens.shape[0]
    cls = jnp.broadcast_to(self.cls_token.astype(tokens.dtype), (b, 1, self.width))
    x = jnp.concatenate([cls, tokens], axis=1)
    for block in self.blocks:
      x = block(x, not train)
    return self.norm(x)

  def __call__(self, patches: jnp.ndarray, ids_keep: jnp.ndarray | None = None, *,
               pos_embed: jnp.ndarray | None = None, train: bool = False) -> jnp.ndarray:
    """``patches: [B, N, P]``, ``ids_keep: int [B, n]`` (None = all N) -> ``[B, 1 + n, D]``."""
    x = self.embed(patches, pos_embed)
    if ids_keep is not None:
      x = gather_tokens(x, ids_keep)
    return self.encode_tokens(x, train=train)


def gather_tokens(x: jnp.ndarray, ids: jnp.ndarray) -> jnp.ndarray:
  """``x: [B, N, D]``, ``ids: int [B, n]`` -> ``x[b, ids[b]]``: ``[B, n, D]``."""
  return jnp.take_along_axis(x, ids[..., None].astype(jnp.int32), axis=1)


def size_for(model_cfg) -> dict[str, int]:
  """The size's width/depth/heads/mlp_dim, with any explicit override from ``model_cfg``."""
  name = model_cfg.name
  if name not in MODEL_SIZES:
    raise ValueError(f"unknown model size {name!r}; valid: {', '.join(MODEL_SIZES)}")
  size = dict(MODEL_SIZES[name])
  for field in size:
    value = model_cfg.get(field, None)
    if value is not None:
      size[field] = int(value)
  return size


def encoder_from_config(model_cfg) -> ViTEncoder:
  """``config.model`` -> :class:`ViTEncoder` (size, grid of ``input_shape`` / ``patch_size``)."""
  grid = patching.grid_for(tuple(model_cfg.input_shape), tuple(model_cfg.patch_size))
  return ViTEncoder(grid=tuple(grid), dtype=as_dtype(model_cfg.dtype),
                    dropout=float(model_cfg.dropout), drop_path=float(model_cfg.drop_path),
                    remat=bool(model_cfg.get("remat", False)), **size_for(model_cfg))
