"""The HEAR model as a ``torch.nn.Module`` (imported only when torch is used)."""
from __future__ import annotations

from typing import Any

import numpy as np
import torch

from dwm_jax.evaluate.hear.core import HearCore


class HearTorchModule(torch.nn.Module):
  """Holds the JAX encoder; torch tensors in (any device), float32 torch tensors out on theirs.

  It has no torch parameters. An empty buffer follows ``.to(device)`` so that numpy inputs get
  outputs on the model's device.
  """

  def __init__(self, core: HearCore):
    super().__init__()
    self.core = core
    self.sample_rate = int(core.sample_rate)
    self.scene_embedding_size = core.embedding_size
    self.timestamp_embedding_size = core.embedding_size
    self.register_buffer("_device_anchor", torch.zeros(0), persistent=False)

  def extra_repr(self) -> str:
    e = self.core.encoder
    return (f"dwm-jax encoder {e.model_cfg.name} input {e.input_shape} patch {e.patch_size}, "
            f"embedding {self.core.embedding_size}, timestamp hop {self.core.hop_ms:g} ms")

  def to_numpy(self, audio: Any) -> np.ndarray:
    if isinstance(audio, torch.Tensor):
      audio = audio.detach().to("cpu")
      # float16 / bfloat16 have no numpy twin; other dtypes go on to be checked as they are.
      return (audio.float() if audio.is_floating_point() else audio).numpy()
    if isinstance(audio, np.ndarray):
      return audio
    raise TypeError(f"a torch HEAR model takes a torch.Tensor (or numpy array) "
                    f"[n_sounds, n_samples], got {type(audio).__module__}.{type(audio).__name__}")

  def from_numpy(self, x: np.ndarray, like: Any) -> torch.Tensor:
    device = like.device if isinstance(like, torch.Tensor) else self._device_anchor.device
    return torch.tensor(np.asarray(x, np.float32), dtype=torch.float32, device=device)
