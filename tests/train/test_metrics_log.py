"""The log's writers and figures: TensorBoard events read back by TensorBoard's own reader, and
the progress line's step time, throughput, TFLOP/s, MFU and data-wait share."""
import io
import json
import os

import numpy as np
import pytest

from dwm_jax.train import metrics_log
from tests.tensorboard_events import read_events


def test_tensorboard_events_read_back_by_tensorboard(tmp_path):
  writer = metrics_log.make_writer(str(tmp_path), is_primary=True)
  writer.write_hparams({"mask.ratio": 0.7, "mask.name": "dwm", "model.remat": False})
  rng = np.random.default_rng(0)
  image = rng.integers(0, 256, size=(1, 12, 20, 3), dtype=np.uint8)
  for step in (1, 2, 3):
    writer.write_scalars(step, {"loss": 1.0 / step, "mfu": 0.25})
  writer.write_images(2, {"masks": image})
  writer.close()

  events = read_events(str(tmp_path / "logs"))
  assert events["scalars"]["loss"] == [(1, 1.0), (2, 0.5), (3, pytest.approx(1 / 3))]
  assert events["scalars"]["mfu"] == [(1, 0.25), (2, 0.25), (3, 0.25)]
  ((step, width, height, png),) = events["images"]["masks"]
  assert (step, width, height) == (2, 20, 12)
  from PIL import Image  # the PNG decodes to the pixels that were written
  np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(png)).convert("RGB")), image[0])
  assert events["hparams"] == {"mask.ratio": 0.7, "mask.name": "dwm", "model.remat": False}
  rows = [json.loads(line) for line in open(tmp_path / metrics_log.METRICS_FILE)]
  assert [r["step"] for r in rows] == [1, 2, 3]


def test_other_processes_write_nothing(tmp_path):
  writer = metrics_log.make_writer(str(tmp_path), is_primary=False)
  writer.write_scalars(1, {"loss": 1.0})
  writer.close()
  assert os.listdir(tmp_path) == []


def test_last_logged_step_skips_a_torn_row(tmp_path):
  assert metrics_log.last_logged_step(str(tmp_path)) is None
  (tmp_path / metrics_log.METRICS_FILE).write_text(
      '{"step": 2, "loss": 1}\n{"step": 4, "loss": 1}\n{"step": 6, "lo')
  assert metrics_log.last_logged_step(str(tmp_path)) == 4


class _Clock:
  def __init__(self):
    self.now = 100.0

  def __call__(self):
    return self.now


def test_progress_figures_of_each_interval(monkeypatch):
  clock = _Clock()
  monkeypatch.setattr(metrics_log.time, "perf_counter", clock)
  # 8 clips per step on 2 devices, 3e9 FLOPs per step per device, a 10 GFLOP/s peak.
  progress = metrics_log.Progress(100, 8, devices=2, flops_per_step=3e9, peak_flops=10e9)
  progress.waited(5.0)  # before start(): warm-up, not counted
  progress.start(1)
  clock.now += 4.0      # steps 2..5 in 4 s, 1 s of it waiting for data
  progress.waited(1.0)
  text, rates = progress.line(5, {"loss": 1.5, "lr": 1e-3, "hint": 0.5}, 0.05)
  assert rates == pytest.approx({
      "steps_per_sec": 1.0, "clips_per_sec": 8.0, "step_time": 1.0,
      "clips_per_sec_per_device": 4.0, "tflops_per_device": 3e-3, "mfu": 0.3,
      "data_wait": 0.25})
  assert ("| 1000 ms/step, 8.0 clips/s (4.0 per device), 0.003 TFLOP/s per device, "
          "MFU 30.0%, data wait 25% | ETA 1m35s") in text
  clock.now += 1.0      # steps 6..9 in 1 s, no waiting: the next interval stands alone
  _, rates = progress.line(9, {"loss": 1.4}, 0.09)
  assert rates["step_time"] == pytest.approx(0.25) and rates["data_wait"] == 0.0
  assert rates["mfu"] == pytest.approx(1.2)
  totals = progress.totals()  # the whole span: 8 steps in 5 s, 1 s waiting
  assert totals == pytest.approx({
      "steps_per_sec": 1.6, "clips_per_sec": 12.8, "step_time": 0.625,
      "clips_per_sec_per_device": 6.4, "tflops_per_device": 4.8e-3, "mfu": 0.48,
      "data_wait": 0.2, "timed_steps": 8, "timed_seconds": 5.0})


def test_progress_without_devices_keeps_the_plain_line(monkeypatch):
  """The fine-tuning loop's line: clips/s and steps/s, warming up at the first call."""
  clock = _Clock()
  monkeypatch.setattr(metrics_log.time, "perf_counter", clock)
  progress = metrics_log.Progress(10, 4)
  text, rates = progress.line(1, {"loss": 1.0, "lr": 1e-3}, 0.1)
  assert rates == {} and "warming up" in text
  clock.now += 2.0
  text, rates = progress.line(3, {"loss": 1.0, "lr": 1e-3}, 0.3)
  assert rates == {"steps_per_sec": 1.0, "clips_per_sec": 4.0}
  assert "| 4.0 clips/s, 1.00 steps/s | ETA 0m07s" in text
