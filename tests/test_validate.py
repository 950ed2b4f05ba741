"""Every invalid config field gets one message naming it, before anything is compiled."""
import jax
import pytest

from dwm_jax import main as main_lib
from dwm_jax.config import base_config
from dwm_jax.validate import ConfigError, validate


def _valid():
  c = base_config()
  c.data.source = "synthetic"
  c.batch_size = 8
  return c


def _set(**fields):
  def apply(c):
    for dotted, value in fields.items():
      node = c
      *parents, leaf = dotted.split("__")
      for p in parents:
        node = node[p]
      node[leaf] = value
  return apply


CASES = [
    (_set(mask__ratio=1.0), "mask.ratio: must be in (0.0, 1.0), got 1.0"),
    (_set(mask__ratio=0.0), "mask.ratio: must be in (0.0, 1.0), got 0.0"),
    (_set(mask__ratio=0.999), "mask.ratio: 0.999 masks 190 of 190 patches"),
    (_set(model__input_shape=(80, 600)),
     "model.input_shape: 80x600 is not divisible by the patch size 16x16"),
    (_set(model__patch_size=(16, 0)), "model.patch_size: must be two positive ints"),
    (_set(batch_size=7), "batch_size: global batch 7 is not divisible by the 2 devices"),
    (_set(batch_size=0), "batch_size: must be in [1, inf]"),
    (_set(mask__name="dvm"), "mask.name: unknown masking strategy 'dvm'; valid: "),
    (_set(mask__options__alpha=2.0), "mask.options: unknown option(s) alpha for masking "
     "strategy 'dwm'"),
    (_set(model__name="huge"), "model.name: unknown model 'huge'; valid: tiny, small, base, large"),
    (_set(model__heads=5), "model.heads: width 768 is not divisible by 5 heads"),
    (_set(model__dtype="float16"), "model.dtype: unknown dtype 'float16'"),
    (_set(model__remat=None), "model.remat: must be true or false, got None"),
    (_set(objective__name="byol"), "objective.name: unknown objective 'byol'; valid: m2d, mae"),
    (_set(objective__predictor_heads=7), "objective.predictor_heads: predictor_dim 512 is not "
     "divisible by 7 heads"),
    (_set(data__source="s3"), "data.source: unknown data source 's3'; valid: synthetic, npy, "
     "shards, audio, tfds"),
    (_set(data__source="npy"), "data.csv: required for data.source='npy'"),
    (_set(data__source="shards"), "data.csv: required for data.source='shards' (the file list "
     "written by `dwm-jax prepare --layout shards`)"),
    (_set(data__source="npy", data__csv="/nonexistent/files.csv"),
     "data.csv: file '/nonexistent/files.csv' does not exist"),
    (_set(data__source="audio", data__root="/nonexistent/audio"),
     "data.root: folder '/nonexistent/audio' does not exist"),
    (_set(data__source="audio"), "data.csv: data.source='audio' needs data.csv"),
    (_set(data__source="tfds"), "data.tfds_name: required for data.source='tfds'"),
    (_set(data__norm_std=0.0), "data.norm_std: must be in (0.0, inf]"),
    (_set(optim__b2=1.0), "optim.b2: must be in [0.0, 1.0), got 1.0"),
    (_set(optim__accum_steps=0), "optim.accum_steps: must be in [1, inf]"),
    (_set(epochs=0), "epochs: must be in (0, inf]"),
    (_set(checkpoint__keep=0), "checkpoint.keep: must be in [1, inf]"),
    (_set(log_every_steps=0), "log_every_steps: must be in [1, inf], got 0"),
    (_set(mask__hint__k=0.0), "mask.hint.k: must be in (0.0, inf]"),
    (_set(objective__ema_schedule="step"), "objective.ema_schedule: unknown EMA schedule "
     "'step'; valid: linear, cosine"),
    (_set(objective__target_init="zeros"), "objective.target_init: unknown target init 'zeros'; "
     "valid: independent, copy"),
    (_set(optim__clip_norm=-1.0), "optim.clip_norm: must be in [0.0, inf]"),
    (_set(optim__decay_groups="all"), "optim.decay_groups: unknown weight-decay groups 'all'; "
     "valid: timm, kernels"),
    (_set(data__stats_crops=-5), "data.stats_crops: must be in [0, inf], got -5"),
    (_set(probe__tasks=("missing.csv",)), "probe.tasks[0]: task CSV 'missing.csv' does not exist"),
    (_set(probe__evar_lr=0.0), "probe.evar_lr: must be in (0.0, inf]"),
    (_set(data__source="tfds", data__tfds_name="speech_commands", probe__after_pretrain=True),
     "probe.tasks: probe.after_pretrain needs task CSVs (or tfds:NAME) when data.source is not "
     "synthetic"),
    (_set(checkpoint__every_minutes=-1.0), "checkpoint.every_minutes: must be in [0.0, inf]"),
    (_set(peak_tflops=0.0), "peak_tflops: must be in (0.0, inf]"),
    (_set(profile__start_step=0), "profile.start_step: must be in [1, inf]"),
    (_set(profile__num_steps=-1), "profile.num_steps: must be in [0, inf]"),
    (_set(profile__processes=(0, 2)), "profile.processes: must be process indices in [0, 1)"),
    (_set(storage__timeout_seconds=0.0), "storage.timeout_seconds: must be in (0.0, inf]"),
    (_set(storage__request_timeout_seconds=900.0), "storage.request_timeout_seconds: 900 s is "
     "longer than storage.timeout_seconds (600 s)"),
]


@pytest.mark.parametrize("mutate,message", CASES, ids=[m.split(":")[0] for _, m in CASES])
def test_each_invalid_field_is_named(mutate, message):
  c = _valid()
  mutate(c)
  with pytest.raises(ConfigError) as e:
    validate(c, device_count=2, process_count=1)
  assert any(p.startswith(message) for p in e.value.problems), e.value.problems
  assert len(e.value.problems) == 1, e.value.problems


def test_valid_config_passes_and_problems_are_reported_together():
  validate(_valid(), device_count=2, process_count=1)
  c = _valid()
  c.mask.ratio = 2.0
  c.model.name = "huge"
  with pytest.raises(ConfigError) as e:
    validate(c, device_count=2, process_count=1)
  assert [p.split(":")[0] for p in e.value.problems] == ["model.name", "mask.ratio"]
  assert "invalid config:\n  model.name: unknown model 'huge'" in str(e.value)


def test_batch_must_split_over_processes():
  c = _valid()
  c.batch_size = 12
  with pytest.raises(ConfigError, match="batch_size: global batch 12 is not divisible by the 8 "
                     "processes"):
    validate(c, device_count=4, process_count=8)


def test_cli_reports_invalid_config_before_any_compilation(tmp_path, capsys, monkeypatch):
  compiled = []
  jax.monitoring.register_event_duration_secs_listener(
      lambda event, *a, **k: compiled.append(event) if "compile" in event else None)

  def fail(*args, **kwargs):
    raise AssertionError("training started despite an invalid config")
  from dwm_jax.train import loop
  monkeypatch.setattr(loop, "train", fail)
  before = len(compiled)
  rc = main_lib.main(["--config", "configs/quickstart.py", "--workdir", str(tmp_path / "w"),
                      "--config.mask.ratio=1.5", "--config.model.input_shape=(80,200)"])
  assert rc == 2
  err = capsys.readouterr().err
  assert "mask.ratio: must be in (0.0, 1.0), got 1.5" in err
  assert "model.input_shape: 80x200 is not divisible by the patch size 16x16" in err
  assert len(compiled) == before
  assert not (tmp_path / "w").exists()
