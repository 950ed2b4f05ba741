"""Downstream evaluation: frozen-encoder embeddings, the linear probe, the HEAR API.

``dwm_jax.evaluate.embed`` stays the module (``embed.embed(encoder, audio, sr)``): the function is
not re-exported so the name keeps meaning one thing.
"""
from dwm_jax.evaluate.embed import embed_clips, embed_logmel, embed_logmels
from dwm_jax.evaluate.encoder import Encoder, load_encoder, random_encoder, save_encoder
from dwm_jax.evaluate.probe import (ProbeConfig, evaluate_tasks, linear_probe, logmel_stats,
                                    markdown_table, mean_average_precision)

__all__ = [
    "Encoder", "ProbeConfig", "embed_clips", "embed_logmel", "embed_logmels",
    "evaluate_tasks", "linear_probe", "load_encoder", "logmel_stats", "markdown_table",
    "mean_average_precision", "random_encoder", "save_encoder",
]
