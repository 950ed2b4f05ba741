"""The HEAR 2021 API: ``load_model``, ``get_scene_embeddings``, ``get_timestamp_embeddings``.

``load_model`` returns a ``torch.nn.Module`` when torch is importable, else a ``tf.Module``
(``framework="tf"`` forces TensorFlow). Its options come as keyword arguments (heareval's
``--model-options`` JSON) or, for tools that pass none (the official validator), as a JSON dict in
``$DWM_JAX_HEAR_OPTIONS``; arguments win. Only the chosen framework is imported, by ``load_model``.
"""
from __future__ import annotations

import importlib.util
import json
import os
from typing import Any

from dwm_jax.evaluate.encoder import load_encoder
from dwm_jax.evaluate.hear import core as core_lib

OPTIONS_ENV = "DWM_JAX_HEAR_OPTIONS"
OPTIONS = ("framework", "hop_ms", "batch_size")
FRAMEWORKS = ("torch", "tf")
_ENV_EXAMPLE = '{"framework": "tf", "hop_ms": 40}'
_EXPECTED = ("a dwm-jax encoder export file (`dwm-jax export`; `dwm-jax import-torch` converts "
             "the authors' M2D .pth checkpoints to one) or a pretraining workdir")


def _env_options() -> dict[str, Any]:
  raw = os.environ.get(OPTIONS_ENV, "").strip()
  if not raw:
    return {}
  try:
    options = json.loads(raw)
  except json.JSONDecodeError as e:
    raise ValueError(f"${OPTIONS_ENV} must be a JSON dict such as {_ENV_EXAMPLE}: {e}") from None
  if not isinstance(options, dict) or set(options) - set(OPTIONS):
    raise ValueError(f"${OPTIONS_ENV} must be a JSON dict with keys among {OPTIONS}, got {raw!r}")
  return options


def _framework(name: str | None) -> str:
  if name is None:
    for candidate, module in (("torch", "torch"), ("tf", "tensorflow")):
      if importlib.util.find_spec(module) is not None:
        return candidate
    raise ImportError("the HEAR API returns a torch.nn.Module or a tf.Module, but neither torch "
                      "nor tensorflow is installed: pip install -e '.[torch]'")
  if name not in FRAMEWORKS:
    raise ValueError(f"framework must be one of {FRAMEWORKS}, got {name!r}")
  return name


def load_model(model_file_path: str = "", *, framework: str | None = None,
               hop_ms: float | None = None, batch_size: int | None = None) -> Any:
  """An encoder -> the HEAR model (``torch.nn.Module`` or ``tf.Module``).

  Args:
    model_file_path: an encoder export file or a pretraining workdir (its latest checkpoint).
    framework: ``"torch"`` | ``"tf"``; default torch if importable, else TensorFlow.
    hop_ms: timestamp hop; default one patch column (160 ms, M2D). Finer hops (80, 40, 20, 10 ms)
      embed shifted windows: 160 / hop_ms times the cost of the default.
    batch_size: rows of encoder windows per JAX call (default 32).
  Options left ``None`` are taken from ``$DWM_JAX_HEAR_OPTIONS`` when it sets them.
  """
  given = {"framework": framework, "hop_ms": hop_ms, "batch_size": batch_size}
  options = {**_env_options(), **{k: v for k, v in given.items() if v is not None}}
  name = _framework(options.get("framework"))
  if not model_file_path:
    raise ValueError(f"load_model needs the path of {_EXPECTED}")
  try:
    encoder = load_encoder(os.fspath(model_file_path))
  except (FileNotFoundError, ValueError) as e:
    raise type(e)(f"HEAR load_model({model_file_path!r}): {e}; expected {_EXPECTED}") from None
  hop_frames = core_lib.hop_frames_for(encoder.patch_size[1], options.get("hop_ms"))
  core = core_lib.HearCore(encoder, hop_frames, int(options.get("batch_size") or 32))
  if name == "torch":
    from dwm_jax.evaluate.hear.torch_module import HearTorchModule
    return HearTorchModule(core)
  from dwm_jax.evaluate.hear.tf_module import HearTFModule
  return HearTFModule(core)


def _core(model: Any) -> core_lib.HearCore:
  core = getattr(model, "core", None)
  if not isinstance(core, core_lib.HearCore):
    raise TypeError(f"model must come from dwm_jax.evaluate.hear.load_model, got {type(model)}")
  return core


def get_scene_embeddings(audio: Any, model: Any) -> Any:
  """``audio: [n_sounds, n_samples]`` at 16 kHz -> ``[n_sounds, scene_embedding_size]`` float32."""
  x = core_lib.scene_embeddings(_core(model), model.to_numpy(audio))
  return model.from_numpy(x, audio)


def get_timestamp_embeddings(audio: Any, model: Any) -> tuple[Any, Any]:
  """``audio: [n, S]`` -> ``(embeddings [n, K, E], timestamps [n, K] ms)``, float32 tensors."""
  emb, ts = core_lib.timestamp_embeddings(_core(model), model.to_numpy(audio))
  return model.from_numpy(emb, audio), model.from_numpy(ts, audio)
