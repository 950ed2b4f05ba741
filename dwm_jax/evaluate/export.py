"""``dwm-jax export --workdir W --out F``: the encoder alone, for downstream use.

The file holds the encoder parameters, the model config that rebuilds the encoder and the
log-mel normalization statistics (``dwm_jax.evaluate.encoder`` format); load it with
``dwm_jax.evaluate.encoder.load_encoder(F)``. No optimizer state, no EMA target, no predictor.
"""
from __future__ import annotations

import argparse
import logging
import sys

from dwm_jax import console, faults, paths
from dwm_jax.data.pipeline import norm_stats
from dwm_jax.evaluate.encoder import save_encoder
from dwm_jax.train.checkpoint import restore_encoder

log = logging.getLogger(__name__)


def export(workdir: str, out: str, *, step: int | None = None) -> str:
  """Writes the encoder of ``workdir``'s latest (or ``step``) checkpoint to ``out`` (either may
  be a bucket URL; a bad bucket for ``out`` fails before anything is read)."""
  paths.check_writable(paths.parent(paths.absolute(out)))
  config, params = restore_encoder(workdir, step)
  mean, std = norm_stats(config.data)
  return save_encoder(out, model_cfg=config.model, params=params, norm_mean=mean, norm_std=std)


def main(argv: list[str] | None = None) -> int:
  p = argparse.ArgumentParser(prog="dwm-jax export", description=__doc__.split("\n")[0])
  p.add_argument("--workdir", required=True, help="pretraining workdir (local or gs://...)")
  p.add_argument("--out", required=True, help="output file (e.g. encoder.msgpack, or "
                 "gs://bucket/encoder.msgpack)")
  p.add_argument("--step", type=int, default=None, help="checkpoint step (default: the newest "
                 "that restores)")
  p.add_argument("--debug", action="store_true", help="show tracebacks of expected failures")
  args = p.parse_args(argv)
  console.setup_logging()
  try:
    path = export(args.workdir, args.out, step=args.step)
  except faults.Fault as e:
    return console.report_fault("dwm-jax export", e, debug=args.debug)
  except (FileNotFoundError, ValueError) as e:
    print(f"dwm-jax export: error: {e}", file=sys.stderr)
    return 2
  print(f"wrote {path}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
