"""The shipped configs: paper values, argument strings, command-line overrides, validity."""
import os

import pytest
from absl import flags

from dwm_jax import main as main_lib
from dwm_jax.validate import ConfigError, validate

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def load(spec: str, *overrides: str):
  """``configs/m2d.py:mask=dwm`` -> the config, through the CLI's own flag parsing."""
  argv = ["dwm-jax pretrain", "--config", os.path.join(REPO, spec), "--workdir", "/tmp/x",
          *overrides]
  fv, config = main_lib._flags(argv)  # pylint: disable=protected-access
  fv(argv)
  return config.value


def test_m2d_has_the_papers_setup():
  c = load("configs/m2d.py:mask=dwm,model=base")
  assert tuple(c.model.input_shape) == (80, 608) and tuple(c.model.patch_size) == (16, 16)
  assert c.model.name == "base" and c.objective.name == "m2d"
  assert (c.objective.predictor_depth, c.objective.predictor_dim) == (8, 512)
  assert c.mask.name == "dwm" and c.mask.ratio == 0.7 and dict(c.mask.options) == {"metric": "mad"}
  assert (c.mask.hint.start_epoch, c.mask.hint.k) == (50.0, 2.0)
  assert (c.batch_size, c.epochs, c.optim.base_lr, c.optim.warmup_epochs) == (2048, 300, 3e-4, 20)
  assert (c.objective.ema_decay_start, c.objective.ema_decay_end) == (0.99995, 0.99999)
  assert c.data.source == "npy"


@pytest.mark.parametrize("spec", ["configs/m2d.py", "configs/mae.py", None])
def test_the_authors_training_defaults(spec):
  """M2D's train_audio.py / models_mae.py values (MAE's audio script shares them); None: the
  schema's own defaults (base_config), which document the paper's M2D setup."""
  from dwm_jax.config import base_config
  c = base_config() if spec is None else load(spec)
  assert c.optim.clip_norm == 3.0 and c.optim.decay_groups == "timm"
  assert (c.optim.weight_decay, c.optim.b1, c.optim.b2) == (0.05, 0.9, 0.95)
  assert c.objective.norm_pix_loss and c.objective.ema_schedule == "linear"
  assert c.objective.target_init == "independent"
  assert c.data.stats_crops == 5000 and not c.data.stats


@pytest.mark.parametrize("preset,name,options", [
    ("random", "random", {}), ("dwm", "dwm", {"metric": "mad"}),
    ("dwm_var", "dwm", {"metric": "variance"}), ("dwm_topk", "dwm", {"probabilistic": False}),
    ("inverse_block", "inverse_block", {}), ("informed", "informed", {}),
])
def test_m2d_mask_presets_are_valid(preset, name, options):
  c = load(f"configs/m2d.py:mask={preset},model=small,data=synthetic")
  assert (c.mask.name, dict(c.mask.options), c.model.name) == (name, options, "small")
  validate(c, device_count=8, process_count=1)


def test_mae_is_m2d_with_the_mae_objective():
  m2d, mae = load("configs/m2d.py:mask=random"), load("configs/mae.py")
  assert mae.objective.name == "mae" and mae.mask.name == "random"
  m2d.objective.name = "mae"
  assert mae.to_dict() == m2d.to_dict()


def test_bad_config_arguments_name_the_valid_keys():
  with pytest.raises(flags.Error, match="KEY in data, mask, model"):
    load("configs/m2d.py:masking=dwm")
  with pytest.raises(flags.Error, match="unknown mask preset 'dwm2'"):
    load("configs/m2d.py:mask=dwm2")
  rc = main_lib.main(["--config", os.path.join(REPO, "configs/m2d.py:mask=dwm2"), "--workdir",
                      "/tmp/x"])
  assert rc == 2


def test_default_data_needs_a_file_list():
  with pytest.raises(ConfigError, match=r"data\.csv: required for data\.source='npy'"):
    validate(load("configs/m2d.py"), device_count=8, process_count=1)


def test_quickstart_is_valid_and_small():
  c = load("configs/quickstart.py")
  validate(c, device_count=1, process_count=1)
  assert c.data.source == "synthetic" and c.model.name == "tiny" and c.probe.after_pretrain
  # Its measured recipe: no clipping, kernels-only decay, the fixed -7.1 / 4.2 normalization.
  assert (c.optim.clip_norm, c.optim.decay_groups, c.data.stats_crops) == (0.0, "kernels", 0)
  assert tuple(c.probe.rendered) == ("words", "instruments")


def test_rendered_probe_tasks_are_checked():
  c = load("configs/quickstart.py")
  c.probe.rendered = ("words", "birdsong")
  c.probe.rendered_per_class = (40, 0, 20)
  with pytest.raises(ConfigError) as e:
    validate(c, device_count=1, process_count=1)
  assert "probe.rendered[1]: unknown rendered task 'birdsong'; valid: words, instruments" in str(
      e.value)
  assert "probe.rendered_per_class: must be 3 positive clip counts" in str(e.value)


def test_command_line_overrides_any_field():
  c = load("configs/m2d.py:mask=dwm_var", "--config.mask.ratio=0.6",
           "--config.model.input_shape=(80,208)", "--config.mask.options.metric=mad",
           "--config.data.csv=/data/files.csv")
  assert c.mask.ratio == 0.6 and tuple(c.model.input_shape) == (80, 208)
  assert c.mask.options.metric == "mad" and c.data.csv == "/data/files.csv"


def test_unknown_override_is_a_usage_error(capsys):
  rc = main_lib.main(["--config", os.path.join(REPO, "configs/quickstart.py"), "--workdir",
                      "/tmp/x", "--config.mask.rato=0.6"])
  assert rc == 2
  assert "mask.rato" in capsys.readouterr().err
