"""EVAR's linear evaluation, one test per rule that can differ, against independent references
(torch's Adam and nn.Linear, sklearn's metrics and scaler) or values worked out by hand."""
import math
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dwm_jax.evaluate import evar_probe as ep

FAST = ep.EvarConfig(lr=3e-3, max_epochs=40)


def _blobs(n, seed, classes=4, dim=12, spread=1.0):
  rng = np.random.default_rng(seed)
  centers = np.random.default_rng(123).normal(size=(classes, dim)) * 2.0
  y = rng.integers(0, classes, n)
  return (centers[y] + spread * rng.normal(size=(n, dim))).astype(np.float32) + 20.0, y


def test_tie_rule_keeps_the_later_epoch_and_counts_patience_as_evar():
  """EarlyStopping.on_epoch_end by hand: best 0, wait 0; ``>=`` improves (wait 1), else stop
  when wait >= patience, then wait + 1."""
  scores = [0.5, 0.6, 0.6, 0.55, 0.6, 0.4, 0.4, 0.4, 0.9]
  best, wait, best_epoch, stopped_at = 0.0, 0, None, None
  for e, s in enumerate(scores):
    improved, best, wait, stop = ep.stop_rule(best, wait, jnp.float32(s), 3)
    best_epoch = e if improved else best_epoch
    if stop:
      stopped_at = e
      break
  assert best_epoch == 4  # the tie at epoch 4 wins over epochs 1 and 2 (a strict rule: 1)
  assert stopped_at == 7  # three epochs after the best without reaching it; 0.9 never seen
  never = [ep.stop_rule(0.9, w, jnp.float32(0.1), 0)[3] for w in (0, 5, 50)]
  assert not any(never)   # patience 0: EVAR's early_stopping=False, all epochs run


def test_fit_keeps_the_last_of_tied_epochs():
  """A one-clip valid split scores 1 from early on: every later epoch ties, so EVAR's rule keeps
  the last epoch and never stops (a strict rule keeps the first and stops after patience)."""
  tr, va = _blobs(120, 0, spread=0.3), _blobs(1, 1, spread=0.3)
  config = ep.EvarConfig(lr=1e-2, max_epochs=30, patience=3)
  _, info = ep.fit(tr, va, seed=42, num_classes=4, config=config)
  assert info["valid_scores"][3] == 1.0  # ties from epoch 4 on at the latest
  assert info["epochs"] == 30 and info["best_epoch"] == 29


def test_holdout_redraws_until_every_class_is_in_valid():
  y = np.array([0] * 40 + [1] * 40 + [2] * 18 + [3] * 2)  # class 3: 2 of 100 clips
  seed = next(s for s in range(100)  # a seed whose first draw misses class 3
              if 3 not in y[np.random.default_rng(s).permutation(100)[:10]])
  train, valid = ep.holdout_all_classes(y, seed, num_classes=4)
  assert len(valid) == 10 == math.ceil(0.1 * 100) and len(train) == 90  # sklearn's sizes
  assert sorted(np.r_[train, valid]) == list(range(100))
  assert set(y[valid]) == {0, 1, 2, 3}
  rng = np.random.default_rng(seed)
  draws = [rng.permutation(100) for _ in range(100)]
  first_ok = next(d for d in draws if set(y[d[:10]]) == {0, 1, 2, 3})
  np.testing.assert_array_equal(valid, first_ok[:10])  # the first draw that holds all classes
  multi = np.zeros((30, 3), np.float32)
  multi[:, 0], multi[7, 1], multi[::2, 2] = 1, 1, 1
  _, valid = ep.holdout_all_classes(multi, 1, num_classes=3)
  assert len(valid) == 3 and multi[valid].sum(axis=0).min() > 0
  with pytest.raises(ValueError, match="holds all 5 classes in 100 draws"):
    ep.holdout_all_classes(np.arange(20) % 5, 0, num_classes=5)  # 2 valid rows, 5 classes


def test_fit_standardizes_with_all_of_train_before_the_holdout():
  sk = pytest.importorskip("sklearn.preprocessing")
  x, y = _blobs(60, 3)
  x[:, 5] = 7.0  # a constant feature: scale 1
  clf, info = ep.fit((x, y), None, seed=42, num_classes=4, config=FAST)
  ref = sk.StandardScaler().fit(x)
  np.testing.assert_allclose(clf.mean, ref.mean_, rtol=1e-12)
  np.testing.assert_allclose(clf.std, ref.scale_, rtol=1e-12)
  assert clf.std[5] == 1.0
  assert info["batch"] == 60  # min(200, n) with n counted before the 6-clip hold-out


def _torch_epoch(torch, x, y, w, b, perm, batch, lr, multilabel, weight_decay):
  """One epoch of TorchMLPClassifier2's training loop (its loss, Adam and batching) in torch."""
  lin = torch.nn.Linear(x.shape[1], w.shape[1])
  with torch.no_grad():
    lin.weight.copy_(torch.tensor(np.asarray(w).T))
    lin.bias.copy_(torch.tensor(np.asarray(b)))
  opt = torch.optim.Adam(lin.parameters(), lr=lr, betas=(0.9, 0.999), eps=1e-8,
                         weight_decay=weight_decay)
  xt, yt = torch.tensor(x), torch.tensor(y)
  for start in range(0, len(perm), batch):  # drop_last=False: the last batch is partial
    ids = torch.tensor(perm[start:start + batch])
    out = lin(xt[ids])
    if multilabel:
      loss = torch.nn.functional.binary_cross_entropy(torch.sigmoid(out), yt[ids])
    else:
      onehot = torch.nn.functional.one_hot(yt[ids], w.shape[1]).float()
      loss = -torch.mean(onehot * torch.log_softmax(out, dim=-1))
    opt.zero_grad()
    loss.backward()
    opt.step()
  return lin.weight.detach().numpy().T, lin.bias.detach().numpy()


@pytest.mark.parametrize("multilabel", [False, True])
def test_epoch_matches_torch_with_a_partial_last_batch(multilabel):
  """250 rows in batches of 200: two Adam steps, the second on 50 rows averaged over 50. (A
  weight decay far above EVAR's 1e-8 shows that it is torch's L2 term, not AdamW's.)"""
  torch = pytest.importorskip("torch")
  x, y = _blobs(250, 4)
  x = (x - x.mean(0)) / x.std(0)
  if multilabel:
    y = np.stack([y == 0, y == 1, (y == 2) | (y == 3)], axis=1).astype(np.float32)
  c = 3 if multilabel else 4
  params = ep.torch_linear_init(jax.random.key(0), x.shape[1], c)
  perm = np.random.default_rng(0).permutation(250)
  tx = ep._adam(1e-2, 0.5)
  p, _ = ep.train_epoch(params, tx.init(params), jnp.asarray(perm), jnp.asarray(x),
                        jnp.asarray(y), batch=200, tx=tx, multilabel=multilabel)
  w, b = _torch_epoch(torch, x, y, params["w"], params["b"], perm, 200, 1e-2, multilabel, 0.5)
  np.testing.assert_allclose(p["w"], w, atol=2e-6)
  np.testing.assert_allclose(p["b"], b, atol=2e-6)
  # The partial batch is averaged over its own rows: padded as a full-batch mean, it differs.
  full = _torch_epoch(torch, x, y, params["w"], params["b"], np.r_[perm, perm[:150]], 200,
                      1e-2, multilabel, 0.5)
  assert np.abs(full[0] - w).max() > 1e-4


def test_init_is_torch_linear_default():
  torch = pytest.importorskip("torch")
  p = ep.torch_linear_init(jax.random.key(1), 400, 2000)
  bound = 1 / math.sqrt(400)  # kaiming_uniform(a=sqrt(5)) and the bias rule of nn.Linear
  ref = torch.nn.Linear(400, 2000)
  for ours, theirs in ((p["w"], ref.weight), (p["b"], ref.bias)):
    ours, theirs = np.asarray(ours), theirs.detach().numpy()
    assert ours.shape == theirs.T.shape
    for a in (ours, theirs):  # both uniform on [-bound, bound]
      assert np.abs(a).max() <= bound and np.abs(a).max() > 0.99 * bound
      assert np.std(a) == pytest.approx(bound / math.sqrt(3), rel=0.05)


def test_map_is_sklearns_mean_over_every_class():
  metrics = pytest.importorskip("sklearn.metrics")
  rng = np.random.default_rng(0)
  scores = rng.integers(0, 5, (60, 6)).astype(np.float32) / 4  # ties on purpose
  targets = (rng.random((60, 6)) < 0.3).astype(np.float32)
  targets[:, 4] = 0  # no positive: sklearn's AP is 0 and it still counts in the mean
  with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    ref = metrics.average_precision_score(targets, scores, average=None)
  ours = np.asarray(ep.average_precisions(jnp.asarray(scores), jnp.asarray(targets)))
  np.testing.assert_allclose(ours, ref, atol=1e-6)
  assert ours[4] == 0.0
  logits = np.log(scores + 0.1) - np.log(1.1 - scores)  # sigmoid(logits) = (s + .1) / 1.2
  got = float(ep.metric(jnp.asarray(logits), jnp.asarray(targets), True))
  assert got == pytest.approx(ref.mean(), abs=1e-6)  # the mean over all 6 classes


def test_accuracy_and_seeds_are_reproducible():
  tr, va, te = _blobs(200, 0, spread=2.0), _blobs(40, 1, spread=2.0), _blobs(100, 2, spread=2.0)
  a = ep.linear_eval(tr, va, te, seed=42, config=FAST)
  assert a == ep.linear_eval(tr, va, te, seed=42, config=FAST)
  assert 0.5 < a <= 1.0
  assert ep.EvarConfig.first_seed == 42
