"""dwm-jax's ``probe --protocol evar`` against EVAR's own code, on embeddings dwm-jax writes.

  python experiments/evar_parity/make_tasks.py /tmp/evar_tasks
  python experiments/evar_parity/run.py --evar CHECKOUT/eval-audio-repr \\
      --general-learning CHECKOUT/general-learning --model /tmp/dwm_quickstart --model logmel \\
      --task /tmp/evar_tasks/words.csv --task /tmp/evar_tasks/words_folds.csv \\
      --unit-sec words=1.0 --unit-sec words_folds=1.0 --seeds 10

EVAR's code is loaded from the two checkouts (``evar_side.py``: torch, scikit-learn, pandas).
For every model (a workdir or export file, or ``logmel``), task, seed (42, 43, ...) and fold,
on the same embeddings (dwm-jax's, of the seed's unit crops; ``--unit-sec TASK=S``, EVAR's own
for its task names, else whole clips):

1. EVAR: its ``_one_linear_eval`` (``TorchMLPClassifier2``) and test score; hooks record its
   initial weights, every epoch's shuffle, the tensors it fits and its valid score per epoch.
2. replay: dwm-jax's ``evar_probe.fit_epochs`` from EVAR's initial weights, on its tensors, with
   its shuffles. Same rules, same draws: every epoch's valid score, the epochs run, the best
   epoch and the test score must be EVAR's; a rule that differs shows as a diverging epoch.
3. dwm-jax: ``evar_probe.linear_eval`` with its own random streams (init, shuffles, hold-out),
   which agrees with 1 in distribution over seeds: the tolerance on the difference of the two
   means is 3 standard errors from the seed-to-seed spreads, ``3 sqrt((s1^2 + s2^2) / n)``.
4. this project's default probe (``--protocol dwm``, seeds 0..), for scale.

Also: dwm-jax's standardization against sklearn's ``StandardScaler`` on every train split,
EVAR's ``BaseRawAudioDataset`` crop against ``evar_tasks.unit_clip`` on the first 64 clips of
every task with a unit (test crops: equal log-mels; train crops: windows inside the clip), and
both classifiers on a separable two-class toy task (EVAR's one-column targets).
Outputs (``--out``): ``parity.csv`` (one row per model, task, seed and fold), ``summary.md``
(printed) and ``summary.json``.
"""
from __future__ import annotations

import argparse
import csv
import json
import logging
import math
import os
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
for p in (ROOT, os.path.dirname(os.path.abspath(__file__))):
  if p not in sys.path:
    sys.path.insert(0, p)

log = logging.getLogger("evar_parity")


def _model(spec: str):
  from dwm_jax.evaluate.encoder import load_encoder
  return "logmel" if spec == "logmel" else load_encoder(spec)


def replay(rec, *, lr: float, batch: int, multilabel: bool, patience: int = 20,
           max_epochs: int = 200) -> dict:
  """dwm-jax's epochs from EVAR's recorded draws; its test score and how it followed EVAR's."""
  import jax.numpy as jnp
  from dwm_jax.evaluate import evar_probe as ep
  (x, y), (xv, yv), (xt, yt) = rec.tensors[:3]
  labels = (lambda t: t) if multilabel else (lambda t: np.argmax(t, axis=-1))
  params = {"w": jnp.asarray(rec.init["mlp.0.weight"].T), "b": jnp.asarray(rec.init["mlp.0.bias"])}
  best, best_epoch, epochs, hist = ep.fit_epochs(
      params, jnp.asarray(np.stack(rec.perms)), jnp.asarray(x), jnp.asarray(labels(y)),
      jnp.asarray(xv), jnp.asarray(labels(yv)), batch=batch, lr=lr, weight_decay=1e-8,
      max_epochs=max_epochs, patience=patience, multilabel=multilabel)
  epochs = int(epochs)
  hist = np.asarray(hist)[:epochs]
  n = min(epochs, len(rec.valid_scores))
  test = float(ep.metric(ep.logits(best, jnp.asarray(xt)), jnp.asarray(labels(yt)), multilabel))
  return {"test": test, "epochs": epochs, "best_epoch": int(best_epoch),
          "valid_max_diff": float(np.max(np.abs(hist[:n] - np.asarray(rec.valid_scores[:n])),
                                         initial=0.0))}


def scaler_diff(x: np.ndarray) -> float:
  """Largest difference between dwm-jax's standardized ``x`` and sklearn's."""
  from sklearn.preprocessing import StandardScaler
  from dwm_jax.evaluate.evar_probe import scaler_stats
  mean, scale = scaler_stats(x)
  ours = ((x - mean) / scale).astype(np.float32)
  return float(np.max(np.abs(ours - StandardScaler().fit(x).transform(x))))


def crop_check(evar, spec: str, unit_sec: float, limit: int = 64) -> dict:
  """EVAR's crop of the first ``limit`` clips of a CSV task against dwm-jax's."""
  from dwm_jax import paths
  from dwm_jax.data import evar_tasks
  from dwm_jax.data.audio_io import load_audio
  from dwm_jax.data.log_mel import log_mel
  if evar_tasks.is_task_name(spec):
    return {}
  rows = list(csv.DictReader(open(spec, newline="")))[:limit]
  unit = int(16000 * unit_sec)
  test_diff, windows_ok = 0.0, True
  for r in rows:
    wave = load_audio(paths.join(paths.parent(spec), r["file_name"]), 16000)
    theirs = log_mel(evar.unit_crop(wave, unit, random_crop=False))
    test_diff = max(test_diff, float(np.max(np.abs(theirs - evar_tasks.unit_clip(wave, unit)))))
    crop = evar.unit_crop(wave, unit, random_crop=True)
    if len(wave) > unit:  # a window wave[s:s + unit] with 0 <= s < len - unit
      starts = np.flatnonzero(wave[:len(wave) - unit] == crop[0])
      windows_ok &= any(np.array_equal(wave[s:s + unit], crop) for s in starts)
  return {"clips": len(rows), "test_crop_max_diff": test_diff, "random_crops_in_range": windows_ok}


def commit_of(checkout: str) -> str:
  import subprocess
  r = subprocess.run(["git", "-C", checkout, "rev-parse", "HEAD"], capture_output=True, text=True)
  return r.stdout.strip() or "unknown"


def two_class_check(evar, seeds: list[int]) -> dict:
  """A separable two-class toy task (200 / 60 / 140 clips, 8 features, lr 3e-3): EVAR's
  classifier one-hot-encodes two classes as one column (sklearn's LabelBinarizer)."""
  from dwm_jax.evaluate import evar_probe as ep
  rng = np.random.default_rng(0)
  x = rng.normal(size=(400, 8)).astype(np.float32)
  y = (x[:, 0] > 0).astype(np.int64)
  tr, va, te = (x[:200], y[:200]), (x[200:260], y[200:260]), (x[260:], y[260:])
  theirs = [evar.linear_eval(*tr, *va, *te, lr=3e-3, seed=s, classes=[0, 1]) for s in seeds]
  ours = [ep.linear_eval(tr, va, te, seed=s, config=ep.EvarConfig(lr=3e-3)) for s in seeds]
  return {"evar_mean": float(np.mean(theirs)), "dwm_jax_mean": float(np.mean(ours)),
          "seeds": len(seeds)}


def run_task(evar, model, task, seeds: list[int], *, lr: float, cache: str | None) -> list[dict]:
  """Rows of ``parity.csv`` for one task."""
  from dwm_jax.evaluate import evar_probe as ep
  from dwm_jax.evaluate.probe import ProbeConfig, splits_of, task_features
  from evar_side import Recorder
  rows = []
  folds = task.fold_ids or [None]
  config = ep.EvarConfig(lr=lr)
  for seed in seeds:
    cropped = task.for_seed(seed)
    feats = task_features(model, cropped, cache_dir=cache)
    for j, fold in enumerate(folds):
      (x, y), valid, (xt, yt) = splits_of(cropped, feats, fold)
      xv, yv = valid if valid is not None else (None, None)
      t0 = time.perf_counter()
      with Recorder(evar) as rec:  # lineareval seeds once per run, before its first fold
        theirs = evar.linear_eval(x, y, xv, yv, xt, yt, lr=lr, seed=seed if j == 0 else None,
                                  classes=task.classes)
      t1 = time.perf_counter()
      ours = ep.linear_eval((x, y), valid, (xt, yt), seed=seed, multilabel=task.multilabel,
                            num_classes=task.num_classes, config=config)
      t2 = time.perf_counter()
      again = replay(rec, lr=lr, batch=min(200, len(x)), multilabel=task.multilabel)
      dwm = ProbeConfig().score((x, y), valid, (xt, yt), seed=seed - seeds[0],
                                multilabel=task.multilabel, num_classes=task.num_classes)
      rows.append({
          "task": task.name, "seed": seed, "fold": "" if fold is None else fold,
          "n_train": len(x), "n_valid": len(rec.tensors[1][0]), "n_test": len(xt),
          "evar": theirs, "dwm_jax_evar": ours, "replay": again["test"],
          "replay_same_epochs": again["epochs"] == len(rec.perms),
          "replay_same_best": again["best_epoch"] == rec.best_epoch,
          "replay_valid_max_diff": again["valid_max_diff"], "evar_epochs": len(rec.perms),
          "dwm_protocol": dwm, "scaler_max_diff": scaler_diff(x),
          "evar_seconds": t1 - t0, "dwm_jax_seconds": t2 - t1})
      log.info("%s seed %d fold %s: EVAR %.4f, replay %.4f, dwm-jax %.4f, dwm %.4f", task.name,
               seed, fold, theirs, again["test"], ours, dwm)
  return rows


def summarize(rows: list[dict]) -> list[dict]:
  """Per model and task: means over seeds (a seed's score: its mean over folds) and the checks."""
  out = []
  for model, task in dict.fromkeys((r["model"], r["task"]) for r in rows):
    rs = [r for r in rows if (r["model"], r["task"]) == (model, task)]
    seeds = sorted({r["seed"] for r in rs})
    per_seed = lambda col: np.array([np.mean([r[col] for r in rs if r["seed"] == s])
                                     for s in seeds])
    e, j, d = per_seed("evar"), per_seed("dwm_jax_evar"), per_seed("dwm_protocol")
    tol = 3 * math.sqrt((e.std() ** 2 + j.std() ** 2) / len(seeds))
    replay_same = [r["replay_same_epochs"] and r["replay_same_best"] and
                   abs(r["replay"] - r["evar"]) < 1e-6 for r in rs]
    out.append({
        "model": model, "task": task, "seeds": len(seeds),
        "folds": len({r["fold"] for r in rs}), "evar_mean": e.mean(), "evar_std": e.std(),
        "dwm_jax_mean": j.mean(), "dwm_jax_std": j.std(), "diff": j.mean() - e.mean(),
        "tolerance": tol, "within": abs(j.mean() - e.mean()) <= tol,
        "replay_identical": f"{sum(replay_same)}/{len(rs)}",
        "replay_valid_max_diff": max(r["replay_valid_max_diff"] for r in rs),
        "dwm_protocol_mean": d.mean(), "dwm_protocol_std": d.std(),
        "scaler_max_diff": max(r["scaler_max_diff"] for r in rs),
        "evar_seconds_per_fit": np.mean([r["evar_seconds"] for r in rs]),
        "dwm_jax_seconds_per_fit": np.mean([r["dwm_jax_seconds"] for r in rs])})
  return out


def render(summary: list[dict], meta: dict) -> str:
  pct = lambda m, s: f"{100 * m:.1f} ± {100 * s:.1f}"
  lines = [f"### dwm-jax `--protocol evar` vs EVAR's code ({meta['seeds']} seeds from 42; "
           "accuracy or mAP %, mean ± std over seeds)", "",
           "| model | task | EVAR (its code) | dwm-jax evar | Δ | tolerance (3 s.e.) | replay "
           "identical | dwm protocol |", "|---|---|---:|---:|---:|---:|---:|---:|"]
  for s in summary:
    task = s["task"] + (f" ({s['folds']} folds)" if s["folds"] > 1 else "")
    lines.append(f"| {s['model']} | {task} | {pct(s['evar_mean'], s['evar_std'])} | "
                 f"{pct(s['dwm_jax_mean'], s['dwm_jax_std'])} | {100 * s['diff']:+.1f} | "
                 f"{100 * s['tolerance']:.1f} | {s['replay_identical']} | "
                 f"{pct(s['dwm_protocol_mean'], s['dwm_protocol_std'])} |")
  return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--evar", required=True, help="checkout of nttcslab/eval-audio-repr")
  p.add_argument("--general-learning", required=True, help="checkout of daisukelab/general-learning")
  p.add_argument("--model", action="append", default=[], help="workdir, export file or logmel")
  p.add_argument("--task", action="append", default=[], help="task CSV or EVAR task name")
  p.add_argument("--data-root", help="EVAR's root folder, for EVAR task names")
  p.add_argument("--unit-sec", action="append", default=[], metavar="TASK=SECONDS")
  p.add_argument("--synthetic", type=int, default=0, help="also the synthetic tasks on N clips")
  p.add_argument("--seeds", type=int, default=10)
  p.add_argument("--lr", type=float, default=None, help="default: 3e-5 (M2D), 3e-4 (logmel)")
  p.add_argument("--cache", default=None, help="embedding cache folder")
  p.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results"))
  args = p.parse_args(argv)
  logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
  log.setLevel(logging.INFO)  # EVAR's classifier logs every epoch at INFO
  import torch
  torch.set_num_threads(1)  # EVAR's fits one at a time, on a shared machine
  from dwm_jax.data import evar_tasks, labeled
  from evar_side import Evar
  evar = Evar(args.evar, args.general_learning)
  units = dict(item.split("=") for item in args.unit_sec)

  def unit(spec):
    stem = os.path.splitext(os.path.basename(spec))[0]
    if stem in units:
      return float(units[stem])
    found = evar_tasks.find(spec)
    return found[1].unit_sec if found else None

  tasks = labeled.load_tasks(args.task, synthetic=args.synthetic, data_root=args.data_root,
                             unit_sec=unit)
  checks = {spec: crop_check(evar, spec, unit(spec)) for spec in args.task if unit(spec)}
  seeds = list(range(42, 42 + args.seeds))
  commits = {"evar_commit": commit_of(args.evar),  # the code under test, as the run starts
             "general_learning_commit": commit_of(args.general_learning),
             "dwm_jax_commit": commit_of(ROOT)}
  rows = []
  t0 = time.perf_counter()
  for spec in args.model or ["logmel"]:
    model = _model(spec)
    lr = args.lr or (3e-4 if spec == "logmel" else 3e-5)
    for task in tasks:
      for r in run_task(evar, model, task, seeds, lr=lr, cache=args.cache):
        rows.append({"model": os.path.basename(spec.rstrip("/")), "lr": lr, **r})
  summary = summarize(rows)
  meta = {"seeds": args.seeds, **commits,
          "crop_checks": checks, "two_class_check": two_class_check(evar, seeds[:3]),
          "seconds": time.perf_counter() - t0}
  table = render(summary, meta)
  print(table)
  print(json.dumps({k: meta[k] for k in ("crop_checks", "two_class_check")}, indent=1))
  os.makedirs(args.out, exist_ok=True)
  with open(os.path.join(args.out, "parity.csv"), "w", newline="") as f:
    w = csv.DictWriter(f, fieldnames=list(rows[0]))
    w.writeheader()
    w.writerows(rows)
  with open(os.path.join(args.out, "summary.md"), "w") as f:
    f.write(table)
  with open(os.path.join(args.out, "summary.json"), "w") as f:
    json.dump({"meta": meta, "summary": summary}, f, indent=1, default=float)
  return 0


if __name__ == "__main__":
  sys.exit(main())
