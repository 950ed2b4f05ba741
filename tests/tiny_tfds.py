"""A tiny local TFDS audio dataset (a helper, not tests): no download, ArrayRecord files.

The builder class is defined once per process, here: TFDS registers every builder subclass by
name when it is defined, so a class defined inside a fixture fails the second time the fixture
runs in the same worker (it runs once per module that imports it).
"""
import functools

import numpy as np

TFDS_NAME = "dwm_tiny_audio"
TFDS_CLASSES = ("low", "high")


def _clip(i: int, split_seed: int) -> dict:
  rng = np.random.default_rng((split_seed, i))
  label = i % 2
  t = np.arange(int(8000 * (0.6 + 0.1 * (i % 4)))) / 8000
  x = 0.4 * np.sin(2 * np.pi * (300 if label == 0 else 2000) * t)
  x = x + 0.01 * rng.standard_normal(t.size)
  return {"audio": (x * 32767).astype(np.int16), "label": label}


@functools.cache
def _builder() -> type:
  """The builder class (tensorflow_datasets is imported only when a test needs the set)."""
  import tensorflow_datasets as tfds  # pylint: disable=import-outside-toplevel

  class DwmTinyAudio(tfds.core.GeneratorBasedBuilder):
    """train 10 / validation 4 / test 4 clips of int16 audio at 8 kHz (exercises resampling)."""
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
        yield f"{split_seed}_{i}", _clip(i, split_seed)

  assert DwmTinyAudio.name == TFDS_NAME
  return DwmTinyAudio


def prepare(data_dir: str) -> None:
  """Writes the dataset's ArrayRecord files under ``data_dir``."""
  _builder()(data_dir=data_dir, file_format="array_record").download_and_prepare()
