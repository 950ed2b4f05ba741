"""Run logging: clu metric writers (TensorBoard + console), ``metrics.jsonl``, progress, mask PNGs.

Only process 0 writes; other processes get a writer that drops everything. TensorBoard events
need ``tensorflow`` and ``tensorboard`` (the ``[tfds]`` extra), which clu's summary writer uses;
without them the run logs to the console and ``metrics.jsonl`` and says so once.

A workdir on a bucket (``gs://...``): ``metrics.jsonl`` and the events are written to a local
staging folder and uploaded at each log step (:mod:`dwm_jax.train.mirror`); mask PNGs are
written to the bucket directly.
"""
from __future__ import annotations

import io
import json
import logging
import os
import time
from typing import Any, Mapping

import ml_collections
import numpy as np

from dwm_jax import config as config_lib
from dwm_jax import paths

log = logging.getLogger("dwm_jax.train")

METRICS_FILE = "metrics.jsonl"


class JsonlWriter:
  """One JSON object per ``write_scalars`` call (``{"step": s, name: value, ...}``), appended.

  A resumed run appends to the same file, so a step can appear twice around a restart.
  """

  def __init__(self, path: str):
    self.path = path
    self._f = open(path, "a", buffering=1)  # line-buffered: a killed run keeps what it logged

  def write_scalars(self, step: int, scalars: Mapping[str, Any]) -> None:
    row = {"step": int(step), **{k: float(v) for k, v in scalars.items()}}
    self._f.write(json.dumps(row) + "\n")

  def write_hparams(self, hparams: Mapping[str, Any]) -> None:
    del hparams  # config.json holds them

  def write_images(self, step: int, images: Mapping[str, Any]) -> None:
    del step, images

  def flush(self) -> None:
    self._f.flush()

  def close(self) -> None:
    self._f.close()


class Writers:
  """Fans every call out to a list of writers (clu ``MetricWriter`` API subset); with a
  ``mirror`` (a bucket workdir), each ``write_scalars`` flushes them and asks for an upload."""

  def __init__(self, writers: list[Any], mirror: Any = None):
    self.writers, self.mirror = writers, mirror

  def __getattr__(self, name: str):
    def call(*args, **kwargs):
      for w in self.writers:
        getattr(w, name)(*args, **kwargs)
    return call

  def write_scalars(self, step: int, scalars: Mapping[str, Any]) -> None:
    for w in self.writers:
      w.write_scalars(step, scalars)
    if self.mirror is not None:
      for w in self.writers:
        w.flush()
      self.mirror.request()

  def close(self) -> None:
    for w in self.writers:
      w.close()
    if self.mirror is not None:
      self.mirror.close()


def _tensorboard_writer(logdir: str) -> Any | None:
  """clu's TensorBoard summary writer (async), or None when TF/tensorboard are missing."""
  try:
    from clu import metric_writers  # imports tensorflow + tensorboard
  except ImportError as e:
    log.warning("no TensorBoard events (%s): `pip install tensorflow-cpu tensorboard` "
                "(or the [tfds] extra); logging to the console and %s", e, METRICS_FILE)
    return None
  import tensorflow as tf  # pylint: disable=import-outside-toplevel

  tf.config.set_visible_devices([], "GPU")  # TF only writes summaries: leave accelerators to JAX
  return metric_writers.AsyncWriter(metric_writers.SummaryWriter(logdir))


def make_writer(workdir: str, *, is_primary: bool, tensorboard: bool = True) -> Writers:
  """Writers of ``workdir`` (``logs/`` TensorBoard events + ``metrics.jsonl``) on process 0."""
  if not is_primary:
    return Writers([])
  mirror = None
  if paths.is_remote(workdir):
    from dwm_jax.train.mirror import Mirror  # pylint: disable=import-outside-toplevel
    mirror = Mirror(workdir, fetch=[METRICS_FILE])  # a resumed run appends to the same rows
    workdir = mirror.local
  os.makedirs(workdir, exist_ok=True)
  writers = [JsonlWriter(os.path.join(workdir, METRICS_FILE))]
  tb = _tensorboard_writer(os.path.join(workdir, "logs")) if tensorboard else None
  if tb is not None:
    writers.append(tb)
  return Writers(writers, mirror)


def hparams(config: ml_collections.ConfigDict) -> dict[str, Any]:
  """Flat ``{"mask.ratio": 0.7, ...}`` for TensorBoard HParams (non-scalars as strings)."""
  return {k: v if isinstance(v, (bool, int, float, str)) else str(v)
          for k, v in config_lib.flatten(config).items() if v is not None}


def _duration(seconds: float) -> str:
  seconds = int(max(0.0, seconds))
  h, rest = divmod(seconds, 3600)
  m, s = divmod(rest, 60)
  return f"{h}h{m:02d}m{s:02d}s" if h else f"{m}m{s:02d}s"


class Progress:
  """Throughput and ETA from the steps timed since the first logged step (compile excluded)."""

  def __init__(self, total_steps: int, clips_per_step: int):
    self.total_steps = total_steps
    self.clips_per_step = clips_per_step
    self._t0: float | None = None
    self._s0 = 0

  def line(self, step: int, metrics: Mapping[str, float], epoch: float) -> tuple[str, dict]:
    """``step`` = steps done. Returns the console line and ``{"steps_per_sec", "clips_per_sec"}``."""
    now = time.perf_counter()
    rates = {}
    if self._t0 is None or step <= self._s0:
      self._t0, self._s0 = now, step
      speed = "warming up"
      eta = "?"
    else:
      sps = (step - self._s0) / (now - self._t0)
      rates = {"steps_per_sec": sps, "clips_per_sec": sps * self.clips_per_step}
      speed = f"{rates['clips_per_sec']:.1f} clips/s, {sps:.2f} steps/s"
      eta = _duration((self.total_steps - step) / sps)
    pct = 100.0 * step / self.total_steps
    hint = f"hint {metrics['hint']:.3f} " if "hint" in metrics else ""  # pretraining only
    text = (f"step {step}/{self.total_steps} ({pct:.1f}%) epoch {epoch:.2f} "
            f"loss {metrics.get('loss', float('nan')):.4f} lr {metrics.get('lr', 0.0):.2e} "
            f"{hint}| {speed} | ETA {eta}")
    return text, rates


def mask_png(path: str, logmel: np.ndarray, mask: np.ndarray, patch_size: tuple[int, int], *,
             title: str) -> np.ndarray:
  """PNG of one clip ``logmel: [F, T]``, its dispersion and ``mask: bool [N]`` (the mask a step
  trained on); returns the image as RGB ``[H, W, 3]`` for TensorBoard."""
  from matplotlib.backends.backend_agg import FigureCanvasAgg  # pylint: disable=import-outside-toplevel

  from dwm_jax import patching  # pylint: disable=import-outside-toplevel
  from dwm_jax.plots import masks  # pylint: disable=import-outside-toplevel

  logmel = np.asarray(logmel, np.float32)
  grid = patching.grid_for(logmel.shape, patch_size)
  fig = masks.mask_figure(logmel, {"trained mask": masks.to_grid_image(np.asarray(mask), grid)},
                          patch_size=patch_size, title=title)
  canvas = FigureCanvasAgg(fig)
  png = io.BytesIO()
  fig.savefig(png, format="png", dpi=80)
  paths.write_bytes(path, png.getvalue())  # a local file or a bucket object, written whole
  canvas.draw()
  return np.asarray(canvas.buffer_rgba())[..., :3].copy()
