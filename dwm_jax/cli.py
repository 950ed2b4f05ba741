"""``dwm-jax`` console script: one subcommand per job, each ``module`` with ``main(argv)`` (or
``module:function``)."""
from __future__ import annotations

import importlib
import sys

COMMANDS = {
    "pretrain": ("dwm_jax.main", "pretrain a model from a config (ml_collections)"),
    "export": ("dwm_jax.evaluate.export", "write the encoder parameters of a workdir"),
    "probe": ("dwm_jax.evaluate.probe_cli", "linear-probe an encoder on task CSVs or TFDS"),
    "finetune": ("dwm_jax.evaluate.finetuning.cli",
                 "fine-tune an encoder + linear head on task CSVs or TFDS"),
    "embed": ("dwm_jax.evaluate.embed_cli",
              "embeddings of an audio collection (clip, frames, layers), resumable"),
    "prepare": ("dwm_jax.data.prepare", "convert an audio folder to log-mel .npy files"),
    "synth": ("dwm_jax.data.synthetic", "write the synthetic audio set as WAV + CSV"),
    "render": ("dwm_jax.data.rendered",
               "render real-audio tasks (espeak-ng words, fluidsynth instruments) as WAV + CSV"),
    "show": ("dwm_jax.plots.masks", "PNG of a spectrogram, its dispersion and every mask"),
    "import-torch": ("dwm_jax.evaluate.torch_cli:import_main",
                     "the authors' PyTorch M2D checkpoint -> an encoder export file"),
    "export-torch": ("dwm_jax.evaluate.torch_cli:export_main",
                     "an encoder -> a timm-compatible PyTorch state dict"),
}


def _usage() -> str:
  lines = ["usage: dwm-jax COMMAND [ARGS...]", "", "commands:"]
  lines += [f"  {name:<12} {doc}" for name, (_, doc) in COMMANDS.items()]
  return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
  argv = sys.argv[1:] if argv is None else argv
  if not argv or argv[0] in ("-h", "--help"):
    print(_usage())
    return 0
  name, rest = argv[0], argv[1:]
  if name not in COMMANDS:
    print(f"dwm-jax: unknown command {name!r}\n\n{_usage()}", file=sys.stderr)
    return 2
  module, _, function = COMMANDS[name][0].partition(":")
  return int(getattr(importlib.import_module(module), function or "main")(rest) or 0)


if __name__ == "__main__":
  sys.exit(main())
