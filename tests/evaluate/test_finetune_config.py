"""Fine-tuning config validation: every bad field is named at once, before anything runs."""
import pytest

from dwm_jax.evaluate.finetuning.config import base_config, validate
from dwm_jax.validate import ConfigError


def test_defaults_are_valid():
  validate(base_config(), device_count=2, input_shape=(80, 208), patch_size=(16, 16))


def test_every_bad_field_is_named():
  c = base_config()
  c.optim.name = "lamb"
  c.optim.layer_decay = 0.0
  c.batch_size = 33
  c.augment.patch_dropout = 0.95
  c.augment.time_mask = 300
  c.head.norm = "layernorm"
  c.early_stop.patience = -1
  c.window_frames = 100
  with c.unlocked():
    c.optim.lr = 0.1
  with pytest.raises(ConfigError) as e:
    validate(c, device_count=2, input_shape=(80, 208), patch_size=(16, 16))
  text = str(e.value)
  for needle in ("optim.name: unknown optimizer 'lamb'", "optim.layer_decay: must be in",
                 "batch_size: 33 is not divisible by the 2 devices",
                 "augment.patch_dropout: 0.95 drops all 13 time columns",
                 "augment.time_mask: 300 is longer than the encoder's 208-frame window",
                 "head.norm: unknown head norm 'layernorm'", "early_stop.patience: must be in",
                 "window_frames: 100 must be a multiple of the patch width 16",
                 "optim.lr: unknown field"):
    assert needle in text, needle
