"""Downstream evaluation: frozen-encoder embeddings, the linear probe, fine-tuning, the HEAR API.

``dwm_jax.evaluate.embed`` stays the module (``embed.embed(encoder, audio, sr)``): the function is
not re-exported so the name keeps meaning one thing. ``finetune`` (the package is
``dwm_jax.evaluate.finetuning``) is re-exported lazily: it brings orbax and the train loop, which
embedding and the HEAR API do not need.
"""
from dwm_jax.evaluate.embed import embed_clips, embed_logmel, embed_logmels
from dwm_jax.evaluate.encoder import Encoder, load_encoder, random_encoder, save_encoder
from dwm_jax.evaluate.evar_probe import EvarConfig
from dwm_jax.evaluate.probe import (ProbeConfig, evaluate_tasks, linear_probe, logmel_stats,
                                    markdown_table, mean_average_precision)

__all__ = [
    "Encoder", "EvarConfig", "ProbeConfig", "embed_clips", "embed_logmel", "embed_logmels",
    "evaluate_tasks", "finetune", "linear_probe", "load_encoder", "logmel_stats", "markdown_table",
    "mean_average_precision", "random_encoder", "save_encoder",
]


def __getattr__(name: str):
  if name == "finetune":
    from dwm_jax.evaluate.finetuning.run import finetune  # pylint: disable=import-outside-toplevel
    return finetune
  raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
