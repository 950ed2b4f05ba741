"""TFDS through `tfds.data_source` (locally built ArrayRecord set) and the no-TensorFlow path."""
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from dwm_jax.data.labeled import load_task
from dwm_jax.data.log_mel import log_mel
from dwm_jax.data.tfds_source import TfdsSource, open_data_source, to_wave

from .conftest import TFDS_CLASSES, TFDS_NAME


def test_source_reads_resamples_and_converts(tfds_dir):
  src = TfdsSource(TFDS_NAME, "train", str(tfds_dir))
  assert len(src) == 10 and src.rate == 8000
  raw = open_data_source(TFDS_NAME, "train", str(tfds_dir))[3]
  assert raw["audio"].dtype == np.int16
  x = src[3]
  np.testing.assert_array_equal(x, log_mel(to_wave(raw["audio"], 8000, 16000)))
  # 8 kHz int16 clip of 0.9 s -> 16 kHz float: 14400 samples -> 91 frames.
  assert x.shape == (80, 1 + raw["audio"].size * 2 // 160)


def test_labeled_tfds_task(tfds_dir):
  task = load_task(f"tfds:{TFDS_NAME}", data_dir=str(tfds_dir))
  assert task.classes == list(TFDS_CLASSES) and not task.multilabel
  assert [len(task.x[s]) for s in ("train", "valid", "test")] == [10, 4, 4]
  # (TFDS stores records in key-hash order, so check counts, then the audio-label pairing.)
  np.testing.assert_array_equal(np.bincount(task.y["train"]), [5, 5])
  # "high" (2 kHz) clips have more energy in upper mel bins than "low" (300 Hz) ones.
  xs, ys = task.train
  upper = np.array([x[50:].mean() - x[:20].mean() for x in xs])
  assert upper[ys == 1].min() > upper[ys == 0].max()


def test_unknown_dataset(tfds_dir):
  with pytest.raises(ValueError, match="unknown TFDS dataset 'no_such_set'"):
    TfdsSource("no_such_set", "train", str(tfds_dir))


def test_everything_else_works_without_tensorflow(synth_dir, tmp_path):
  # A fresh interpreter where `import tensorflow` fails, as without the [tfds] extra.
  wav = synth_dir / "audio" / "000000.wav"
  (tmp_path / "task.csv").write_text(f"file_name,label,split\n{wav},a,train\n{wav},a,test\n")
  script = textwrap.dedent(f"""
      import sys
      sys.modules["tensorflow"] = None
      from dwm_jax.config import base_config
      from dwm_jax.data import load_task, make_pretrain_loader
      c = base_config().data
      c.prefetch = 0; c.synthetic.num_clips = 4; c.synthetic.seconds = 0.5
      batch = next(iter(make_pretrain_loader(c, input_shape=(80, 32), global_batch_size=2,
                                             seed=0)))
      assert batch["logmel"].shape == (2, 80, 32)
      load_task({str(tmp_path / "task.csv")!r})
      assert "tensorflow" not in sys.modules or sys.modules["tensorflow"] is None
      c.source = "tfds"; c.tfds_name = "anything"
      try:
        make_pretrain_loader(c, input_shape=(80, 32), global_batch_size=2, seed=0)
      except ImportError as e:
        print("HINT:", e)
      """)
  out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                       timeout=120)
  assert out.returncode == 0, out.stderr[-2000:]
  assert "HINT: TFDS sources need TensorFlow" in out.stdout
  assert "pip install 'dwm-jax[tfds]'" in out.stdout
