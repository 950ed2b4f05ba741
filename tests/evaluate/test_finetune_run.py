"""``dwm-jax finetune`` end to end on tiny tasks: outputs, exact resume, early stopping, bad input.

Runs on the two host CPU devices of ``tests/conftest.py``: the batch is split over both.
"""
import csv
import json
import os
import signal

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from dwm_jax.evaluate.finetuning import cli, loop
from dwm_jax.evaluate.finetuning import config as ft_config
from dwm_jax.evaluate.finetuning import run as ft_run
from dwm_jax.evaluate.finetuning import step as ft_step
from dwm_jax.train import checkpoint as ckpt
from tests.train.conftest import cache_dir, compile_cache  # noqa: F401 (fixtures)
from tests.train.conftest import truncate_arrays

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("compile_cache")]


def tiny_config(**fields):
  c = ft_config.base_config()
  c.seeds = 1
  c.batch_size = 8
  c.eval_batch_size = 8
  c.epochs = 3.0
  c.log_every_steps = 2
  c.augment.mixup = 0.3  # every random draw of the step, for the resume tests
  c.augment.freq_mask = 8
  c.augment.time_mask = 16
  c.augment.patch_dropout = 0.5  # off by default; on here for its draws
  c.checkpoint.keep = 20
  for k, v in fields.items():
    node = c
    *path, last = k.split(".")
    for p in path:
      node = node[p]
    node[last] = v
  return c


def run_dir(out, task="event", seed=0):
  return os.path.join(out, "runs", task, f"seed_{seed}")


def final_state(workdir):
  """The latest checkpoint's state tree (numpy) and its step."""
  with ocp.CheckpointManager(os.path.join(workdir, "checkpoints"),
                             options=ocp.CheckpointManagerOptions(read_only=True)) as m:
    step = m.latest_step()
    out = m.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore()))
  return out["state"]["train"], step


def assert_same_tree(a, b):
  la, lb = jax.tree_util.tree_leaves_with_path(a), jax.tree_util.tree_leaves_with_path(b)
  assert [p for p, _ in la] == [p for p, _ in lb]
  for (path, x), (_, y) in zip(la, lb):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y),
                                  err_msg=jax.tree_util.keystr(path))


def test_cli_end_to_end(dataset, export, tmp_path, capsys):
  out = tmp_path / "out"
  args = ["--encoder", export, "--task", str(dataset / "event.csv"), "--task",
          str(dataset / "timbre.csv"), "--out", str(out), "--seeds", "2",
          "--config.batch_size=8", "--config.eval_batch_size=8", "--config.epochs=2",
          "--config.log_every_steps=2"]
  assert cli.main(args) == 0
  printed = capsys.readouterr()
  res = json.loads((out / "finetune.json").read_text())
  assert set(res) == {"event", "timbre"}
  for r in res.values():
    assert set(r) == {"metric", "mean", "std", "seeds"}
    assert r["metric"] == "accuracy" and r["seeds"] == 2 and 0 <= r["mean"] <= 1 and r["std"] >= 0
  assert (out / "finetune.md").read_text() in printed.out and "| event | accuracy |" in printed.out
  for task in ("event", "timbre"):
    for s in (0, 1):
      r = json.loads((out / "runs" / task / f"seed_{s}" / "result.json").read_text())
      assert r["steps"] == 2 * 4 and 0 <= r["score"] <= 1  # 28 train clips / batch 8: 4 steps
  assert "ETA" in printed.err and "valid" in printed.err
  # The rerun reuses the finished runs and reproduces the file; another config is refused.
  assert cli.main(args) == 0
  assert json.loads((out / "finetune.json").read_text()) == res
  capsys.readouterr()
  assert cli.main(args + ["--config.optim.base_lr=0.01"]) == 2
  err = capsys.readouterr().err
  assert "finished with another config" in err and "optim.base_lr" in err


def _signal_at(step, sig=signal.SIGTERM):
  def hook(task, seed, done):
    if done == step:
      os.kill(os.getpid(), sig)
  return hook


def _crash_at(step):
  def hook(task, seed, done):
    if done == step:
      raise RuntimeError("simulated crash")
  return hook


@pytest.fixture(scope="module")
def reference(dataset, export, tmp_path_factory):
  out = str(tmp_path_factory.mktemp("reference"))
  res = ft_run.finetune(export, [str(dataset / "event.csv")], out, config=tiny_config())
  return res, final_state(run_dir(out))


def test_sigterm_then_resume_matches_uninterrupted(dataset, export, reference, tmp_path):
  ref_results, (ref_state, ref_step) = reference
  out = str(tmp_path)
  with pytest.raises(loop.Preempted, match="rerun"):
    ft_run.finetune(export, [str(dataset / "event.csv")], out, config=tiny_config(),
                    on_step=_signal_at(5))  # lands after step 5: step 6 runs and is saved
  assert final_state(run_dir(out))[1] == 6
  res = ft_run.finetune(export, [str(dataset / "event.csv")], out, config=tiny_config())
  state, step = final_state(run_dir(out))
  assert step == ref_step == 12
  assert_same_tree(state, ref_state)
  assert res == ref_results


def test_crash_then_resume_matches_uninterrupted(dataset, export, reference, tmp_path):
  """A crash saves nothing: the rerun starts from the last epoch's checkpoint (step 8)."""
  ref_results, (ref_state, _) = reference
  out = str(tmp_path)
  with pytest.raises(RuntimeError, match="simulated crash"):
    ft_run.finetune(export, [str(dataset / "event.csv")], out, config=tiny_config(),
                    on_step=_crash_at(10))
  assert final_state(run_dir(out))[1] == 8
  res = ft_run.finetune(export, [str(dataset / "event.csv")], out, config=tiny_config())
  assert_same_tree(final_state(run_dir(out))[0], ref_state)
  assert res == ref_results


def test_damaged_checkpoint_is_set_aside_and_the_run_resumes_exactly(dataset, export, reference,
                                                                     tmp_path, caplog):
  """The crash leaves checkpoints 4 and 8; 8 is then damaged: the rerun sets it aside (kept,
  renamed), resumes from 4 and ends where the uninterrupted run did."""
  ref_results, (ref_state, _) = reference
  out = str(tmp_path)
  with pytest.raises(RuntimeError, match="simulated crash"):
    ft_run.finetune(export, [str(dataset / "event.csv")], out, config=tiny_config(),
                    on_step=_crash_at(10))
  truncate_arrays(run_dir(out), 8)
  with caplog.at_level("WARNING"):
    res = ft_run.finetune(export, [str(dataset / "event.csv")], out, config=tiny_config())
  assert_same_tree(final_state(run_dir(out))[0], ref_state)
  assert res == ref_results
  moved = os.listdir(os.path.join(run_dir(out), ckpt.DAMAGED_DIR))
  assert [m.split("-")[0] for m in moved] == ["8"]
  lines = [r.getMessage() for r in caplog.records if "does not restore" in r.getMessage()]
  assert len(lines) == 1 and "checkpoint 8 at" in lines[0] and "\n" not in lines[0]

  # The finished run, rerun: its config is checked against the newest checkpoint whose config
  # reads (12's is now garbage; the resumed run's 8 is used, nothing is moved), then returned
  # untrained.
  def damage_config(step):
    with open(os.path.join(run_dir(out), "checkpoints", str(step), "config", "metadata"),
              "w") as f:
      f.write("{not json")

  def rerun_warnings(phrase):
    """Reruns the finished run with its config: the same result, and the warnings naming
    ``phrase``."""
    caplog.clear()
    with caplog.at_level("WARNING"):
      assert ft_run.finetune(export, [str(dataset / "event.csv")], out,
                             config=tiny_config()) == res
    return [r.getMessage() for r in caplog.records if phrase in r.getMessage()]

  damage_config(12)
  lines = rerun_warnings("does not restore")
  assert len(lines) == 1 and "checkpoint 12 at" in lines[0]
  assert sorted(os.listdir(os.path.join(run_dir(out), "checkpoints"))) == ["12", "4", "8"]
  with pytest.raises(ValueError, match="finished with another config"):
    ft_run.finetune(export, [str(dataset / "event.csv")], out,
                    config=tiny_config(**{"optim.base_lr": 0.01}))
  # No config reads at all: the saved result comes back, with one line saying it is unchecked.
  damage_config(8)
  damage_config(4)
  lines = rerun_warnings("cannot be checked")
  assert len(lines) == 1 and "\n" not in lines[0]


def test_early_stopping_keeps_the_best_evaluation(dataset, export, tmp_path, monkeypatch):
  scores = iter([0.5, 0.7, 0.6, 0.6, 0.9])  # valid per epoch; patience 2 stops after epoch 4
  real = loop.evaluate
  calls = []

  def scripted(evaluator, params, stats, split):
    calls.append(len(split[0]))
    if len(calls) <= 4:
      return next(scores), 1.0
    return real(evaluator, params, stats, split)  # the test split: really scored

  monkeypatch.setattr(loop, "evaluate", scripted)
  out = str(tmp_path)
  cfg = tiny_config(**{"epochs": 6.0, "early_stop.patience": 2})
  ft_run.finetune(export, [str(dataset / "event.csv")], out, config=cfg)
  r = json.loads(open(os.path.join(run_dir(out), "result.json")).read())
  assert r["stopped_early"] and r["steps"] == 16 and r["best_step"] == 8
  assert r["valid_score"] == 0.7 and len(calls) == 5
  state, _ = final_state(run_dir(out))
  with ocp.CheckpointManager(os.path.join(run_dir(out), "checkpoints"),
                             options=ocp.CheckpointManagerOptions(read_only=True)) as m:
    at_best = m.restore(8, args=ocp.args.Composite(state=ocp.args.StandardRestore()))
  assert_same_tree(state["model"]["best_params"], at_best["state"]["train"]["model"]["params"])
  assert_same_tree(state["model"]["best_stats"], at_best["state"]["train"]["model"]["stats"])


def test_multilabel_task_reports_map(dataset, export, tmp_path):
  with open(dataset / "event.csv", newline="") as f:
    rows = list(csv.DictReader(f))
  with open(dataset / "pitch.csv", newline="") as f:
    pitch = {r["file_name"]: r["label"] for r in csv.DictReader(f)}
  for r in rows:
    r["file_name"] = str(dataset / r["file_name"])
    r["label"] = f"{r['label']},{pitch[os.path.relpath(r['file_name'], dataset)]}"
  path = tmp_path / "tags.csv"
  with open(path, "w", newline="") as f:
    w = csv.DictWriter(f, fieldnames=list(rows[0]))
    w.writeheader()
    w.writerows(rows)
  res = ft_run.finetune(export, [str(path)], str(tmp_path / "out"),
                        config=tiny_config(**{"epochs": 1.0, "augment.mixup": 0.5}))
  assert res["tags"]["metric"] == "mAP" and 0 < res["tags"]["mean"] <= 1


@pytest.mark.parametrize("norm", ["batchnorm", "none"])
def test_probe_head_starts_at_the_linear_probe(dataset, tiny_encoder, norm):
  """``head.init="probe"``: the state's head scores valid as the fitted probe does."""
  from dwm_jax.data import labeled
  from dwm_jax.evaluate import probe
  from dwm_jax.evaluate.finetuning import data
  from dwm_jax.train import mesh as mesh_lib
  task = labeled.load_task(str(dataset / "event.csv"))
  cfg = tiny_config(**{"head.init": "probe", "head.norm": norm})
  splits = data.split_task(task, 0)
  setup = ft_step.build(cfg, tiny_encoder, num_train=len(splits.train[0]),
                        num_classes=task.num_classes, multilabel=False)
  mesh = mesh_lib.data_mesh()
  ev = loop.Evaluator(setup, mesh, ft_step.jit_embed_windows(setup, mesh))
  enc = mesh_lib.put_replicated(tiny_encoder.params, mesh)
  head, stats = loop.probe_head(ev, enc, splits, seed=0)
  state = ft_step.init_state(setup, mesh, tiny_encoder.params, jax.random.key(0), head, stats)
  feats = {s: ev.clip_embeddings(enc, getattr(splits, s)[0]) for s in ("train", "valid")}
  clf = probe.fit_linear((feats["train"], splits.train[1]), (feats["valid"], splits.valid[1]),
                         seed=0, num_classes=task.num_classes)
  want = loop.score(clf.logits(feats["valid"]), splits.valid[1], False)
  got, loss = loop.evaluate(ev, state.params, state.stats, splits.valid)
  assert got == pytest.approx(want) and np.isfinite(loss)


@pytest.fixture
def no_compile(monkeypatch):
  def fail(*a, **k):
    raise AssertionError("compiled before the input was checked")
  monkeypatch.setattr(ft_step, "compile_step", fail)


def test_bad_csv_exits_2_before_compiling(dataset, export, tmp_path, capsys, no_compile):
  with open(dataset / "event.csv", newline="") as f:
    rows = list(csv.DictReader(f))
  for r in rows:
    r["file_name"] = str(dataset / r["file_name"])
  rows[0]["split"] = "dev"
  bad = tmp_path / "bad.csv"
  with open(bad, "w", newline="") as f:
    w = csv.DictWriter(f, fieldnames=list(rows[0]))
    w.writeheader()
    w.writerows(rows)
  assert cli.main(["--encoder", export, "--task", str(bad), "--out", str(tmp_path / "o")]) == 2
  err = capsys.readouterr().err
  assert "bad.csv" in err and "unknown split" in err and "Traceback" not in err


@pytest.mark.parametrize("flag, message", [
    ("--config.optim.layer_decay=1.5", "optim.layer_decay: must be in (0.0, 1.0]"),
    ("--config.batch_size=7", "batch_size: 7 is not divisible by the 2 devices"),
    ("--config.augment.freq_mask=99", "augment.freq_mask: 99 is wider than the encoder's 80"),
    ("--config.optim.lr=0.1", "unknown config field optim.lr"),
])
def test_bad_config_exits_2_naming_the_field(dataset, export, tmp_path, capsys, no_compile,
                                             flag, message):
  assert cli.main(["--encoder", export, "--task", str(dataset / "event.csv"), "--out",
                   str(tmp_path), flag]) == 2
  err = capsys.readouterr().err
  assert message in err and "Traceback" not in err


def test_missing_source_is_a_usage_error(tmp_path, capsys):
  assert cli.main(["--task", "x.csv", "--out", str(tmp_path)]) == 2
  assert "exactly one of --workdir and --encoder" in capsys.readouterr().err


def test_bucket_encoder_and_output_match_the_local_run(gcs, dataset, export, reference, capsys):
  """The export read from a ``gs://`` bucket, checkpoints and results written there (a real
  GCS-protocol server, ``tests/conftest.py:gcs``): the same scores as the local run."""
  from dwm_jax import paths
  bucket = gcs.make_bucket(f"finetune-{os.getpid()}")
  remote_export = f"{bucket}/enc.msgpack"
  paths.copy_file(export, remote_export)
  out = f"{bucket}/ft"
  res = ft_run.finetune(remote_export, [str(dataset / "event.csv")], out, config=tiny_config())
  assert res == reference[0]
  assert json.loads(paths.read_text(f"{out}/{ft_run.RESULTS_FILE}")) == reference[0]
  assert "| event |" in paths.read_text(f"{out}/{ft_run.TABLE_FILE}")
  assert "12" in paths.listdir(f"{out}/runs/event/seed_0/checkpoints")
  rows = paths.read_text(f"{out}/runs/event/seed_0/metrics.jsonl").splitlines()
  assert json.loads(rows[-1])["step"] >= 10
  capsys.readouterr()
  assert cli.main(["--encoder", remote_export, "--task", str(dataset / "event.csv"), "--out",
                   "gs://no-such-bucket-ft/out"]) == 2
  assert capsys.readouterr().err.strip().splitlines()[-1].startswith(
      "dwm-jax finetune: bucket gs://no-such-bucket-ft ")
