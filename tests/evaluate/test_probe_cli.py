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
