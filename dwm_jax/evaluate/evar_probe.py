"""EVAR's linear evaluation, rule by rule: ``lineareval.py`` with ``TorchMLPClassifier2``.

EVAR (``nttcslab/eval-audio-repr``) runs ``lineareval.py CONFIG TASK --seed S``: its
``_one_linear_eval`` fits ``TorchMLPClassifier2(hidden_layer_sizes=(), max_iter=200,
learning_rate_init=lr_lineareval, early_stopping=True, n_iter_no_change=early_stop_epochs,
standard_scaler=True, mixup=False)`` (``MLP/torch_mlp_clf2.py`` of ``daisukelab/general-learning``)
on the frozen embeddings and scores the test split. Reproduced here:

- standardization: sklearn's ``StandardScaler`` fitted on the whole train split, before any
  hold-out (float64 statistics; a constant feature keeps scale 1);
- hold-out: a split without valid clips holds out ``ceil(0.1 n)`` train clips, drawn again (up to
  100 times) until they contain every class of train (``train_test_sure_split``);
- classifier: one ``nn.Linear(D, C)`` with torch's default init, weight and bias ~ U(+-1/sqrt(D));
- loss: single-label ``-mean(onehot * log_softmax)`` over ``[B, C]`` (cross-entropy / C);
  multi-label binary cross-entropy of the sigmoid (here in its stable logits form, which differs
  only where float32 rounds a probability to 0 or 1 and both gradients are below 6e-8);
- optimizer: ``torch.optim.Adam(lr, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-8)``, the L2
  term added to the gradient of weight and bias; lr: the encoder recipe's (M2D: 3e-5);
- batches: ``min(200, n)`` rows, ``n`` counted before the hold-out; reshuffled every epoch; the
  last batch is partial (``drop_last=False``) and averaged over its own rows;
- epochs: 200, early-stopped on the valid score: an epoch is the best when its score is ``>=``
  the best so far (ties go to the later epoch; the best starts at 0), training stops at the
  ``patience``-th (20th) epoch after the best that does not reach it, and the best epoch's
  weights are tested;
- scores: accuracy of the argmax of the sigmoid; mAP: sklearn's ``average_precision_score`` of
  the sigmoid per class, averaged over every class of train (a class without a positive counts
  0, sklearn's value);
- seeds 42, 43, ... (lineareval's ``--seed``).

A fit is one jitted program: the epochs, the valid scores and the early stopping run on the
device in a ``while_loop``, with no host round trip per epoch. The random streams are JAX's, not
torch's, so a seed draws another (equally likely) init, shuffle and hold-out than EVAR's; the
agreement with EVAR's own code is measured over seeds (``experiments/evar_parity/``).
"""
from __future__ import annotations

import dataclasses
import functools
import logging
import math
from typing import ClassVar

import jax
import jax.numpy as jnp
import numpy as np
import optax

from dwm_jax.evaluate.probe import LinearClassifier, Split, check_split

log = logging.getLogger(__name__)

_HIGHEST = jax.lax.Precision.HIGHEST  # f32 matmuls as torch's (no TF32 on GPUs)


@dataclasses.dataclass(frozen=True)
class EvarConfig:
  """EVAR's linear-evaluation settings (defaults: ``lineareval.py`` with ``config/m2d.yaml``)."""
  lr: float = 3e-5             # m2d.yaml lr_lineareval (EVAR's other encoders: 3e-4)
  max_epochs: int = 200        # lineareval.py: epochs or 200
  patience: int = 20           # m2d.yaml early_stop_epochs; 0: no early stopping
  weight_decay: float = 1e-8   # TorchMLPClassifier2 alpha: Adam's L2 term
  max_batch: int = 200         # TorchMLPClassifier2 batch_size='auto': min(200, n)
  valid_fraction: float = 0.1  # validation_fraction of the hold-out
  holdout_tries: int = 100     # train_test_sure_split n_attempt
  first_seed: ClassVar[int] = 42
  name: ClassVar[str] = "evar"

  def score(self, train: Split, valid: Split | None, test: Split, *, seed: int,
            multilabel: bool, num_classes: int) -> float:
    return linear_eval(train, valid, test, seed=seed, multilabel=multilabel,
                       num_classes=num_classes, config=self)


def scaler_stats(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """sklearn ``StandardScaler`` on ``x: [n, D]``: ``(mean, scale)`` float64 ``[D]``; a feature
  sklearn finds constant (variance within float64 rounding of 0) keeps scale 1."""
  x = np.asarray(x, np.float64)
  mean, var = x.mean(axis=0), x.var(axis=0)
  n, eps = len(x), np.finfo(np.float64).eps
  constant = var <= n * eps * var + (n * mean * eps) ** 2  # sklearn's _is_constant_feature
  return mean, np.where(constant, 1.0, np.sqrt(var))


def class_presence(y: np.ndarray, num_classes: int) -> np.ndarray:
  """``bool [C]``: classes with an example in ``y`` (``[n]`` indices or ``[n, C]`` multi-hot)."""
  y = np.asarray(y)
  if y.ndim == 2:
    return y.sum(axis=0) > 0
  return np.bincount(y, minlength=num_classes) > 0


def holdout_all_classes(y: np.ndarray, seed: int, *, num_classes: int, fraction: float = 0.1,
                        tries: int = 100) -> tuple[np.ndarray, np.ndarray]:
  """EVAR's hold-out (``train_test_sure_split``): ``(train rows, valid rows)`` of ``y``.

  ``ceil(fraction n)`` rows (sklearn's ``train_test_split`` size) drawn at random, drawn again
  until every class present in ``y`` is present among them; ValueError after ``tries`` draws.
  """
  n = len(y)
  nv = math.ceil(fraction * n)
  if not 0 < nv < n:
    raise ValueError(f"cannot hold out {fraction:.0%} of {n} train examples")
  want = class_presence(y, num_classes)
  rng = np.random.default_rng(seed)
  for _ in range(tries):
    order = rng.permutation(n)
    if np.array_equal(class_presence(y[order[:nv]], num_classes), want):
      return order[nv:], order[:nv]
  raise ValueError(f"no valid split of {nv} of the {n} train examples holds all "
                   f"{int(want.sum())} classes in {tries} draws (EVAR's hold-out rule); "
                   f"give the task a valid split")


def stop_rule(best, wait, score, patience: int):
  """EVAR's ``EarlyStopping.on_epoch_end`` (objective max) after one epoch's valid ``score``.

  Returns ``(improved, best, wait, stop)``: the epoch is the best when ``score >= best``
  (``wait`` back to 1); otherwise training stops if ``wait >= patience`` (``patience`` 0: never),
  and ``wait`` grows by one. Start from ``best=0, wait=0``.
  """
  improved = score >= best
  stop = jnp.logical_not(improved) & (wait >= patience) & (patience > 0)
  return improved, jnp.where(improved, score, best), jnp.where(improved, 1, wait + 1), stop


def average_precisions(scores: jnp.ndarray, targets: jnp.ndarray) -> jnp.ndarray:
  """sklearn's ``average_precision_score(targets, scores, average=None)``: ``[n, C] -> [C]``.

  Area under the precision-recall step curve, one threshold per distinct score (ties share it);
  a class without a positive scores 0 (sklearn's value).
  """
  n, c = scores.shape
  order = jnp.argsort(-scores, axis=0, stable=True)
  s = jnp.take_along_axis(scores, order, axis=0)
  tps = jnp.cumsum(jnp.take_along_axis(targets.astype(jnp.float32), order, axis=0), axis=0)
  last = jnp.concatenate([s[1:] != s[:-1], jnp.ones((1, c), bool)])  # end of a run of ties
  at_last = jnp.where(last, tps, 0.0)
  before = jnp.concatenate([jnp.zeros((1, c)), jax.lax.cummax(at_last, axis=0)[:-1]])
  gain = jnp.where(last, tps - before, 0.0)           # positives gained at each threshold
  precision = tps / jnp.arange(1, n + 1, dtype=jnp.float32)[:, None]
  return jnp.sum(gain * precision, axis=0) / jnp.maximum(tps[-1], 1.0)


def logits(p: dict, x: jnp.ndarray) -> jnp.ndarray:
  """``x: [n, D]`` standardized -> ``[n, C]`` (f32 matmul at full precision)."""
  return jnp.dot(x, p["w"], precision=_HIGHEST) + p["b"]


def metric(z: jnp.ndarray, y: jnp.ndarray, multilabel: bool) -> jnp.ndarray:
  """EVAR's accuracy or mAP of logits ``z: [n, C]``, through the sigmoid as its ``_validate``."""
  probs = jax.nn.sigmoid(z)
  if multilabel:
    return jnp.mean(average_precisions(probs, y))
  return jnp.mean(jnp.argmax(probs, axis=-1) == y)


def _example_loss(z: jnp.ndarray, y: jnp.ndarray, multilabel: bool) -> jnp.ndarray:
  """Logits ``z: [B, C] -> [B]``: each row's share of EVAR's loss (the loss is their mean)."""
  if multilabel:
    return optax.sigmoid_binary_cross_entropy(z, y).mean(axis=-1)
  return optax.softmax_cross_entropy_with_integer_labels(z, y) / z.shape[-1]


def _adam(lr: float, weight_decay: float) -> optax.GradientTransformation:
  """torch.optim.Adam with ``weight_decay``: L2 added to the gradient before the moments."""
  return optax.chain(optax.add_decayed_weights(weight_decay),
                     optax.scale_by_adam(b1=0.9, b2=0.999, eps=1e-8), optax.scale(-lr))


def torch_linear_init(key: jax.Array, d: int, c: int) -> dict:
  """``nn.Linear(d, c)``'s default init: weight ``[d, c]`` and bias ``[c]`` ~ U(+-1/sqrt(d))."""
  kw, kb = jax.random.split(key)
  bound = 1.0 / math.sqrt(d)
  return {"w": jax.random.uniform(kw, (d, c), minval=-bound, maxval=bound),
          "b": jax.random.uniform(kb, (c,), minval=-bound, maxval=bound)}


def train_epoch(p: dict, s, perm: jnp.ndarray, x: jnp.ndarray, y: jnp.ndarray, *, batch: int,
                tx: optax.GradientTransformation, multilabel: bool):
  """One epoch over the rows of ``x: [n, D]`` in the order ``perm: [n]``, ``ceil(n / batch)``
  Adam steps, the last on the remaining rows only (padded to the static shape, weight 0)."""
  n = x.shape[0]
  steps = -(-n // batch)
  ids = jnp.concatenate([perm, jnp.zeros(steps * batch - n, perm.dtype)]).reshape(steps, batch)
  real = (jnp.arange(steps * batch) < n).astype(jnp.float32).reshape(steps, batch)

  def step(carry, xs):
    p, s = carry
    i, w = xs
    loss = lambda p: jnp.sum(w * _example_loss(logits(p, x[i]), y[i], multilabel)) / jnp.sum(w)
    u, s = tx.update(jax.grad(loss)(p), s, p)
    return (optax.apply_updates(p, u), s), None

  (p, s), _ = jax.lax.scan(step, (p, s), (ids, real))
  return p, s


@functools.partial(jax.jit, static_argnames=("batch", "lr", "weight_decay", "max_epochs",
                                             "patience", "multilabel"))
def fit_epochs(params: dict, order: jax.Array, x: jnp.ndarray, y: jnp.ndarray, xv: jnp.ndarray,
               yv: jnp.ndarray, *, batch: int, lr: float, weight_decay: float, max_epochs: int,
               patience: int, multilabel: bool):
  """Every epoch with early stopping, on the device, from ``params`` on standardized ``x: [n, D]``
  (valid ``xv``). ``order``: a PRNG key (epoch ``e`` shuffles with ``fold_in(order, e)``), or
  the permutations ``int [E, n]`` to use (``E`` caps the epochs; ``experiments/evar_parity``
  replays torch's shuffles). Returns ``(best params, best epoch, epochs run, valid score per
  epoch [max_epochs] (NaN after the stop))``."""
  tx = _adam(lr, weight_decay)
  given = not jnp.issubdtype(order.dtype, jax.dtypes.prng_key)
  max_epochs = min(max_epochs, order.shape[0]) if given else max_epochs

  def epoch(st):
    e, p, s, best_p, best, best_e, wait, _, hist = st
    perm = order[e] if given else jax.random.permutation(jax.random.fold_in(order, e), len(x))
    p, s = train_epoch(p, s, perm, x, y, batch=batch, tx=tx, multilabel=multilabel)
    score = metric(logits(p, xv), yv, multilabel)
    improved, best, wait, stop = stop_rule(best, wait, score, patience)
    best_p = jax.tree.map(lambda a, b: jnp.where(improved, a, b), p, best_p)
    return (e + 1, p, s, best_p, best, jnp.where(improved, e, best_e), wait, stop,
            hist.at[e].set(score))

  st = (jnp.int32(0), params, tx.init(params), params, jnp.float32(0.0), jnp.int32(-1),
        jnp.int32(0), jnp.bool_(False), jnp.full((max_epochs,), jnp.nan, jnp.float32))
  st = jax.lax.while_loop(lambda st: (st[0] < max_epochs) & jnp.logical_not(st[7]), epoch, st)
  return st[3], st[5], st[0], st[8]


def fit(train: Split, valid: Split | None, *, seed: int, multilabel: bool = False,
        num_classes: int | None = None, config: EvarConfig = EvarConfig()
        ) -> tuple[LinearClassifier, dict]:
  """EVAR's classifier on ``train``, early-stopped on ``valid`` (``None`` or empty: EVAR's
  hold-out). Returns the classifier of the best epoch and ``{"best_epoch", "epochs", "batch",
  "valid_scores"}`` (0-based best epoch, epochs run, batch size, each epoch's valid score)."""
  if num_classes is None:
    num_classes = int(train[1].shape[1] if multilabel else np.max(train[1]) + 1)
  x, y = check_split("train", *train, multilabel, num_classes)
  if len(x) == 0:
    raise ValueError("probe needs train examples, got none")
  mean, scale = scaler_stats(x)  # all of train, before the hold-out (EVAR scales first)
  batch = min(config.max_batch, len(x))  # also counted before the hold-out
  if valid is None or len(valid[0]) == 0:
    t, v = holdout_all_classes(y, seed, num_classes=num_classes, fraction=config.valid_fraction,
                               tries=config.holdout_tries)
    (x, y), (xv, yv) = (x[t], y[t]), (x[v], y[v])
  else:
    xv, yv = check_split("valid", *valid, multilabel, num_classes)
  if xv.shape[1] != x.shape[1]:
    raise ValueError(f"feature sizes differ: train {x.shape[1]}, valid {xv.shape[1]}")
  x, xv = (((a - mean) / scale).astype(np.float32) for a in (x, xv))
  k_init, k_fit = jax.random.split(jax.random.key(seed))
  params = torch_linear_init(k_init, x.shape[1], num_classes)
  best, best_epoch, epochs, hist = fit_epochs(
      params, k_fit, jnp.asarray(x), jnp.asarray(y), jnp.asarray(xv), jnp.asarray(yv),
      batch=batch, lr=float(config.lr), weight_decay=float(config.weight_decay),
      max_epochs=int(config.max_epochs), patience=int(config.patience), multilabel=multilabel)
  epochs = int(epochs)
  info = {"best_epoch": int(best_epoch), "epochs": epochs, "batch": batch,
          "valid_scores": np.asarray(hist)[:epochs]}
  log.info("evar probe: best valid %.4f at epoch %d of %d", info["valid_scores"].max(initial=0),
           info["best_epoch"] + 1, epochs)
  clf = LinearClassifier(mean, scale, best["w"], best["b"])
  return clf, info


def linear_eval(train: Split, valid: Split | None, test: Split, *, seed: int,
                multilabel: bool = False, num_classes: int | None = None,
                config: EvarConfig = EvarConfig()) -> float:
  """EVAR's test score (accuracy or mAP in [0, 1]) of one seed; arguments as
  :func:`dwm_jax.evaluate.probe.linear_probe`'s."""
  if num_classes is None:
    num_classes = int(train[1].shape[1] if multilabel else np.max(train[1]) + 1)
  xte, yte = check_split("test", *test, multilabel, num_classes)
  if len(xte) == 0:
    raise ValueError("probe needs test examples, got none")
  if xte.shape[1] != np.shape(train[0])[1]:
    raise ValueError(f"feature sizes differ: train {np.shape(train[0])[1]}, test {xte.shape[1]}")
  clf, _ = fit(train, valid, seed=seed, multilabel=multilabel, num_classes=num_classes,
               config=config)
  xte = ((xte - clf.mean) / clf.std).astype(np.float32)
  return float(metric(logits({"w": clf.w, "b": clf.b}, jnp.asarray(xte)), jnp.asarray(yte),
                      multilabel))
