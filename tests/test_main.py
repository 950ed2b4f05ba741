"""The quickstart job end to end (fewer steps, without TensorFlow): checkpoints, logs, TensorBoard
events, mask PNGs, probe results."""
import configparser
import json
import os
import subprocess
import sys
import textwrap

import pytest

from dwm_jax import cli
from dwm_jax.data import rendered
# The launcher tests' persistent compilation cache (fixtures shared with tests/train).
from tests.train.conftest import cache_dir, compile_cache  # noqa: F401  pylint: disable=unused-import

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
QUICKSTART = os.path.join(REPO, "configs", "quickstart.py")


# A process where TensorFlow cannot be imported (what a plain `pip install -e .` gives): the
# path finder no longer finds it, as if it were not installed.
NO_TENSORFLOW = textwrap.dedent("""
    import importlib.machinery, json, os, sys

    class NoTensorFlow(importlib.machinery.PathFinder):
      @classmethod
      def find_spec(cls, name, path=None, target=None):
        if name.split(".")[0] == "tensorflow":
          return None
        return super().find_spec(name, path, target)

    sys.meta_path = [NoTensorFlow if f is importlib.machinery.PathFinder else f
                     for f in sys.meta_path]
    try:
      import tensorflow
      sys.exit("tensorflow is still importable")
    except ImportError:
      pass
    from dwm_jax import cli
    from tests.tensorboard_events import read_events
    workdir = sys.argv[1]
    rc = cli.main(["pretrain", "--workdir", workdir, *sys.argv[2:]])
    events = read_events(os.path.join(workdir, "logs"))
    events["images"] = {k: [(s, w, h, png[:8].hex()) for s, w, h, png in v]
                        for k, v in events["images"].items()}
    loaded = sorted({m.split(".")[0] for m in sys.modules} & {"tensorflow", "clu"})
    print("RESULT " + json.dumps({"rc": rc, "events": events, "loaded": loaded}))
    """)


def test_install_requires_tensorboard_and_no_tensorflow():
  cfg = configparser.ConfigParser()
  cfg.read(os.path.join(REPO, "setup.cfg"))
  names = [line.split(">")[0].split("=")[0].split("<")[0].strip()
           for line in cfg["options"]["install_requires"].strip().splitlines()]
  assert "tensorboard" in names
  assert not {"tensorflow", "tensorflow-cpu", "clu"} & set(names)


@pytest.mark.slow
@pytest.mark.usefixtures("compile_cache")
def test_quickstart_end_to_end_without_tensorflow(tmp_path):
  """The quickstart (fewer steps) in a process where TensorFlow cannot be imported, as a plain
  `pip install -e .` leaves it: checkpoints, metrics, TensorBoard events read back with the
  tensorboard package's reader (scalars, mask images, hparams), mask PNGs, the probe table with
  the real-audio tasks this machine can render; then a rerun resumes at the last step."""
  workdir = str(tmp_path / "qs")
  env = {**os.environ, "PYTHONPATH": os.pathsep.join([REPO, os.environ.get("PYTHONPATH", "")])}
  proc = subprocess.run(
      [sys.executable, "-c", NO_TENSORFLOW, workdir, "--config", QUICKSTART,
       "--config.total_steps=6", "--config.checkpoint.every_steps=3",
       "--config.log_every_steps=2", "--config.mask_png_every_steps=3",
       "--config.data.synthetic.num_clips=64", "--config.batch_size=16",
       "--config.probe.synthetic_clips=40", "--config.probe.seeds=1",
       "--config.probe.rendered_per_class=(2,1,1)"],
      cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
  assert "RESULT " in proc.stdout, proc.stdout[-2000:] + proc.stderr[-3000:]
  result = json.loads(proc.stdout.split("RESULT ")[-1])
  assert result["rc"] == 0 and result["loaded"] == [], proc.stderr[-3000:]
  assert "no TensorBoard events" not in proc.stderr
  assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == ["3", "6"]
  rows = [json.loads(line) for line in open(os.path.join(workdir, "metrics.jsonl"))]
  assert [r["step"] for r in rows] == [2, 4, 6]
  assert all(r["loss"] > 0 and 0 <= r["hint"] <= 1 for r in rows)
  events = result["events"]
  for name in ("loss", "lr", "hint", "clips_per_sec", "mfu", "tflops_per_device", "data_wait",
               "step_time"):
    assert events["scalars"][name] == [[r["step"], pytest.approx(r[name], rel=1e-6)]
                                       for r in rows], name
  png = "89504e470d0a1a0a"  # the PNG signature
  assert [[s, p] for s, _, _, p in events["images"]["masks"]] == [[0, png], [3, png]]
  assert events["hparams"]["objective.name"] == "mae" and events["hparams"]["mask.ratio"] == 0.7
  assert sorted(os.listdir(os.path.join(workdir, "masks"))) == ["step_00000000.png",
                                                                  "step_00000003.png"]
  config = json.load(open(os.path.join(workdir, "config.json")))
  assert config["total_steps"] == 6 and config["mask"]["name"] == "dwm"

  summary = json.load(open(os.path.join(workdir, "summary.json")))
  assert summary["step"] == 6 and not summary["preempted"]
  probe = summary["probe"]
  assert json.load(open(os.path.join(workdir, "probe.json"))) == probe
  # The real-audio tasks where this machine can render them (the quickstart names both).
  tasks = {"synthetic_event", "synthetic_pitch", "synthetic_timbre", *rendered.available()[0]}
  assert set(probe) == {"pretrained", "random_init", "logmel_stats"}
  for model in probe:
    assert set(probe[model]) == tasks
    for r in probe[model].values():
      assert r["metric"] == "accuracy" and 0.0 <= r["mean"] <= 1.0 and r["seeds"] == 1
  table = open(os.path.join(workdir, "probe.md")).read()
  for row in ("| pretrained |", "| random-init encoder |", "| log-mel statistics |"):
    assert row in table

  # Rerunning the finished job resumes at its last step: nothing to train, same summary.
  assert cli.main(["pretrain", "--config", QUICKSTART, "--workdir", workdir,
                   "--config.total_steps=6", "--config.data.synthetic.num_clips=64",
                   "--config.batch_size=16", "--config.probe.after_pretrain=False"]) == 0
  again = json.load(open(os.path.join(workdir, "summary.json")))
  assert again["resumed_from"] == 6 and again["step"] == 6


def test_cli_dispatches_pretrain_and_reports_usage(capsys):
  assert cli.main(["pretrain", "--workdir", "/tmp/x"]) == 2
  assert "--config and --workdir are required" in capsys.readouterr().err
