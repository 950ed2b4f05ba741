"""Audio front end, sources and grain input pipelines.

The pipeline names resolve lazily (PEP 562), so worker processes that only need the front end
(``dwm-jax prepare``) do not import grain / JAX. ``dwm_jax.data.log_mel_jax`` (JAX) and
``dwm_jax.data.tfds_source`` (TensorFlow) are imported explicitly.
"""
import importlib

from dwm_jax.data.audio_io import AudioError, load_audio
from dwm_jax.data.labeled import Task, load_task, load_tasks, synthetic_tasks
from dwm_jax.data.log_mel import LogMelSpec, log_mel, mel_filterbank
from dwm_jax.data.stats import Stats, compute_stats, load_stats, save_stats
from dwm_jax.data.synthetic import EVENT_NAMES, PITCH_NAMES, TIMBRE_NAMES, synthesize_clip

_PIPELINE = ("dataset_size", "make_pretrain_loader", "make_source", "norm_stats")


def __getattr__(name):
  if name in _PIPELINE:
    return getattr(importlib.import_module("dwm_jax.data.pipeline"), name)
  raise AttributeError(f"module 'dwm_jax.data' has no attribute {name!r}")
