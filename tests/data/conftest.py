"""Shared data-test fixtures: small audio folders, prepared .npy sets, a local TFDS dataset."""
import numpy as np
import pytest
import soundfile as sf

from dwm_jax.config import base_config
from dwm_jax.data import synthetic

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


TFDS_NAME = "dwm_tiny_audio"
TFDS_CLASSES = ("low", "high")


@pytest.fixture(scope="session")
def tfds_dir(tmp_path_factory):
  """A tiny audio dataset built and prepared locally in ArrayRecord format (no download):
  train 10 / validation 4 / test 4 clips of int16 audio at 8 kHz (exercises resampling)."""
  import tensorflow_datasets as tfds

  def clip(i, split_seed):
    rng = np.random.default_rng((split_seed, i))
    label = i % 2
    t = np.arange(int(8000 * (0.6 + 0.1 * (i % 4)))) / 8000
    x = 0.4 * np.sin(2 * np.pi * (300 if label == 0 else 2000) * t)
    x = x + 0.01 * rng.standard_normal(t.size)
    return {"audio": (x * 32767).astype(np.int16), "label": label}

  class DwmTinyAudio(tfds.core.GeneratorBasedBuilder):
    VERSION = tfds.core.Version("1.0.0")
    # tfds 4.9.10 resolves code paths of builders in dotted modules through the
    # `importlib_resources` backport, absent on Python >= 3.9; a top-level name skips that.
    __module__ = "dwm_tiny_audio_builder"

    def _info(self):
      return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
          "audio": tfds.features.Audio(shape=(None,), dtype=np.int16, sample_rate=8000),
          "label": tfds.features.ClassLabel(names=list(TFDS_CLASSES))}))

    def _split_generators(self, dl_manager):
      return {"train": self._generate_examples(10, 0),
              "validation": self._generate_examples(4, 1),
              "test": self._generate_examples(4, 2)}

    def _generate_examples(self, n, split_seed):
      for i in range(n):
        yield f"{split_seed}_{i}", clip(i, split_seed)

  data_dir = tmp_path_factory.mktemp("tfds")
  DwmTinyAudio(data_dir=str(data_dir), file_format="array_record").download_and_prepare()
  return data_dir
