"""Shared data-test fixtures: small audio folders, prepared .npy sets, a local TFDS dataset."""
import numpy as np
import pytest
import soundfile as sf

from dwm_jax.config import base_config
from dwm_jax.data import synthetic
from tests.tiny_tfds import TFDS_CLASSES, TFDS_NAME  # noqa: F401  (re-exported for the tests)

NUM_CLIPS = 12
SECONDS = 1.2  # 1.2 s -> 121 frames: crops of 64 frames still vary


@pytest.fixture(scope="session")
def synth_dir(tmp_path_factory):
  """``dwm-jax synth`` output: audio/*.wav, files.csv, event/pitch/timbre.csv."""
  out = tmp_path_factory.mktemp("synth")
  assert synthetic.main([str(out), "--num-clips", str(NUM_CLIPS), "--seed", "3",
                         "--seconds", str(SECONDS)]) == 0
  return out


@pytest.fixture(scope="session")
def prepared_dir(synth_dir, tmp_path_factory):
  from dwm_jax.data.prepare import prepare
  out = tmp_path_factory.mktemp("prepared")
  report = prepare(synth_dir / "audio", out, workers=0, dtype="float32", progress=False)
  assert report["converted"] == NUM_CLIPS
  return out


def write_tone(path, rate, seconds=1.0, channels=1, freq=440.0, subtype="PCM_16"):
  t = np.arange(int(rate * seconds)) / rate
  x = 0.5 * np.sin(2 * np.pi * freq * t)
  if channels > 1:
    x = np.stack([x * (c + 1) / channels for c in range(channels)], axis=1)
  path.parent.mkdir(parents=True, exist_ok=True)
  sf.write(str(path), x, rate, subtype=subtype)
  return x


GOOD = {"r16/a.wav": (16000, 1), "r22/b.flac": (22050, 1), "deep/r44/c.wav": (44100, 1),
        "stereo.ogg": (44100, 2)}


def write_mixed_folder(root):
  """The ``GOOD`` files (mixed rates, channels and formats, 1 s tones) and four bad ones, one per
  reason prepare skips (unreadable, empty, silent, too short), plus a file that is not audio."""
  for name, (rate, ch) in GOOD.items():
    write_tone(root / name, rate, seconds=1.0, channels=ch, subtype="VORBIS"
               if name.endswith(".ogg") else "PCM_16")
  (root / "bad").mkdir()
  (root / "bad/corrupt.wav").write_bytes(b"RIFF\x00\x00garbage" * 10)
  sf.write(str(root / "bad/empty.wav"), np.zeros(0), 16000)
  sf.write(str(root / "bad/silent.wav"), np.zeros(16000), 16000)
  sf.write(str(root / "bad/short.wav"), np.full(400, 0.1), 16000)  # 25 ms < 0.1 s
  (root / "readme.txt").write_text("not audio, not listed")
  return root


def data_cfg(**overrides):
  c = base_config().data
  c.prefetch = 0
  c.synthetic.num_clips = 24
  c.synthetic.seconds = SECONDS
  for k, v in overrides.items():
    node = c
    *parents, leaf = k.split(".")
    for p in parents:
      node = node[p]
    node[leaf] = v
  return c


def take(loader, n, state=None):
  it = iter(loader)
  if state is not None:
    it.set_state(state)
  out = [next(it)["logmel"] for _ in range(n)]
  return out, it

