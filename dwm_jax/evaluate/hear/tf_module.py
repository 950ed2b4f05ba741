"""The HEAR model as a ``tf.Module`` (imported only when TensorFlow is used)."""
from __future__ import annotations

import contextlib
from typing import Any

import numpy as np
import tensorflow as tf

from dwm_jax.evaluate.hear.core import HearCore


class HearTFModule(tf.Module):
  """Holds the JAX encoder; TF tensors in, float32 TF tensors out on the input's device."""

  def __init__(self, core: HearCore):
    super().__init__(name="dwm_jax_hear")
    self.core = core
    self.sample_rate = int(core.sample_rate)
    self.scene_embedding_size = core.embedding_size
    self.timestamp_embedding_size = core.embedding_size

  def to_numpy(self, audio: Any) -> np.ndarray:
    if isinstance(audio, (tf.Tensor, tf.Variable)):
      return audio.numpy()
    if isinstance(audio, np.ndarray):
      return audio
    raise TypeError(f"a TensorFlow HEAR model takes a tf.Tensor (or numpy array) "
                    f"[n_sounds, n_samples], got {type(audio).__module__}.{type(audio).__name__}")

  def from_numpy(self, x: np.ndarray, like: Any) -> tf.Tensor:
    device = getattr(like, "device", "") if isinstance(like, (tf.Tensor, tf.Variable)) else ""
    with tf.device(device) if device else contextlib.nullcontext():
      return tf.identity(tf.constant(np.asarray(x, np.float32), dtype=tf.float32))
