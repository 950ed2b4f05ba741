"""The authors' PyTorch checkpoints (M2D; timm ``VisionTransformer`` keys) <-> dwm-jax encoders.

The mapping works on numpy arrays; only :func:`read_torch_checkpoint` and
:func:`write_torch_state` import torch, so importing this module needs no torch.

Layout read (``examples/portable_m2d.py`` of nttcslab/m2d): a dict with ``model`` or the state
dict itself; ``backbone.`` (RuntimeM2D: only those keys are read) and EVAR's
``module.ar.runtime.backbone.`` prefixes stripped; timm keys ``cls_token [1, 1, D]``,
``pos_embed [1, 1 + N, D]``, ``patch_embed.proj.{weight [D, 1, ph, pw], bias}``,
``blocks.i.{norm1, attn.qkv, attn.proj, norm2, mlp.fc1, mlp.fc2}.{weight, bias}``,
``norm.{weight, bias}``; optional ``norm_stats = [mean, std]`` (default -7.1 / 4.2). Target,
predictor / decoder, CLAP projection and task-head keys are ignored (and listed). Anything else
cannot be mapped and is refused.

What maps where:
- the conv patch embedding on ``[B, 1, F, T]`` sums ``W[d, 0, i, j] * x[f * ph + i, t * pw + j]``
  and :func:`dwm_jax.patching.patchify` flattens patch values as ``i * pw + j``: the Dense kernel
  is ``W.reshape(D, ph * pw).T``; conv tokens flatten frequency-major like ours;
- Linear ``weight [out, in]`` -> Dense ``kernel [in, out]``; LayerNorm ``weight`` -> ``scale``;
  timm's qkv output splits as ``(3, heads, head_dim)``, as :class:`dwm_jax.models.vit.Attention`;
- ``pos_embed``: the CLS row is added to ``cls_token`` (the authors add it to CLS at run time; the
  MAE table's row is zero), the patch rows become the encoder's table: None when they equal the
  sin-cos table of the grid, else stored in the export and passed as a constant.
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import pathlib
import pickle
import re
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from dwm_jax import patching
from dwm_jax.config import base_config
from dwm_jax.models.vit import MODEL_SIZES, encoder_from_config, sincos_2d

DEFAULT_NORM_STATS = (-7.1, 4.2)  # the authors' 2022 AudioSet values (their runtime's default)
HEAD_DIM = 64  # timm's ViT convention: heads = width / 64 unless told
PREFIXES = ("backbone.", "module.ar.runtime.backbone.")
# Keys of the authors' checkpoints that are not the encoder (pretraining target and predictor,
# M2D-X / CLAP heads, timm classifier heads, EVAR's wrapper: its task head and front end):
# skipped and listed.
IGNORED_PREFIXES = ("target_", "decoder_", "decoder.", "offline_", "audio_proj.", "text_proj.",
                    "head.", "head_norm.", "fc_norm.", "module.")
IGNORED_KEYS = ("mask_token", "logit_scale")
SAMPLE_RATE_TAG = "16k"  # the only front end dwm-jax computes (80 mel bins at 16 kHz)
_TABLE_ATOL = 1e-6  # float32 rounding of the same sin-cos formula stays below this
_FOLDER_RE = re.compile(r"^[^-]+-(\d+)x(\d+)p(\d+)x(\d+)(?:p(\d+k))?(?:p[^-]*)?(?:-|$)")

_BLOCK = {  # timm name in blocks.i -> flax path in block_i
    "norm1": ("norm1",), "attn.qkv": ("attn", "qkv"), "attn.proj": ("attn", "proj"),
    "norm2": ("norm2",), "mlp.fc1": ("fc1",), "mlp.fc2": ("fc2",),
}
_NORMS = ("norm1", "norm2")


class CheckpointError(ValueError):
  """A checkpoint that cannot be read or mapped; the message says what and what to do."""


@dataclasses.dataclass(frozen=True)
class FolderSizes:
  """Sizes from the authors' folder name ``m2d_vit_base-80x608p16x16[p16k][pEXTRA]-...``."""
  input_shape: tuple[int, int]
  patch_size: tuple[int, int]
  sample_rate: str


def parse_folder_name(name: str) -> FolderSizes | None:
  """``"m2d_vit_base-80x608p16x16-220930-mr7"`` -> 80 x 608 input, 16 x 16 patches, ``16k``.

  None when the name does not follow the convention.
  """
  m = _FOLDER_RE.match(os.path.basename(os.path.normpath(name)))
  if not m:
    return None
  f, t, ph, pw = (int(v) for v in m.groups()[:4])
  return FolderSizes((f, t), (ph, pw), m.group(5) or SAMPLE_RATE_TAG)


def group_keys(keys: list[str]) -> str:
  """``["target_blocks.0.norm1.weight", ..., "mask_token"]`` -> ``"target_blocks.* (2), ..."``."""
  counts: dict[str, int] = {}
  for k in keys:
    g = k.split(".")[0] + (".*" if "." in k else "")
    counts[g] = counts.get(g, 0) + 1
  return ", ".join(f"{g} ({n})" if n > 1 else g for g, n in counts.items())


def _list(items: list[str], limit: int = 8) -> str:
  shown = ", ".join(items[:limit])
  return shown + (f", ... ({len(items) - limit} more)" if len(items) > limit else "")


def split_state(state: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
  """Strips the authors' prefixes and sets aside non-encoder keys: ``(encoder keys, ignored)``.

  ``norm_stats`` stays in the first dict. Keys neither known nor ignored stay too, so the mapper
  names them as unexpected.
  """
  ignored: list[str] = []
  if any(k.startswith(PREFIXES[0]) for k in state):  # RuntimeM2D: the backbone alone
    ignored += [k for k in state if not k.startswith(PREFIXES[0])]
    state = {k[len(PREFIXES[0]):]: v for k, v in state.items() if k.startswith(PREFIXES[0])}
  kept = {}
  for k, v in state.items():
    k = k[len(PREFIXES[1]):] if k.startswith(PREFIXES[1]) else k
    if k in IGNORED_KEYS or k.startswith(IGNORED_PREFIXES):
      ignored.append(k)
    else:
      kept[k] = v
  return kept, ignored


def _expected_shapes(width: int, depth: int, mlp_dim: int, patch: tuple[int, int],
                     num_patches: int) -> dict[str, tuple[int, ...]]:
  d = width
  shapes = {"cls_token": (1, 1, d), "pos_embed": (1, 1 + num_patches, d),
            "patch_embed.proj.weight": (d, 1) + tuple(patch), "patch_embed.proj.bias": (d,),
            "norm.weight": (d,), "norm.bias": (d,)}
  per_block = {"norm1": (d,), "attn.qkv": (3 * d, d), "attn.proj": (d, d), "norm2": (d,),
               "mlp.fc1": (mlp_dim, d), "mlp.fc2": (d, mlp_dim)}
  for i in range(depth):
    for name, w in per_block.items():
      shapes[f"blocks.{i}.{name}.weight"] = w
      shapes[f"blocks.{i}.{name}.bias"] = (w[0],)
  return shapes


def _shape(v: Any) -> tuple[int, ...]:
  return tuple(int(s) for s in np.shape(v))


def _table_grid(table: np.ndarray, grid: patching.Grid) -> tuple[int, int] | None:
  """The grid whose sin-cos table ``table`` is, among the factorizations of ``N`` (None: none)."""
  n, d = table.shape
  if d % 4:
    return None
  if np.allclose(table, sincos_2d(d, grid), rtol=0, atol=_TABLE_ATOL):
    return tuple(grid)
  for rows in range(1, n + 1):  # a wrong input shape or a time-major (AudioMAE) layout
    if n % rows == 0 and (rows, n // rows) != tuple(grid):
      # Loose: tables of two different grids differ by O(1) somewhere.
      if np.allclose(table, sincos_2d(d, (rows, n // rows)), rtol=0, atol=1e-3):
        return rows, n // rows
  return None


def _heads_for(width: int, heads: int | None) -> int:
  if heads is None:
    if width % HEAD_DIM:
      raise CheckpointError(f"width {width} is not a multiple of timm's head size {HEAD_DIM}: "
                            "give the number of attention heads (--heads N)")
    heads = width // HEAD_DIM
  if heads < 1 or width % heads:
    raise CheckpointError(f"width {width} is not divisible by {heads} heads (--heads)")
  return heads


def _size_name(size: dict[str, int]) -> str:
  for name, s in MODEL_SIZES.items():
    if s == size:
      return name
  return "base"  # any name: width/depth/heads/mlp_dim are set explicitly


@dataclasses.dataclass(frozen=True)
class Imported:
  """A mapped checkpoint: what :func:`dwm_jax.evaluate.encoder.save_encoder` writes."""
  model_cfg: dict
  params: dict
  norm_mean: float
  norm_std: float
  pos_embed: np.ndarray | None  # [N, D] when the checkpoint's table is not the sin-cos one
  ignored: list[str]
  table_note: str
  norm_source: str  # "flags" | "checkpoint norm_stats" | "default"


def state_to_encoder(state: dict[str, Any], *, input_shape: tuple[int, int] | None,
                     patch_size: tuple[int, int] | None = None, heads: int | None = None,
                     norm_mean: float | None = None, norm_std: float | None = None) -> Imported:
  """A timm / M2D state dict (numpy or torch values) -> the encoder it holds.

  ``input_shape`` ``(F, T)`` is needed (the weights do not say it); ``patch_size`` defaults to
  the conv kernel's; ``heads`` to ``width / 64``; normalization to the checkpoint's
  ``norm_stats`` (else -7.1 / 4.2). Raises :class:`CheckpointError` naming the missing,
  unexpected or misshapen keys.
  """
  kept, ignored = split_state(state)
  stats = kept.pop("norm_stats", None)
  for key in ("cls_token", "patch_embed.proj.weight", "pos_embed"):
    if key not in kept:
      raise CheckpointError(f"not a timm ViT encoder state dict: no {key!r} key (keys read: "
                            f"{_list(sorted(kept)) or 'none'}; "
                            f"ignored: {group_keys(ignored) or 'none'})")
  width, patch = _patch_embedding(_shape(kept["patch_embed.proj.weight"]), patch_size)
  if input_shape is None:
    raise CheckpointError("input size unknown: give --input-shape FxT (e.g. 80x608) or keep the "
                          "authors' folder name (<model>-<F>x<T>p<ph>x<pw>-..., e.g. "
                          "m2d_vit_base-80x608p16x16-220930-mr7/checkpoint-300.pth)")
  try:
    grid = patching.grid_for(tuple(input_shape), patch)
  except ValueError as e:
    raise CheckpointError(str(e)) from e
  depth, mlp_dim = _check_keys(kept, width, patch, grid, tuple(input_shape))
  size = dict(width=width, depth=depth, heads=_heads_for(width, heads), mlp_dim=mlp_dim)

  a = {k: np.asarray(_numpy(v), np.float32) for k, v in kept.items()}
  bad = [k for k, v in a.items() if not np.isfinite(v).all()]
  if bad:
    raise CheckpointError(f"checkpoint tensors hold NaN or Inf: {_list(bad)}")
  model_cfg = base_config().model.to_dict()
  model_cfg.update(name=_size_name(size), input_shape=tuple(input_shape), patch_size=patch,
                   dtype="float32", dropout=0.0, drop_path=0.0, **size)
  params = _to_params(a, depth)
  _check_tree(model_cfg, params)
  stored, note = _own_table(a["pos_embed"][0, 1:], grid, tuple(input_shape))
  mean, std, source = _norm(stats, norm_mean, norm_std)
  return Imported(model_cfg=model_cfg, params=params, norm_mean=mean, norm_std=std,
                  pos_embed=stored, ignored=ignored, table_note=note, norm_source=source)


def _patch_embedding(kernel_shape: tuple[int, ...], patch_size) -> tuple[int, tuple[int, int]]:
  """``patch_embed.proj.weight`` shape -> ``(width, patch size)``, checked against the flag."""
  if len(kernel_shape) != 4:
    raise CheckpointError(f"patch_embed.proj.weight must be a conv kernel [D, 1, ph, pw], got "
                          f"{list(kernel_shape)}")
  width, chans = kernel_shape[:2]
  if chans != 1:
    raise CheckpointError(f"patch_embed.proj.weight {list(kernel_shape)} takes {chans} input "
                          "channels; M2D's encoder takes one (a log-mel)")
  kernel_patch = tuple(kernel_shape[2:])
  patch = tuple(patch_size) if patch_size is not None else kernel_patch
  if patch != kernel_patch:
    raise CheckpointError(f"patch size {patch[0]}x{patch[1]} given, but patch_embed.proj.weight "
                          f"is {list(kernel_shape)} ({kernel_patch[0]}x{kernel_patch[1]} patches)")
  return width, patch


def _check_keys(kept: dict, width: int, patch, grid: patching.Grid, input_shape) -> tuple[int, int]:
  """Depth and MLP size from the keys; refuses missing, unexpected or misshapen ones."""
  depth = len({k.split(".")[1] for k in kept if k.startswith("blocks.") and k.count(".") >= 2})
  fc1 = _shape(kept.get("blocks.0.mlp.fc1.weight", ()))
  mlp_dim = fc1[0] if len(fc1) == 2 else 4 * width
  want = _expected_shapes(width, depth, mlp_dim, patch, grid.num_patches)
  missing = [k for k in want if k not in kept]
  unexpected = [k for k in kept if k not in want]
  wrong = [f"{k} {list(_shape(kept[k]))} (expected {list(s)})" for k, s in want.items()
           if k in kept and _shape(kept[k]) != s]
  if not (missing or unexpected or wrong):
    return depth, mlp_dim
  parts = [f"missing keys: {_list(missing)}" if missing else "",
           f"unexpected keys: {_list(unexpected)}" if unexpected else "",
           f"wrong shapes: {_list(wrong, 4)}" if wrong else ""]
  hint = ""
  if any(w.startswith("pos_embed ") for w in wrong):
    hint = (f" (pos_embed rows = 1 + patches; a {input_shape[0]}x{input_shape[1]} input with "
            f"{patch[0]}x{patch[1]} patches has {grid.num_patches}: check --input-shape)")
  raise CheckpointError(f"cannot map the checkpoint onto dwm-jax's ViT encoder (width {width}, "
                        f"depth {depth}, mlp {mlp_dim}, grid {tuple(grid)}): "
                        + "; ".join(p for p in parts if p) + hint)


def _to_params(a: dict[str, np.ndarray], depth: int) -> dict[str, Any]:
  """Checked timm arrays -> the flax parameter tree of :class:`ViTEncoder`."""
  width = a["cls_token"].shape[-1]
  params: dict[str, Any] = {
      "patch_embed": {"kernel": a["patch_embed.proj.weight"].reshape(width, -1).T,
                      "bias": a["patch_embed.proj.bias"]},
      # The authors add the table's CLS row to the CLS token at run time; ours adds none.
      "cls_token": a["cls_token"] + a["pos_embed"][:, :1],
      "norm": {"scale": a["norm.weight"], "bias": a["norm.bias"]},
  }
  for i in range(depth):
    block: dict[str, Any] = {}
    for name, path in _BLOCK.items():
      w, b = a[f"blocks.{i}.{name}.weight"], a[f"blocks.{i}.{name}.bias"]
      node = block
      for p in path[:-1]:
        node = node.setdefault(p, {})
      node[path[-1]] = {"scale": w, "bias": b} if name in _NORMS else {"kernel": w.T, "bias": b}
    params[f"block_{i}"] = block
  return jax.tree.map(lambda x: np.ascontiguousarray(x, np.float32), params)


def _own_table(table: np.ndarray, grid: patching.Grid, input_shape) -> tuple[Any, str]:
  """``table: [N, D]`` -> ``(None, note)`` when it is the sin-cos table of the grid, else
  ``(table, note)``; refuses the sin-cos table of another grid (a wrong size or layout)."""
  found = _table_grid(table, grid)
  if found == tuple(grid):
    return None, "the MAE sin-cos table of the grid: dwm-jax's own table is used"
  if found is None:
    return table, "not the sin-cos table of the grid: the checkpoint's table is stored"
  what = (f"pos_embed is the sin-cos table of a {found[0]}x{found[1]} patch grid, not of the "
          f"{grid.freq}x{grid.time} grid of a {input_shape[0]}x{input_shape[1]} input")
  if found == (grid.time, grid.freq):
    raise CheckpointError(f"{what}: a time-major layout such as AudioMAE's ([T, F] input, time "
                          "as image rows), which dwm-jax does not import (see docs/checkpoints.md)")
  raise CheckpointError(f"{what}: check --input-shape")


def _norm(stats: Any, norm_mean: float | None, norm_std: float | None) -> tuple[float, float, str]:
  """``(mean, std, source)``: flags, else the checkpoint's ``norm_stats``, else the default."""
  if stats is None:
    mean, std = DEFAULT_NORM_STATS
  else:
    stats = np.asarray(_numpy(stats), np.float64).ravel()
    if stats.shape != (2,):
      raise CheckpointError(f"norm_stats must be [mean, std], got shape {list(stats.shape)}")
    mean, std = (float(v) for v in stats)
  if norm_mean is not None or norm_std is not None:
    source = "flags"
  else:
    source = "default" if stats is None else "checkpoint norm_stats"
  mean = float(mean if norm_mean is None else norm_mean)
  std = float(std if norm_std is None else norm_std)
  if not np.isfinite(mean) or not np.isfinite(std) or std <= 0:
    raise CheckpointError(f"normalization mean {mean}, std {std} ({source}): the std must be a "
                          "positive number")
  return mean, std, source


def _numpy(v: Any) -> np.ndarray:
  if type(v).__module__.startswith("torch"):
    return v.detach().cpu().float().numpy()
  return np.asarray(v)


def _check_tree(model_cfg: dict, params: dict) -> None:
  """The mapped tree must be exactly the encoder's: same paths, same shapes."""
  module = encoder_from_config(ml_collections.ConfigDict(model_cfg))
  g = patching.grid_for(model_cfg["input_shape"], model_cfg["patch_size"])
  ph, pw = model_cfg["patch_size"]
  want = jax.eval_shape(module.init, jax.random.key(0), jnp.zeros((1, g.num_patches, ph * pw)))
  want = jax.tree.map(lambda x: x.shape, want["params"])
  got = jax.tree.map(lambda x: x.shape, params)
  if want != got:  # a bug in this mapping, not in the checkpoint
    raise AssertionError(f"mapped parameters do not match the encoder:\n{got}\n!=\n{want}")


def encoder_to_state(encoder) -> dict[str, np.ndarray]:
  """A :class:`dwm_jax.evaluate.encoder.Encoder` -> timm / M2D state dict (numpy values).

  ``pos_embed`` gets a zero CLS row (the CLS token already holds any imported CLS position) and
  the encoder's table; ``norm_stats = [mean, std]`` as the authors' runtime reads it.
  """
  p = jax.tree.map(lambda x: np.asarray(x, np.float32), jax.device_get(encoder.params))
  d = encoder.width
  ph, pw = encoder.patch_size
  table = np.asarray(encoder.position_table, np.float32)
  state = {
      "cls_token": p["cls_token"].reshape(1, 1, d),
      "pos_embed": np.concatenate([np.zeros((1, d), np.float32), table])[None],
      "patch_embed.proj.weight": p["patch_embed"]["kernel"].T.reshape(d, 1, ph, pw),
      "patch_embed.proj.bias": p["patch_embed"]["bias"],
  }
  depth = int(encoder.module.depth)
  for i in range(depth):
    block = p[f"block_{i}"]
    for name, path in _BLOCK.items():
      leaf = block
      for k in path:
        leaf = leaf[k]
      w = leaf["scale"] if name in _NORMS else leaf["kernel"].T
      state[f"blocks.{i}.{name}.weight"] = w
      state[f"blocks.{i}.{name}.bias"] = leaf["bias"]
  state["norm.weight"], state["norm.bias"] = p["norm"]["scale"], p["norm"]["bias"]
  state["norm_stats"] = np.asarray([encoder.norm_mean, encoder.norm_std], np.float32)
  return {k: np.ascontiguousarray(v, np.float32) for k, v in state.items()}


def read_torch_checkpoint(path: str, *, trust_pickle: bool = False) -> tuple[dict, list[str]]:
  """``torch.load`` -> ``(state dict, other top-level keys)``; torch's safe loader unless told.

  The authors' training checkpoints also pickle ``args`` (an ``argparse.Namespace``): that is
  allowed; any other Python object needs ``trust_pickle`` (arbitrary code runs on load).
  """
  try:
    import torch  # pylint: disable=import-outside-toplevel
  except ImportError as e:
    raise CheckpointError("reading PyTorch checkpoints needs torch: "
                          "pip install -e '.[torch]'") from e
  if not os.path.isfile(path):
    raise CheckpointError(f"no checkpoint file at {path!r}")
  try:
    if trust_pickle:
      ckpt = torch.load(path, map_location="cpu", weights_only=False)
    else:
      with torch.serialization.safe_globals([argparse.Namespace, pathlib.PosixPath]):
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
  except pickle.UnpicklingError as e:
    found = re.search(r"Unsupported global: GLOBAL (\S+)", str(e))
    if found:
      raise CheckpointError(f"{path}: torch's safe loader refuses the Python object "
                            f"{found.group(1)} in it; if you trust the file, pass "
                            "--trust-pickle") from e
    raise CheckpointError(f"{path} is not a readable PyTorch checkpoint ({_reason(e)})") from e
  except (RuntimeError, EOFError, OSError, ValueError) as e:
    raise CheckpointError(f"{path} is not a readable PyTorch checkpoint ({_reason(e)})") from e
  if not isinstance(ckpt, dict):
    raise CheckpointError(f"{path} holds a {type(ckpt).__name__}, not a state dict or a dict "
                          "with 'model'")
  others: list[str] = []
  if isinstance(ckpt.get("model"), dict):
    others = [k for k in ckpt if k != "model"]
    ckpt = ckpt["model"]
  non_tensor = [k for k, v in ckpt.items() if not isinstance(v, torch.Tensor)]
  if non_tensor:
    raise CheckpointError(f"{path}: not a state dict, these entries are not tensors: "
                          f"{_list(non_tensor)}")
  return dict(ckpt), others


def _reason(e: Exception) -> str:
  """The informative line of a torch.load error (its first line is boilerplate)."""
  text = str(e)
  if "WeightsUnpickler error:" in text:
    text = text.split("WeightsUnpickler error:", 1)[1].split("Check the documentation")[0]
  lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
  return f"{type(e).__name__}: {lines[0]}" if lines else type(e).__name__


def write_torch_state(path: str, state: dict[str, np.ndarray]) -> str:
  """``torch.save`` of the state dict (float32 tensors), atomically; returns ``path``."""
  try:
    import torch  # pylint: disable=import-outside-toplevel
  except ImportError as e:
    raise CheckpointError("writing PyTorch checkpoints needs torch: "
                          "pip install -e '.[torch]'") from e
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  tmp = f"{path}.tmp-{os.getpid()}"
  torch.save({k: torch.from_numpy(np.array(v, np.float32)) for k, v in state.items()}, tmp)
  os.replace(tmp, path)
  return path
