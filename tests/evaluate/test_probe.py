import numpy as np
import pytest

from dwm_jax.evaluate.probe import (ProbeConfig, average_precision, linear_probe,
                                    mean_average_precision, probe_seeds)

FAST = ProbeConfig(max_epochs=100, patience=10)


def _blobs(n, seed, classes=4, dim=24, spread=1.0):
  rng = np.random.default_rng(seed)
  centers = np.random.default_rng(123).normal(size=(classes, dim)) * 1.5
  y = rng.integers(0, classes, n)
  return (centers[y] + spread * rng.normal(size=(n, dim))).astype(np.float32) + 50.0, y


def test_separable_task_high_accuracy():
  tr, va, te = _blobs(200, 0), _blobs(60, 1), _blobs(200, 2)
  assert linear_probe(tr, va, te, seed=0, config=FAST) > 0.95


def _teacher(n, seed, classes=4, dim=24):
  """Gaussian features labelled by a fixed random linear teacher: separable, no clusters."""
  x = np.random.default_rng(seed).normal(size=(n, dim)).astype(np.float32)
  w = np.random.default_rng(99).normal(size=(dim, classes))
  return x, np.argmax(x @ w, axis=1)


def test_teacher_task_learnable():
  assert linear_probe(_teacher(800, 0), _teacher(200, 1), _teacher(300, 2), seed=0) > 0.85


def test_shuffled_labels_stay_at_chance():
  """Train and valid labels shuffled: nothing to learn, so no leakage means ~25% on test."""
  te = _teacher(500, 2)
  accs = []
  for s in range(3):
    rng = np.random.default_rng(10 + s)
    tr, va = _teacher(300, 0), _teacher(100, 1)
    tr = (tr[0], rng.permutation(tr[1]))
    va = (va[0], rng.permutation(va[1]))
    accs.append(linear_probe(tr, va, te, seed=s, config=FAST))
  assert 0.15 < np.mean(accs) < 0.35, accs


def test_deterministic_and_seeds():
  tr, va, te = _blobs(100, 0, spread=3.0), _blobs(40, 1, spread=3.0), _blobs(100, 2, spread=3.0)
  a = linear_probe(tr, va, te, seed=3, config=FAST)
  assert a == linear_probe(tr, va, te, seed=3, config=FAST)
  res = probe_seeds(tr, va, te, seeds=2, config=FAST)
  assert res["metric"] == "accuracy" and res["seeds"] == 2 and 0 <= res["mean"] <= 1


def test_no_valid_split_holds_out():
  tr, te = _blobs(200, 0), _blobs(100, 2)
  empty = (np.zeros((0, 24), np.float32), np.zeros((0,), int))
  assert linear_probe(tr, empty, te, seed=0, config=FAST) > 0.9


def test_multilabel_map():
  rng = np.random.default_rng(0)

  def split(n):
    x = rng.normal(size=(n, 16)).astype(np.float32)
    return x, (x[:, :3] > 0.3).astype(np.float32)  # 3 labels, each readable off one feature

  res = probe_seeds(split(200), split(60), split(200), seeds=1, multilabel=True)
  assert res["metric"] == "mAP" and res["mean"] > 0.9


def test_average_precision_matches_sklearn():
  sk = pytest.importorskip("sklearn.metrics")
  rng = np.random.default_rng(0)
  for _ in range(5):
    s = rng.integers(0, 6, 40).astype(float)  # ties on purpose
    y = rng.random(40) < 0.3
    y[0] = True
    assert average_precision(s, y) == pytest.approx(sk.average_precision_score(y, s))
  scores, targets = rng.normal(size=(30, 4)), rng.random((30, 4)) < 0.4
  targets[:, 3] = False  # a class without positives is left out, not scored 0
  want = np.mean([sk.average_precision_score(targets[:, c], scores[:, c]) for c in range(3)])
  assert mean_average_precision(scores, targets) == pytest.approx(want)


def test_bad_input():
  tr, va, te = _blobs(50, 0), _blobs(20, 1), _blobs(20, 2)
  bad = tr[0].copy()
  bad[0, 0] = np.nan
  with pytest.raises(ValueError, match="NaN"):
    linear_probe((bad, tr[1]), va, te, seed=0)
  with pytest.raises(ValueError, match="class index"):
    linear_probe(tr, va, (te[0], te[1] + 10), seed=0, num_classes=4)
  with pytest.raises(ValueError, match="labels"):
    linear_probe((tr[0], tr[1][:10]), va, te, seed=0)
