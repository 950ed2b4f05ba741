import csv
import json
import os

import pytest

from dwm_jax.evaluate import probe_cli


def _rows(path):
  with open(path, newline="") as f:
    return list(csv.DictReader(f))


def _write(path, rows):
  with open(path, "w", newline="") as f:
    w = csv.DictWriter(f, fieldnames=list(rows[0]))
    w.writeheader()
    w.writerows(rows)
  return str(path)


def test_probe_writes_json_and_table(dataset, export, tmp_path, capsys):
  out, cache = tmp_path / "out", tmp_path / "cache"
  args = ["--encoder", export, "--task", str(dataset / "event.csv"), "--task",
          str(dataset / "pitch.csv"), "--seeds", "2", "--out", str(out), "--cache", str(cache),
          "--max-epochs", "30"]
  assert probe_cli.main(args) == 0
  printed = capsys.readouterr().out
  res = json.loads((out / "probe.json").read_text())
  assert set(res) == {"event", "pitch"}
  for r in res.values():
    assert set(r) == {"metric", "mean", "std", "seeds"}
    assert r["metric"] == "accuracy" and r["seeds"] == 2 and 0 <= r["mean"] <= 1 and r["std"] >= 0
  assert "| event | accuracy |" in printed and (out / "probe.md").read_text() in printed
  cached = [f for _, _, fs in os.walk(cache) for f in fs if f.endswith(".npz")]
  assert sorted(f.split("-")[0] for f in cached) == ["event", "pitch"]
  # Second run reads the cache and reproduces the numbers exactly.
  assert probe_cli.main(args) == 0
  assert json.loads((out / "probe.json").read_text()) == res


def test_logmel_baseline(dataset, tmp_path):
  out = tmp_path / "out"
  assert probe_cli.main(["--baseline", "logmel", "--task", str(dataset / "timbre.csv"),
                         "--seeds", "1", "--out", str(out), "--max-epochs", "30"]) == 0
  assert json.loads((out / "probe.json").read_text())["timbre"]["metric"] == "accuracy"


def test_missing_files_are_skipped_and_counted(dataset, export, tmp_path, capsys):
  rows = _rows(dataset / "event.csv")
  rows[0]["file_name"] = "audio/does_not_exist.wav"
  rows[1]["file_name"] = "audio/also_missing.wav"
  for r in rows:
    r["file_name"] = str(dataset / r["file_name"])  # absolute: the CSV lives elsewhere
  task = _write(tmp_path / "holes.csv", rows)
  assert probe_cli.main(["--encoder", export, "--task", task, "--seeds", "1", "--no-cache",
                         "--max-epochs", "5"]) == 0
  out = capsys.readouterr().out
  assert "skipped files" in out and "2}" in out  # {reason: 2}


@pytest.mark.parametrize("edit, message", [
    ("split", "unknown split"),
    ("test_only_label", "absent from train"),
    ("column", "missing column"),
])
def test_bad_csv_is_a_clear_error(dataset, export, tmp_path, capsys, edit, message):
  rows = _rows(dataset / "event.csv")
  for r in rows:
    r["file_name"] = str(dataset / r["file_name"])
  if edit == "split":
    rows[0]["split"] = "dev"
  elif edit == "test_only_label":
    test_row = next(r for r in rows if r["split"] == "test")
    test_row["label"] = "never_in_train"
  else:
    rows = [{"file": r["file_name"], "label": r["label"], "split": r["split"]} for r in rows]
  task = _write(tmp_path / f"{edit}.csv", rows)
  assert probe_cli.main(["--encoder", export, "--task", task, "--no-cache"]) == 2
  err = capsys.readouterr().err
  assert message in err and f"{edit}.csv" in err


def test_nothing_to_probe(capsys):
  assert probe_cli.main(["--baseline", "logmel"]) == 2
  assert "nothing to probe" in capsys.readouterr().err


def test_evar_protocol_on_an_evar_fold_task_is_the_mean_of_leave_one_fold_out(dataset, tmp_path):
  """`--protocol evar --task esc50 --data-root DIR` on a 5-fold CSV in EVAR's layout, against
  the same leave-one-fold-out worked out by hand: clips zero-padded to ESC-50's 5 s, per-bin
  log-mel mean and std, EVAR's classifier on the other folds (no valid: its hold-out), tested
  on the fold, averaged over folds, then over seeds 42 and 43."""
  import shutil

  import numpy as np

  from dwm_jax.data.audio_io import load_audio
  from dwm_jax.data.log_mel import log_mel
  from dwm_jax.evaluate.evar_probe import EvarConfig, linear_eval
  root = tmp_path / "evar"
  shutil.copytree(dataset / "audio", root / "work" / "16k" / "esc50" / "audio")
  rows = _rows(dataset / "timbre.csv")
  (root / "evar" / "metadata").mkdir(parents=True)
  _write(root / "evar" / "metadata" / "esc50.csv",
         [{"file_name": r["file_name"], "fold": i % 5 + 1, "label": r["label"]}
          for i, r in enumerate(rows)])
  out = tmp_path / "out"
  assert probe_cli.main(["--baseline", "logmel", "--protocol", "evar", "--task", "esc50",
                         "--data-root", str(root), "--seeds", "2", "--max-epochs", "20",
                         "--out", str(out)]) == 0
  res = json.loads((out / "probe.json").read_text())["esc50"]

  feats = []
  for r in rows:
    wave = load_audio(dataset / r["file_name"])
    lm = log_mel(np.pad(wave, (0, 5 * 16000 - len(wave))))  # EVAR's unit: 5 s of ESC-50
    feats.append(np.concatenate([lm.mean(axis=1), lm.std(axis=1)]))
  x = np.stack(feats).astype(np.float32)
  classes = sorted({r["label"] for r in rows})
  y = np.array([classes.index(r["label"]) for r in rows])
  fold = np.arange(len(rows)) % 5 + 1
  config = EvarConfig(lr=3e-4, max_epochs=20)  # EVAR's lr for spectrogram features
  scores = np.array([[linear_eval((x[fold != k], y[fold != k]), None, (x[fold == k], y[fold == k]),
                                  seed=seed, num_classes=len(classes), config=config)
                      for k in range(1, 6)] for seed in (42, 43)])
  assert res["seeds"] == 2 and res["metric"] == "accuracy"
  assert res["mean"] == pytest.approx(scores.mean(axis=1).mean(), abs=1e-6)
  assert res["std"] == pytest.approx(scores.mean(axis=1).std(), abs=1e-6)
  assert res["folds"] == pytest.approx({str(k): scores[:, k - 1].mean() for k in range(1, 6)},
                                       abs=1e-6)
  assert "| esc50 (5 folds) | accuracy |" in (out / "probe.md").read_text()


def test_evar_protocol_needs_a_unit_for_tasks_evar_does_not_define(dataset, capsys):
  assert probe_cli.main(["--baseline", "logmel", "--protocol", "evar", "--task",
                         str(dataset / "event.csv")]) == 2
  assert "give --unit-sec" in capsys.readouterr().err
  assert probe_cli.main(["--baseline", "logmel", "--protocol", "evar", "--task", "tfds:x"]) == 2
  assert "for CSV tasks only" in capsys.readouterr().err


def test_evar_lr_comes_from_the_recipe(tmp_path):
  parse = lambda *a: probe_cli._parser().parse_args(["--protocol", "evar", *a])
  assert probe_cli.protocol_config(parse("--encoder", "e.msgpack")).lr == 3e-5  # M2D's
  assert probe_cli.protocol_config(parse("--baseline", "logmel")).lr == 3e-4
  (tmp_path / "config.json").write_text(json.dumps({"probe": {"evar_lr": 1e-4}}))
  assert probe_cli.protocol_config(parse("--workdir", str(tmp_path))).lr == 1e-4
  assert probe_cli.protocol_config(parse("--workdir", str(tmp_path), "--lr", "0.01")).lr == 0.01
  dwm = probe_cli.protocol_config(probe_cli._parser().parse_args([]))
  assert dwm.lr == 3e-3 and dwm.first_seed == 0
