"""``dwm-jax import-torch`` / ``export-torch``: the authors' PyTorch checkpoints <-> export files.

  dwm-jax import-torch m2d_vit_base-80x608p16x16-220930-mr7/checkpoint-300.pth --out enc.msgpack
  dwm-jax import-torch weights.pth --out enc.msgpack --input-shape 80x608 [--patch-size 16x16]
      [--heads 12] [--norm-mean -7.1 --norm-std 4.2] [--trust-pickle]
  dwm-jax export-torch --encoder enc.msgpack --out m2d_vit_base-80x608p16x16/weights.pth

The export file works with ``load_encoder``, ``embed``, ``probe --encoder`` and the HEAR API.
Exit status 0 on success, 2 when the input cannot be read or mapped (one message says why).
"""
from __future__ import annotations

import argparse
import logging
import os
import sys

from dwm_jax import console
from dwm_jax.evaluate import torch_checkpoint as tc

log = logging.getLogger(__name__)


def _size(text: str) -> tuple[int, int]:
  try:
    a, b = (int(v) for v in text.lower().split("x"))
  except ValueError as e:
    raise argparse.ArgumentTypeError(f"expected AxB (e.g. 80x608), got {text!r}") from e
  if a < 1 or b < 1:
    raise argparse.ArgumentTypeError(f"sizes must be positive, got {text!r}")
  return a, b


def import_checkpoint(path: str, out: str, *, input_shape=None, patch_size=None, heads=None,
                      norm_mean=None, norm_std=None, trust_pickle: bool = False) -> str:
  """Reads, maps and writes; returns ``out``. Raises :class:`tc.CheckpointError`."""
  from dwm_jax.evaluate.encoder import save_encoder  # pylint: disable=import-outside-toplevel
  folder = os.path.basename(os.path.dirname(os.path.abspath(path)))
  named = tc.parse_folder_name(folder)
  if named is not None:
    log.info("folder name %s: input %dx%d, patches %dx%d, %s", folder, *named.input_shape,
             *named.patch_size, named.sample_rate)
    if named.sample_rate != tc.SAMPLE_RATE_TAG:
      raise tc.CheckpointError(
          f"the folder name {folder!r} says a {named.sample_rate} model; dwm-jax's front end "
          f"(embed, probe, HEAR) computes {tc.SAMPLE_RATE_TAG} log-mels only, so its embeddings "
          "would not be the authors'")
    for what, flag, value in (("input", input_shape, named.input_shape),
                              ("patch", patch_size, named.patch_size)):
      if flag is not None and tuple(flag) != value:
        log.warning("%s size %dx%d from the flag, not %dx%d from the folder name", what, *flag,
                    *value)
    input_shape = input_shape or named.input_shape
    patch_size = patch_size or named.patch_size
  state, others = tc.read_torch_checkpoint(path, trust_pickle=trust_pickle)
  log.info("read %d tensors from %s%s", len(state), path,
           f" (also in the file, not read: {', '.join(others)})" if others else "")
  imp = tc.state_to_encoder(state, input_shape=input_shape, patch_size=patch_size, heads=heads,
                            norm_mean=norm_mean, norm_std=norm_std)
  if imp.ignored:
    log.info("ignored %d non-encoder tensors: %s", len(imp.ignored), tc.group_keys(imp.ignored))
  c = imp.model_cfg
  log.info("encoder: width %d, depth %d, heads %d, mlp %d, input %dx%d, patches %dx%d",
           c["width"], c["depth"], c["heads"], c["mlp_dim"], *c["input_shape"], *c["patch_size"])
  log.info("positional table: %s", imp.table_note)
  log.info("normalization: mean %.6g, std %.6g (%s)", imp.norm_mean, imp.norm_std,
           imp.norm_source)
  return save_encoder(out, model_cfg=imp.model_cfg, params=imp.params, norm_mean=imp.norm_mean,
                      norm_std=imp.norm_std, pos_embed=imp.pos_embed)


def export_checkpoint(encoder_path: str, out: str) -> str:
  """An export file or workdir -> a timm / M2D state dict (``torch.save``); returns ``out``."""
  from dwm_jax.evaluate.encoder import load_encoder  # pylint: disable=import-outside-toplevel
  enc = load_encoder(encoder_path)
  path = tc.write_torch_state(out, tc.encoder_to_state(enc))
  (f, t), (ph, pw) = enc.input_shape, enc.patch_size
  folder = os.path.basename(os.path.dirname(os.path.abspath(out)))
  if tc.parse_folder_name(folder) is None:
    log.info("the authors' runtime reads input and patch size from the folder name: put the file "
             "in a folder named like m2d_vit_base-%dx%dp%dx%d/", f, t, ph, pw)
  return path


def _setup_logging() -> None:
  console.setup_logging("info")


def import_main(argv: list[str] | None = None) -> int:
  p = argparse.ArgumentParser(prog="dwm-jax import-torch",
                              description="the authors' PyTorch (M2D / timm ViT) checkpoint -> a "
                                          "dwm-jax encoder export file")
  p.add_argument("checkpoint", help="a .pth file: a dict with 'model', or the state dict itself")
  p.add_argument("--out", required=True, help="export file to write (e.g. encoder.msgpack)")
  p.add_argument("--input-shape", type=_size, default=None, metavar="FxT",
                 help="model input (default: from the folder name, e.g. ...-80x608p16x16-...)")
  p.add_argument("--patch-size", type=_size, default=None, metavar="PHxPW",
                 help="patch size (default: folder name, else the conv kernel's)")
  p.add_argument("--heads", type=int, default=None,
                 help=f"attention heads (default: width / {tc.HEAD_DIM}, timm's convention)")
  p.add_argument("--norm-mean", type=float, default=None,
                 help="log-mel mean (default: the checkpoint's norm_stats, else -7.1)")
  p.add_argument("--norm-std", type=float, default=None,
                 help="log-mel std (default: the checkpoint's norm_stats, else 4.2)")
  p.add_argument("--trust-pickle", action="store_true",
                 help="load with torch.load(weights_only=False): runs code in the file")
  args = p.parse_args(argv)
  _setup_logging()
  try:
    path = import_checkpoint(args.checkpoint, args.out, input_shape=args.input_shape,
                             patch_size=args.patch_size, heads=args.heads,
                             norm_mean=args.norm_mean, norm_std=args.norm_std,
                             trust_pickle=args.trust_pickle)
  except (tc.CheckpointError, ValueError) as e:
    print(f"dwm-jax import-torch: error: {e}", file=sys.stderr)
    return 2
  print(f"wrote {path}")
  return 0


def export_main(argv: list[str] | None = None) -> int:
  p = argparse.ArgumentParser(prog="dwm-jax export-torch",
                              description="a dwm-jax encoder -> a timm-compatible PyTorch state "
                                          "dict with norm_stats (the authors' runtime loads it)")
  p.add_argument("--encoder", required=True, help="export file (dwm-jax export) or workdir")
  p.add_argument("--out", required=True, help=".pth file to write")
  args = p.parse_args(argv)
  _setup_logging()
  try:
    path = export_checkpoint(args.encoder, args.out)
  except (tc.CheckpointError, FileNotFoundError, ValueError) as e:
    print(f"dwm-jax export-torch: error: {e}", file=sys.stderr)
    return 2
  print(f"wrote {path}")
  return 0


if __name__ == "__main__":
  sys.exit(import_main())
