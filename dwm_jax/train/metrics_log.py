"""Run logging: TensorBoard events, ``metrics.jsonl``, the progress line, mask PNGs.

Only process 0 writes; other processes get a writer that drops everything. TensorBoard events
are written with the ``tensorboard`` package's own pieces (its protobufs, its record framing and
its hparams summary), which need no TensorFlow: scalars, the mask images and the run's hparams,
in ``logs/``, read by ``tensorboard --logdir WORKDIR/logs``. Without the ``tensorboard`` package
the run logs to the console and ``metrics.jsonl`` and says so once.

A workdir on a bucket (``gs://...``): ``metrics.jsonl`` and the events are written to a local
staging folder and uploaded at each log step (:mod:`dwm_jax.train.mirror`); mask PNGs are
written to the bucket directly.
"""
from __future__ import annotations

import io
import itertools
import json
import logging
import os
import socket
import time
from typing import Any, Mapping

import ml_collections
import numpy as np

from dwm_jax import config as config_lib
from dwm_jax import paths
from dwm_jax.train import mfu

log = logging.getLogger("dwm_jax.train")

METRICS_FILE = "metrics.jsonl"
LOGS_DIR = "logs"


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


_event_files = itertools.count()  # distinct file names within one process


class TensorBoardWriter:
  """An event file in ``logdir`` (``events.out.tfevents.<time>.<host>.<pid>.<n>``): each call
  appends one ``Event`` record, written through at once (a few hundred bytes per log step).

  The summaries are the ones TensorFlow's ``tf.summary`` writes, built with the ``tensorboard``
  package alone: scalars and images (PNG) as tensors tagged for the scalars / images plugins (one
  event per call), hparams as the HParams plugin's ``session_start_info``.
  """

  def __init__(self, logdir: str):
    # pylint: disable=import-outside-toplevel
    from tensorboard.compat.proto import event_pb2
    from tensorboard.summary.writer.record_writer import RecordWriter
    self._event = event_pb2.Event
    os.makedirs(logdir, exist_ok=True)
    self.path = os.path.join(logdir, f"events.out.tfevents.{time.time():010.0f}."
                             f"{socket.gethostname()}.{os.getpid()}.{next(_event_files)}")
    self._records = RecordWriter(open(self.path, "ab"))
    self._write(time.time(), file_version="brain.Event:2")

  def _write(self, wall_time: float, **fields: Any) -> None:
    self._records.write(self._event(wall_time=wall_time, **fields).SerializeToString())
    self._records.flush()

  def write_scalars(self, step: int, scalars: Mapping[str, Any]) -> None:
    # pylint: disable=import-outside-toplevel
    from tensorboard.compat.proto import summary_pb2
    from tensorboard.plugins.scalar import summary_v2
    summary = summary_pb2.Summary()
    for tag, value in scalars.items():
      summary.value.extend(summary_v2.scalar_pb(tag, float(value)).value)
    self._write(time.time(), step=int(step), summary=summary)

  def write_images(self, step: int, images: Mapping[str, Any]) -> None:
    """``images``: ``{name: uint8 [N, H, W, 3]}``, one summary of N PNGs per name."""
    # pylint: disable=import-outside-toplevel
    from matplotlib import image as mpl_image
    from tensorboard.compat.proto import summary_pb2
    from tensorboard.plugins.image import metadata
    from tensorboard.util import tensor_util
    summary = summary_pb2.Summary()
    for name, batch in images.items():
      batch = np.asarray(batch)
      pngs = []
      for img in batch:
        png = io.BytesIO()
        mpl_image.imsave(png, img, format="png")
        pngs.append(png.getvalue())
      # What tf.summary.image writes: [width, height, png, png, ...] as strings.
      tensor = tensor_util.make_tensor_proto(
          np.array([str(batch.shape[2]).encode(), str(batch.shape[1]).encode(), *pngs],
                   dtype=object))
      summary.value.add(tag=name, tensor=tensor, metadata=metadata.create_summary_metadata(
          display_name=None, description=None))
    self._write(time.time(), step=int(step), summary=summary)

  def write_hparams(self, hparams: Mapping[str, Any]) -> None:
    from tensorboard.plugins.hparams import summary_v2  # pylint: disable=import-outside-toplevel
    self._write(time.time(), step=0, summary=summary_v2.hparams_pb(dict(hparams)))

  def flush(self) -> None:
    self._records.flush()

  def close(self) -> None:
    self._records.close()


class Writers:
  """Fans every call out to a list of writers; with a ``mirror`` (a bucket workdir), each
  ``write_scalars`` flushes them and asks for an upload."""

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
  """A :class:`TensorBoardWriter`, or None (with a warning) without the ``tensorboard``
  package."""
  try:
    return TensorBoardWriter(logdir)
  except ImportError as e:
    log.warning("no TensorBoard events (%s): `pip install tensorboard`; logging to the "
                "console and %s", e, METRICS_FILE)
    return None


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
  tb = _tensorboard_writer(os.path.join(workdir, LOGS_DIR)) if tensorboard else None
  if tb is not None:
    writers.append(tb)
  return Writers(writers, mirror)


def last_logged_step(workdir: str) -> int | None:
  """The highest step in ``WORKDIR/metrics.jsonl`` (None: no rows): how far an earlier,
  interrupted launch got, to within ``log_every_steps``."""
  path = paths.join(workdir, METRICS_FILE)
  if not paths.isfile(path):
    return None
  steps = []
  for line in paths.read_text(path).splitlines():
    try:
      steps.append(int(json.loads(line)["step"]))
    except (ValueError, KeyError, TypeError):
      continue  # a row cut short by a kill
  return max(steps, default=None)


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
  """The log line's figures: for each log interval, the step time, clips/s, and (for a
  pretraining run, given ``devices``) clips/s per device, TFLOP/s per device and MFU from the
  compiled step's FLOPs, and the share of wall time the host waited for data; the ETA from the
  whole timed span.

  Timing starts at :meth:`start` (the loop calls it once the launch's first step is done, so
  compilation and warm-up stay out), or else at the first :meth:`line`, which then has no rates
  yet ("warming up"). :meth:`waited` adds host seconds spent waiting for the next batch.
  """

  def __init__(self, total_steps: int, clips_per_step: int, *, devices: int | None = None,
               flops_per_step: float | None = None, peak_flops: float | None = None):
    self.total_steps, self.clips_per_step = total_steps, clips_per_step
    self.devices, self.flops, self.peak = devices, flops_per_step, peak_flops
    self._t0: float | None = None  # start of the timed span
    self._s0 = 0
    self._window: tuple[float, int, float] | None = None  # (time, step, waited) at its start
    self._waited = 0.0  # data wait since the start
    self._last: tuple[float, int, float] | None = None  # the last logged point

  def start(self, step: int) -> None:
    """Starts the timed span with ``step`` steps done."""
    self._t0, self._s0, self._waited = time.perf_counter(), step, 0.0
    self._window = self._last = (self._t0, step, 0.0)

  def waited(self, seconds: float) -> None:
    self._waited += seconds

  def rates(self, steps: int, seconds: float, waited: float) -> dict[str, float]:
    """The figures of ``steps`` steps that took ``seconds`` with ``waited`` of data wait."""
    if steps <= 0 or seconds <= 0:
      return {}
    sps = steps / seconds
    out = {"steps_per_sec": sps, "clips_per_sec": sps * self.clips_per_step}
    if self.devices:
      out.update({"step_time": seconds / steps,
                  "clips_per_sec_per_device": out["clips_per_sec"] / self.devices,
                  **mfu.utilization(self.flops, seconds / steps, self.peak),
                  "data_wait": min(1.0, waited / seconds)})
    return out

  def totals(self) -> dict[str, float]:
    """:meth:`rates` over the span from :meth:`start` to the last logged step, plus
    ``timed_steps`` and ``timed_seconds``."""
    if self._last is None or self._t0 is None:
      return {}
    t, s, waited = self._last
    out = self.rates(s - self._s0, t - self._t0, waited)
    return {**out, "timed_steps": s - self._s0, "timed_seconds": t - self._t0} if out else {}

  def line(self, step: int, metrics: Mapping[str, float], epoch: float) -> tuple[str, dict]:
    """``step`` = steps done. Returns the console line and the interval's :meth:`rates`."""
    now = time.perf_counter()
    if self._t0 is None or step <= self._s0:
      self.start(step)
      rates, speed, eta = {}, "warming up", "?"
    else:
      t, s, w = self._window
      rates = self.rates(step - s, now - t, self._waited - w)
      sps = (step - self._s0) / (now - self._t0)
      eta = _duration((self.total_steps - step) / sps)
      speed = f"{rates['clips_per_sec']:.1f} clips/s, {rates['steps_per_sec']:.2f} steps/s"
      if self.devices:
        speed = (f"{rates['step_time'] * 1e3:.0f} ms/step, {rates['clips_per_sec']:.1f} clips/s "
                 f"({rates['clips_per_sec_per_device']:.1f} per device)")
        if "tflops_per_device" in rates:
          speed += f", {rates['tflops_per_device']:.3g} TFLOP/s per device"
        if "mfu" in rates:
          speed += f", MFU {100 * rates['mfu']:.1f}%"
        speed += f", data wait {100 * rates['data_wait']:.0f}%"
      self._window = self._last = (now, step, self._waited)
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
