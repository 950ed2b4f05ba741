"""A run without data.stats normalizes with statistics of its own training crops (the authors'
way), and its checkpoints carry them: the workdir's encoder, its export and a resume agree."""
import json
import os

from dwm_jax.data import pipeline
from dwm_jax.evaluate.encoder import load_encoder

from .conftest import tiny_config


def test_run_records_its_crop_statistics(reference_run):
  workdir, _ = reference_run
  config = tiny_config()
  assert not config.data.stats and config.data.stats_crops == 5000
  record = json.load(open(os.path.join(workdir, "stats.json")))
  want = pipeline.crop_stats(config.data, input_shape=tuple(config.model.input_shape),
                             seed=int(config.seed), num_crops=5000)
  assert (record["mean"], record["std"]) == (want.mean, want.std)
  assert abs(want.mean - config.data.norm_mean) > 0.1  # not the -7.1 placeholder
  saved = json.load(open(os.path.join(workdir, "config.json")))
  assert (saved["data"]["norm_mean"], saved["data"]["norm_std"]) == (want.mean, want.std)
  encoder = load_encoder(workdir)  # what probe / export / embed use
  assert (encoder.norm_mean, encoder.norm_std) == (want.mean, want.std)
