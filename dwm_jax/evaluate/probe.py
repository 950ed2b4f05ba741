"""Linear probe: frozen clip embeddings, a linear classifier, test score.

Two protocols share the task plumbing here (embedding, cache, folds, seeds):
- this project's probe (:class:`ProbeConfig`, the default): features standardized with the
  statistics of the train rows it trains on; a linear layer trained with optax AdamW (lr 3e-3,
  decoupled decay 1e-4, batches of 128 whose last wraps around, normal(0.01) init); the epoch
  with the strictly best valid score (then lowest valid loss) is kept, patience 20; a task
  without a valid split holds out a random 10% of train; scored once on test: accuracy, or mAP
  over the classes with a positive in test; seeds 0, 1, ...
- EVAR's linear evaluation (``dwm_jax.evaluate.evar_probe.EvarConfig``), rule by rule.

Test data never reaches training or model selection. A fold task (EVAR's ``fold`` column) is
scored per fold, train on the other folds, and a seed's score is the mean over folds.
"""
from __future__ import annotations

import dataclasses
import functools
import io
import logging
from typing import Callable, ClassVar, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

from dwm_jax import paths

log = logging.getLogger(__name__)

Split = tuple[np.ndarray, np.ndarray]  # (features [n, D], labels [n] int or [n, C] multi-hot)


@dataclasses.dataclass(frozen=True)
class ProbeConfig:
  """This project's probe settings (see the module docstring)."""
  lr: float = 3e-3
  weight_decay: float = 1e-4
  batch_size: int = 128
  max_epochs: int = 200
  patience: int = 20
  first_seed: ClassVar[int] = 0
  name: ClassVar[str] = "dwm"

  def score(self, train: Split, valid: Split | None, test: Split, *, seed: int,
            multilabel: bool, num_classes: int) -> float:
    return linear_probe(train, valid, test, seed=seed, multilabel=multilabel,
                        num_classes=num_classes, config=self)


def average_precision(scores: np.ndarray, positives: np.ndarray) -> float:
  """Area under the precision-recall step curve (the sklearn definition; ties share a threshold).

  scores: [n] higher = more likely positive; positives: [n] bool. Needs at least one positive.
  """
  scores = np.asarray(scores, np.float64)
  positives = np.asarray(positives, bool)
  order = np.argsort(-scores, kind="stable")
  s, y = scores[order], positives[order]
  # One threshold per distinct score: the last index of each run of equal scores.
  last = np.r_[np.nonzero(np.diff(s))[0], len(s) - 1]
  tps = np.cumsum(y)[last]
  precision = tps / (last + 1)
  recall = tps / y.sum()
  return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def mean_average_precision(scores: np.ndarray, targets: np.ndarray) -> float:
  """Macro mAP over classes that have a positive: ``scores, targets: [n, C]``."""
  has_pos = targets.sum(axis=0) > 0
  if not has_pos.any():
    raise ValueError("mAP undefined: no class has a positive example in this split")
  if not has_pos.all():
    log.info("mAP: %d of %d classes have no positive in this split; they are left out",
             int((~has_pos).sum()), targets.shape[1])
  aps = [average_precision(scores[:, c], targets[:, c] > 0) for c in np.nonzero(has_pos)[0]]
  return float(np.mean(aps))


def check_split(name: str, x: np.ndarray, y: np.ndarray, multilabel: bool,
                 num_classes: int) -> tuple[np.ndarray, np.ndarray]:
  x = np.asarray(x, np.float32)
  y = np.asarray(y)
  if x.ndim != 2:
    raise ValueError(f"{name} features must be [n, D], got shape {x.shape}")
  if len(x) != len(y):
    raise ValueError(f"{name}: {len(x)} feature rows but {len(y)} labels")
  if not np.isfinite(x).all():
    raise ValueError(f"{name} features contain NaN or Inf ({int((~np.isfinite(x)).sum())} values)")
  if multilabel:
    if y.ndim != 2 or y.shape[1] != num_classes:
      raise ValueError(f"{name}: multi-label targets must be [n, {num_classes}], got {y.shape}")
    y = (y > 0).astype(np.float32)
  else:
    if y.ndim != 1:
      raise ValueError(f"{name}: single-label targets must be [n] class indices, got {y.shape}")
    y = y.astype(np.int32)
    if len(y) and (y.min() < 0 or y.max() >= num_classes):
      raise ValueError(f"{name}: class index outside [0, {num_classes})")
  return x, y


def holdout(x: np.ndarray, y: np.ndarray, seed: int, fraction: float = 0.1):
  """A seeded random valid split carved from train, for tasks that ship without one.

  ``x: [n, ...]`` (features, or clip indices), ``y: [n, ...]`` -> ``((x, y) train, (x, y) valid)``
  with ``round(0.1 n)`` valid rows. The probe and fine-tuning share it, so both hold out the same
  clips for the same seed.
  """
  n = len(x)
  order = np.random.default_rng(seed).permutation(n)
  nv = max(1, int(round(n * fraction)))
  if n - nv < 1:
    raise ValueError(f"cannot carve a valid split from {n} train examples")
  v, t = order[:nv], order[nv:]
  return (x[t], y[t]), (x[v], y[v])


def _loss_fn(multilabel: bool) -> Callable[[jnp.ndarray, jnp.ndarray], jnp.ndarray]:
  if multilabel:
    return lambda logits, y: optax.sigmoid_binary_cross_entropy(logits, y).mean()
  return lambda logits, y: optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()


def _optimizer(lr: float, weight_decay: float) -> optax.GradientTransformation:
  return optax.adamw(lr, weight_decay=weight_decay)


def _logits(p: dict, x: jnp.ndarray) -> jnp.ndarray:
  """``x: [n, D]`` -> ``[n, C]``."""
  return x @ p["w"] + p["b"]


# Module-level jits with static hyperparameters: the seeds of a task share one compilation.
@functools.partial(jax.jit, static_argnames=("bs", "lr", "weight_decay", "multilabel"))
def _epoch(p, s, key, x, y, *, bs: int, lr: float, weight_decay: float, multilabel: bool):
  """One pass over ``x: [n, D]`` in shuffled minibatches of ``bs`` (the tail wraps around)."""
  n = x.shape[0]
  steps = -(-n // bs)
  perm = jax.random.permutation(key, n)
  idx = jnp.concatenate([perm, perm[:steps * bs - n]]).reshape(steps, bs)
  tx, loss_fn = _optimizer(lr, weight_decay), _loss_fn(multilabel)

  def step(carry, ids):
    p, s = carry
    g = jax.grad(lambda p: loss_fn(_logits(p, x[ids]), y[ids]))(p)
    u, s = tx.update(g, s, p)
    return (optax.apply_updates(p, u), s), None

  (p, s), _ = jax.lax.scan(step, (p, s), idx)
  return p, s


@functools.partial(jax.jit, static_argnames=("multilabel",))
def _eval(p, x, y, *, multilabel: bool):
  logits = _logits(p, x)
  return logits, _loss_fn(multilabel)(logits, y)


def _score(logits: np.ndarray, y: np.ndarray, multilabel: bool) -> float:
  if multilabel:
    return mean_average_precision(logits, y)
  return float(np.mean(np.argmax(logits, axis=-1) == y))


@dataclasses.dataclass(frozen=True)
class LinearClassifier:
  """A fitted probe: ``logits = ((x - mean) / std) @ w + b`` (train statistics)."""
  mean: np.ndarray  # [D] (float32, or float64 for EVAR's scaler)
  std: np.ndarray   # [D], 1 where a feature is constant
  w: jnp.ndarray    # [D, C]
  b: jnp.ndarray    # [C]

  def logits(self, x: np.ndarray) -> np.ndarray:
    """``x: [n, D]`` raw features -> ``[n, C]``."""
    x = ((np.asarray(x, np.float32) - self.mean) / self.std).astype(np.float32)
    return np.asarray(_logits({"w": self.w, "b": self.b}, jnp.asarray(x)))


def fit_linear(train: Split, valid: Split | None, *, seed: int, multilabel: bool = False,
               num_classes: int | None = None, config: ProbeConfig = ProbeConfig()
               ) -> LinearClassifier:
  """Trains the probe's linear classifier on ``train``, early-stopped on ``valid`` (``None`` or
  empty: 10% of train held out with ``seed``). See :func:`linear_probe` for the arguments."""
  if num_classes is None:
    num_classes = int(train[1].shape[1] if multilabel else np.max(train[1]) + 1)
  xtr, ytr = check_split("train", *train, multilabel, num_classes)
  if len(xtr) == 0:
    raise ValueError("probe needs train examples, got none")
  if valid is None or len(valid[0]) == 0:
    log.info("no valid split: holding out 10%% of %d train examples for early stopping", len(xtr))
    (xtr, ytr), (xva, yva) = holdout(xtr, ytr, seed)
  else:
    xva, yva = check_split("valid", *valid, multilabel, num_classes)
  if xva.shape[1] != xtr.shape[1]:
    raise ValueError(f"feature sizes differ: train {xtr.shape[1]}, valid {xva.shape[1]}")

  # Train statistics only: valid/test never influence the scaling.
  mean = xtr.mean(axis=0)
  std = xtr.std(axis=0)
  std = np.where(std < 1e-8, 1.0, std)  # constant features stay finite (and contribute 0)
  xtr, xva = ((a - mean) / std for a in (xtr, xva))

  n, d = xtr.shape
  bs = min(config.batch_size, n)
  key = jax.random.key(seed)
  k_init, key = jax.random.split(key)
  # Small init: the convex loss has one optimum; the seed still varies init and shuffling.
  params = {"w": jax.random.normal(k_init, (d, num_classes)) * 0.01,
            "b": jnp.zeros((num_classes,))}
  opt_state = _optimizer(config.lr, config.weight_decay).init(params)
  xtr_j, ytr_j = jnp.asarray(xtr), jnp.asarray(ytr)
  xva_j, yva_j = jnp.asarray(xva), jnp.asarray(yva)

  best = (-np.inf, np.inf)  # (valid score, valid loss): higher score, then lower loss
  best_params, since_best = params, 0
  for _ in range(config.max_epochs):
    key, k = jax.random.split(key)
    params, opt_state = _epoch(params, opt_state, k, xtr_j, ytr_j, bs=bs, lr=config.lr,
                               weight_decay=config.weight_decay, multilabel=multilabel)
    v_logits, v_loss = _eval(params, xva_j, yva_j, multilabel=multilabel)
    cur = (_score(np.asarray(v_logits), yva, multilabel), float(v_loss))
    if cur[0] > best[0] or (cur[0] == best[0] and cur[1] < best[1]):
      best, best_params, since_best = cur, params, 0
    else:
      since_best += 1
      if since_best >= config.patience:
        break
  return LinearClassifier(mean, std, best_params["w"], best_params["b"])


def linear_probe(train: Split, valid: Split | None, test: Split, *, seed: int,
                 multilabel: bool = False, num_classes: int | None = None,
                 config: ProbeConfig = ProbeConfig()) -> float:
  """Trains a linear classifier on ``train``, early-stops on ``valid``, returns the test score.

  Args:
    train, valid, test: ``(features [n, D], labels)``; labels are class indices ``[n]`` or, if
      ``multilabel``, multi-hot ``[n, C]``. ``valid=None`` (or empty) holds out 10% of train.
    seed: initialization, shuffling and hold-out seed; same seed, same result.
    multilabel: sigmoid + BCE and mAP instead of softmax + CE and accuracy.
    num_classes: C; inferred from the train labels when omitted.
    config: optimizer and early-stopping settings.

  Returns:
    Test accuracy or mAP in [0, 1].
  """
  if num_classes is None:
    num_classes = int(train[1].shape[1] if multilabel else np.max(train[1]) + 1)
  xte, yte = check_split("test", *test, multilabel, num_classes)
  if len(train[0]) == 0 or len(xte) == 0:
    raise ValueError(f"probe needs train and test examples, got {len(train[0])} and {len(xte)}")
  if xte.shape[1] != np.shape(train[0])[1]:
    raise ValueError(f"feature sizes differ: train {np.shape(train[0])[1]}, test {xte.shape[1]}")
  clf = fit_linear(train, valid, seed=seed, multilabel=multilabel, num_classes=num_classes,
                   config=config)
  return _score(clf.logits(xte), yte, multilabel)


def probe_seeds(train: Split, valid: Split | None, test: Split, *, seeds: int | Sequence[int],
                multilabel: bool = False, num_classes: int | None = None,
                config: ProbeConfig = ProbeConfig()) -> dict:
  """``config``'s protocol over several seeds: ``{"metric", "mean", "std", "seeds"}``."""
  ids = seed_list(seeds, config.first_seed)
  scores = [config.score(train, valid, test, seed=s, multilabel=multilabel,
                         num_classes=num_classes) for s in ids]
  return {"metric": "mAP" if multilabel else "accuracy", "mean": float(np.mean(scores)),
          "std": float(np.std(scores)), "seeds": len(ids)}


# ---- Tasks: embed every split once, then probe over seeds. ----

Featurizer = Callable[[Sequence[np.ndarray]], np.ndarray]  # raw log-mels [F, T_i] -> [n, D]


def logmel_stats(clips: Sequence[np.ndarray]) -> np.ndarray:
  """The plain log-mel baseline: per-bin mean and std over time, ``[n, 2F]``."""
  if not len(clips):
    return np.zeros((0, 0), np.float32)
  return np.stack([np.concatenate([c.mean(axis=1), c.std(axis=1)]) for c in clips]
                  ).astype(np.float32)


def featurizer_for(model) -> tuple[Featurizer, str | None]:
  """``model``: an ``Encoder``, ``"logmel"`` or a featurizer callable -> (fn, cache id or None)."""
  from dwm_jax.evaluate.embed import embed_clips
  from dwm_jax.evaluate.encoder import Encoder
  if isinstance(model, Encoder):
    return (lambda clips: embed_clips(model, clips)), model.fingerprint
  if model == "logmel":
    return logmel_stats, "logmel"
  if callable(model):
    return model, None
  raise ValueError(f"cannot probe {model!r}: expected an Encoder, 'logmel' or a callable")


def _task_hash(task) -> str:
  import hashlib
  h = hashlib.sha1(repr((task.name, task.multilabel, list(task.classes))).encode())
  for s in ("train", "valid", "test"):
    h.update(np.asarray(task.y[s]).tobytes())
    for x in task.x[s]:
      h.update(repr(x.shape).encode())
      h.update(np.ascontiguousarray(x, np.float32).tobytes())
  if task.folds is not None:
    h.update(repr(task.folds.tolist()).encode())
  return h.hexdigest()[:16]


def _features(fn: Featurizer, task) -> dict[str, np.ndarray]:
  """Every split's features; a fold task's test clips that are its train clips (same arrays)
  are embedded once."""
  feats = {s: np.asarray(fn(task.x[s]), np.float32) for s in ("train", "valid")}
  if task.folds is None:
    feats["test"] = np.asarray(fn(task.x["test"]), np.float32)
  else:
    feats["test"] = feats["train"].copy()
    own = [i for i, (a, b) in enumerate(zip(task.x["test"], task.x["train"])) if a is not b]
    if own:
      feats["test"][own] = np.asarray(fn([task.x["test"][i] for i in own]), np.float32)
  dim = feats["train"].shape[1]
  for s in ("valid", "test"):
    if len(feats[s]) == 0:
      feats[s] = np.zeros((0, dim), np.float32)
  return feats


def task_features(model, task, *, cache_dir: str | None = None) -> dict[str, np.ndarray]:
  """Features of every split of ``task``: ``{"train": [n, D], "valid": ..., "test": ...}``.

  With ``cache_dir``, encoder features are stored in ``cache_dir/<fingerprint>/<task>-<hash>.npz``:
  the encoder's parameter fingerprint and the task's content name the file, so another checkpoint
  or changed data (or another seed's crops) never reuses stale features.
  """
  fn, cache_id = featurizer_for(model)
  path = None
  if cache_dir and cache_id:
    path = paths.join(cache_dir, cache_id, f"{task.name}-{_task_hash(task)}.npz")
    if paths.isfile(path):
      with np.load(io.BytesIO(paths.read_bytes(path))) as z:
        log.info("task %s: features from cache %s", task.name, path)
        return {s: z[s] for s in ("train", "valid", "test")}
  feats = _features(fn, task)
  if path:
    buf = io.BytesIO()
    np.savez(buf, **feats)
    paths.write_bytes(path, buf.getvalue())  # atomic: a reader never sees half a file
  return feats


def splits_of(task, feats: dict[str, np.ndarray], fold=None
              ) -> tuple[Split, Split | None, Split]:
  """``(train, valid or None, test)`` features and labels of a split task, or of fold ``fold``
  of a fold task (train: the other folds; no valid)."""
  y = task.y
  if fold is None:
    valid = (feats["valid"], y["valid"]) if len(feats["valid"]) else None
    return (feats["train"], y["train"]), valid, (feats["test"], y["test"])
  held = task.folds == fold
  return ((feats["train"][~held], y["train"][~held]), None,
          (feats["test"][held], y["test"][held]))


def seed_list(seeds: int | Sequence[int], first: int = 0) -> list[int]:
  """``seeds``: a count (``first``, ``first + 1``, ...) or the seeds themselves."""
  out = list(range(first, first + seeds)) if isinstance(seeds, int) else list(seeds)
  if not out:
    raise ValueError("need at least one seed")
  return out


def evaluate_tasks(model, tasks: Sequence, *, seeds: int | Sequence[int] = 3,
                   config=ProbeConfig(), cache_dir: str | None = None) -> dict[str, dict]:
  """Linear-probes ``model`` on every task (``dwm_jax.data.labeled.Task``).

  Args:
    model: an ``Encoder`` (clip embeddings), ``"logmel"`` (log-mel statistics) or a callable
      mapping a list of raw log-mels ``[F, T_i]`` to features ``[n, D]``.
    tasks: labeled tasks; their names key the result.
    seeds: number of probe seeds (from ``config.first_seed``: 0 for this project's probe, 42
      for EVAR's) or the seeds themselves.
    config: :class:`ProbeConfig` or ``evar_probe.EvarConfig`` (the protocol).
    cache_dir: optional embedding cache (see :func:`task_features`).

  Returns:
    ``{task name: {"metric": "accuracy" | "mAP", "mean", "std", "seeds"}}``, mean and std over
    seeds; a fold task's seed scores its mean over folds, and its result adds ``"folds"``:
    ``{fold: mean over seeds}``.
  """
  seed_ids = seed_list(seeds, config.first_seed)
  results = {}
  for task in tasks:
    if getattr(task, "skipped", None):
      log.warning("task %s: %d files were skipped when loading: %s", task.name,
                  sum(task.skipped.values()), task.skipped)
    folds = task.fold_ids or [None]
    scores = np.zeros((len(seed_ids), len(folds)))
    featured = feats = None
    for i, seed in enumerate(seed_ids):
      cropped = task.for_seed(seed)  # the task itself unless clips are cropped per seed
      if cropped is not featured:
        featured, feats = cropped, task_features(model, cropped, cache_dir=cache_dir)
      for j, k in enumerate(folds):
        scores[i, j] = config.score(*splits_of(cropped, feats, k), seed=seed,
                                    multilabel=task.multilabel, num_classes=task.num_classes)
    per_seed = scores.mean(axis=1)
    r = {"metric": "mAP" if task.multilabel else "accuracy", "mean": float(per_seed.mean()),
         "std": float(per_seed.std()), "seeds": len(seed_ids)}
    if task.folds is not None:
      r["folds"] = {str(k): float(v) for k, v in zip(folds, scores.mean(axis=0))}
    results[task.name] = r
    log.info("probe %s: %s %.4f +- %.4f (%d seeds%s)", task.name, r["metric"], r["mean"],
             r["std"], r["seeds"], f", {len(folds)} folds" if task.folds is not None else "")
  return results


def markdown_table(results: dict[str, dict], title: str = "") -> str:
  """``results`` of :func:`evaluate_tasks` as a Markdown table (percent, mean +- std)."""
  lines = [f"### {title}", ""] if title else []
  lines += ["| task | metric | mean | std | seeds |", "|---|---|---:|---:|---:|"]
  for name, r in results.items():
    if "folds" in r:
      name = f"{name} ({len(r['folds'])} folds)"
    lines.append(f"| {name} | {r['metric']} | {100 * r['mean']:.2f} | {100 * r['std']:.2f} "
                 f"| {r['seeds']} |")
  return "\n".join(lines) + "\n"
