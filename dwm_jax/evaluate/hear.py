"""HEAR 2021 common API (hear-eval-kit style tooling): ``load_model``, scene and timestamp embeddings.

Usage::

  from dwm_jax.evaluate import hear
  model = hear.load_model("encoder.msgpack")  # or a pretraining workdir
  scene = hear.get_scene_embeddings(audio, model)  # audio: [n_sounds, n_samples] at 16 kHz
  emb, ts = hear.get_timestamp_embeddings(audio, model)

Frame embeddings follow the M2D convention (one per 16-frame patch column, 160 ms; timestamps are
column centres in milliseconds); scene embeddings are their mean over time. Inputs may be numpy,
JAX or torch arrays; torch inputs get torch outputs (torch is not a dependency otherwise).
"""
from __future__ import annotations

from typing import Any

import numpy as np

from dwm_jax.evaluate import embed as embed_lib
from dwm_jax.evaluate.encoder import Encoder, load_encoder


class HearModel:
  """What ``load_model`` returns: the encoder plus the attributes the HEAR API requires."""

  sample_rate = embed_lib.SAMPLE_RATE

  def __init__(self, encoder: Encoder, batch_size: int = 32):
    self.encoder = encoder
    self.batch_size = batch_size
    self.scene_embedding_size = encoder.embedding_size
    self.timestamp_embedding_size = encoder.embedding_size


def load_model(model_file_path: str = "", **kwargs: Any) -> HearModel:
  """An encoder export file (``dwm-jax export``) or a pretraining workdir -> :class:`HearModel`."""
  if not model_file_path:
    raise ValueError("load_model needs the path of an encoder export file or pretraining workdir")
  return HearModel(load_encoder(model_file_path), **kwargs)


def _as_numpy(audio: Any) -> tuple[np.ndarray, bool]:
  is_torch = type(audio).__module__.startswith("torch")
  if is_torch:
    audio = audio.detach().cpu().numpy()
  audio = np.asarray(audio, np.float32)
  if audio.ndim != 2 or audio.shape[1] == 0:
    raise ValueError(f"audio must be [n_sounds, n_samples] with n_samples > 0, got {audio.shape}")
  return audio, is_torch


def _out(x: np.ndarray, is_torch: bool) -> Any:
  if is_torch:
    import torch
    return torch.from_numpy(np.ascontiguousarray(x))
  return x


def _frames(audio: np.ndarray, model: HearModel) -> np.ndarray:
  """``[n, S]`` at 16 kHz -> frame embeddings ``[n, T', Fp * D]`` (equal lengths -> equal T')."""
  mels = [embed_lib.to_logmel(a, model.sample_rate) for a in audio]
  out = embed_lib.embed_logmels(model.encoder, mels, batch_size=model.batch_size)
  return np.stack([frame for frame, _ in out])


def get_timestamp_embeddings(audio: Any, model: HearModel) -> tuple[Any, Any]:
  """``audio: [n, S]`` -> ``(embeddings [n, T', E], timestamps [n, T'] in ms)``."""
  audio, is_torch = _as_numpy(audio)
  frames = _frames(audio, model)
  ts = embed_lib.frame_timestamps_ms(model.encoder, frames.shape[1]).astype(np.float32)
  ts = np.broadcast_to(ts, frames.shape[:2]).copy()
  return _out(frames, is_torch), _out(ts, is_torch)


def get_scene_embeddings(audio: Any, model: HearModel) -> Any:
  """``audio: [n, S]`` -> ``[n, E]``: the mean of each sound's frame embeddings."""
  audio, is_torch = _as_numpy(audio)
  return _out(_frames(audio, model).mean(axis=1), is_torch)
