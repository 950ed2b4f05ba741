"""The quickstart job end to end (fewer steps): checkpoints, logs, mask PNGs, probe results."""
import glob
import json
import os

import pytest

from dwm_jax import cli
from dwm_jax.data import rendered
# The launcher tests' persistent compilation cache (fixtures shared with tests/train).
from tests.train.conftest import cache_dir, compile_cache  # noqa: F401  pylint: disable=unused-import

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
QUICKSTART = os.path.join(REPO, "configs", "quickstart.py")


@pytest.mark.slow
@pytest.mark.usefixtures("compile_cache")
def test_quickstart_end_to_end(tmp_path):
  workdir = tmp_path / "qs"
  rc = cli.main(["pretrain", "--config", QUICKSTART, "--workdir", str(workdir),
                 "--config.total_steps=6", "--config.checkpoint.every_steps=3",
                 "--config.log_every_steps=2", "--config.mask_png_every_steps=3",
                 "--config.data.synthetic.num_clips=64", "--config.batch_size=16",
                 "--config.probe.synthetic_clips=40", "--config.probe.seeds=1",
                 "--config.probe.rendered_per_class=(2,1,1)"])
  assert rc == 0
  assert sorted(os.listdir(workdir / "checkpoints")) == ["3", "6"]
  rows = [json.loads(line) for line in open(workdir / "metrics.jsonl")]
  assert [r["step"] for r in rows] == [2, 4, 6]
  assert all(r["loss"] > 0 and 0 <= r["hint"] <= 1 for r in rows)
  assert "clips_per_sec" in rows[-1]
  assert glob.glob(str(workdir / "logs" / "events.out.tfevents.*"))  # TensorBoard ([test] has TF)
  assert sorted(os.listdir(workdir / "masks")) == ["step_00000000.png", "step_00000003.png"]
  config = json.load(open(workdir / "config.json"))
  assert config["total_steps"] == 6 and config["mask"]["name"] == "dwm"

  summary = json.load(open(workdir / "summary.json"))
  assert summary["step"] == 6 and not summary["preempted"]
  probe = summary["probe"]
  assert json.load(open(workdir / "probe.json")) == probe
  # The real-audio tasks where this machine can render them (the quickstart names both).
  tasks = {"synthetic_event", "synthetic_pitch", "synthetic_timbre", *rendered.available()[0]}
  assert set(probe) == {"pretrained", "random_init", "logmel_stats"}
  for model in probe:
    assert set(probe[model]) == tasks
    for r in probe[model].values():
      assert r["metric"] == "accuracy" and 0.0 <= r["mean"] <= 1.0 and r["seeds"] == 1
  table = open(workdir / "probe.md").read()
  for row in ("| pretrained |", "| random-init encoder |", "| log-mel statistics |"):
    assert row in table

  # Rerunning the finished job resumes at its last step: nothing to train, same summary.
  assert cli.main(["pretrain", "--config", QUICKSTART, "--workdir", str(workdir),
                   "--config.total_steps=6", "--config.data.synthetic.num_clips=64",
                   "--config.batch_size=16", "--config.probe.after_pretrain=False"]) == 0
  again = json.load(open(workdir / "summary.json"))
  assert again["resumed_from"] == 6 and again["step"] == 6


def test_cli_dispatches_pretrain_and_reports_usage(capsys):
  assert cli.main(["pretrain", "--workdir", "/tmp/x"]) == 2
  assert "--config and --workdir are required" in capsys.readouterr().err
