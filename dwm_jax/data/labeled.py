"""Labeled (evaluation) tasks: raw log-mels of any length per split, with labels.

Sources:
- EVAR CSV (``file_name,label,split``; file names relative to the CSV's folder, or to
  ``audio_root``; split in train/valid/test; multi-label rows join their labels with ``sep``,
  ``,`` by default). Files may be audio (decoded to 16 kHz log-mel) or prepared ``.npy``
  log-mels; the CSV and its files may be in a bucket (``gs://...``). A CSV with a ``fold`` column
  instead of ``split`` (EVAR's ESC-50, UrbanSound8K) is a leave-one-fold-out task:
  :meth:`Task.fold` gives fold ``k``'s splits (train: the other folds, test: fold ``k``).
- An EVAR task name (``esc50``, see :mod:`dwm_jax.data.evar_tasks`) with EVAR's root folder.
- ``tfds:NAME`` (with ``data_dir``): a TFDS audio dataset with a label feature, read through
  ``tfds.data_source``; ``train``/``validation``/``test`` splits (a missing validation split is
  carved, seeded, from train).
- :func:`synthetic_tasks`: the built-in synthetic set's event / pitch / timbre tasks.

``unit_sec`` (CSV tasks) gives EVAR's fixed-length clips: every clip is cropped or zero-padded to
the unit as a waveform before its log-mel is taken; test clips are cropped at their start, train
and valid clips at a random start drawn again for every seed (:meth:`Task.for_seed`).

Missing or undecodable files are skipped, logged with their reason, and counted
(``Task.skipped``). Unknown splits, missing columns, labels absent from train: ValueError.
"""
from __future__ import annotations

import concurrent.futures
import csv
import dataclasses
import io
import logging
import os
from typing import Callable

import numpy as np

from dwm_jax import paths
from dwm_jax.data import audio_io, evar_tasks
from dwm_jax.data.evar_tasks import UnitCrop, unit_clip
from dwm_jax.data.log_mel import LogMelSpec, log_mel, num_frames

log = logging.getLogger(__name__)

SPLITS = ("train", "valid", "test")


@dataclasses.dataclass
class Task:
  """One probe task.

  ``x[split]``: list of raw log-mels ``[F, T_i]`` float32; ``y[split]``: int64 ``[n]`` class
  indices, or float32 multi-hot ``[n, C]`` when ``multilabel``. Splits: train, valid, test.
  A fold task (``folds`` set) holds every clip in ``x["train"]`` and again, cropped for testing,
  in ``x["test"]`` (the same arrays when no crop differs), ``folds[i]`` the fold of clip ``i``;
  :meth:`fold` gives a split task.
  """
  name: str
  multilabel: bool
  classes: list[str]
  x: dict[str, list[np.ndarray]]
  y: dict[str, np.ndarray]
  skipped: dict[str, int] = dataclasses.field(default_factory=dict)  # reason -> count
  folds: np.ndarray | None = None   # [n] fold of each clip (fold tasks only)
  crop: UnitCrop | None = None      # clips still to crop per seed (see for_seed)

  @property
  def num_classes(self) -> int:
    return len(self.classes)

  @property
  def fold_ids(self) -> list:
    """The folds, sorted (empty for a split task)."""
    return [] if self.folds is None else sorted(set(self.folds.tolist()))

  def split(self, name: str) -> tuple[list[np.ndarray], np.ndarray]:
    if name not in SPLITS:
      raise ValueError(f"unknown split {name!r}; expected one of {SPLITS}")
    if self.folds is not None:
      raise ValueError(f"task {self.name} has folds {self.fold_ids}: take task.fold(k)'s splits")
    return self.x[name], self.y[name]

  train = property(lambda self: self.split("train"))
  valid = property(lambda self: self.split("valid"))
  test = property(lambda self: self.split("test"))

  def fold(self, k) -> "Task":
    """Leave-one-fold-out split ``k`` (EVAR): train = the other folds, no valid, test = fold k."""
    if k not in self.fold_ids:
      raise ValueError(f"task {self.name} has no fold {k!r} (folds: {self.fold_ids})")
    held = self.folds == k
    x = {"train": [c for c, h in zip(self.x["train"], held) if not h], "valid": [],
         "test": [c for c, h in zip(self.x["test"], held) if h]}
    y = {"train": self.y["train"][~held], "valid": self.y["train"][:0],
         "test": self.y["test"][held]}
    return Task(self.name, self.multilabel, self.classes, x, y, self.skipped)

  def for_seed(self, seed: int) -> "Task":
    """The task with seed ``seed``'s random crops of the clips longer than the unit (EVAR draws
    them again in every run); the task itself when no clip needs one."""
    if self.crop is None or not any(self.crop.long.values()):
      return self
    x = {s: list(v) for s, v in self.x.items()}
    for s, items in self.crop.long.items():
      for pos, key, full in items:
        x[s][pos] = unit_clip(full, self.crop.samples, self.crop.spec,
                              np.random.default_rng([int(seed), key]))
    return dataclasses.replace(self, x=x, crop=None)

  def __repr__(self) -> str:
    if self.folds is not None:
      sizes = f"{len(self.x['train'])} clips in folds {self.fold_ids}"
    else:
      sizes = ", ".join(f"{s}={len(self.x[s])}" for s in SPLITS)
    return (f"Task({self.name!r}, {self.num_classes} classes, "
            f"{'multi' if self.multilabel else 'single'}-label, {sizes})")


def _sort_classes(names: set[str]) -> list[str]:
  try:
    return sorted(names, key=lambda s: (float(s), s))
  except ValueError:
    return sorted(names)


def _encode(labels: dict[str, list[list[str]]], classes: list[str],
            multilabel: bool) -> dict[str, np.ndarray]:
  index = {c: i for i, c in enumerate(classes)}
  out = {}
  for s, rows in labels.items():
    if multilabel:
      y = np.zeros((len(rows), len(classes)), np.float32)
      for r, parts in enumerate(rows):
        y[r, [index[p] for p in parts]] = 1.0
    else:
      y = np.asarray([index[parts[0]] for parts in rows], np.int64)
    out[s] = y
  return out


def _check_and_build(name: str, x: dict, raw_labels: dict, multilabel: bool,
                     skipped: dict[str, int]) -> Task:
  if not x["train"]:
    raise ValueError(f"task {name}: the train split is empty")
  if not x["test"]:
    raise ValueError(f"task {name}: the test split is empty")
  if not x["valid"]:
    log.warning("task %s: no valid split", name)
  classes = _sort_classes({p for parts in raw_labels["train"] for p in parts})
  for s in ("valid", "test"):
    unseen = {p for parts in raw_labels[s] for p in parts} - set(classes)
    if unseen:
      raise ValueError(f"task {name}: labels in {s} absent from train: {sorted(unseen)[:10]}")
  return Task(name, multilabel, classes, x, _encode(raw_labels, classes, multilabel), skipped)


def _build_folds(name: str, clips: list, test_clips: list, raw: list, folds: list,
                 multilabel: bool, skipped: dict[str, int], crop: UnitCrop | None) -> Task:
  """A leave-one-fold-out task; every fold's test labels must occur in the other folds."""
  if not clips:
    raise ValueError(f"task {name}: no clip could be loaded")
  ids = sorted(set(folds))
  if len(ids) < 2:
    raise ValueError(f"task {name}: a fold column needs at least 2 folds, found {ids}")
  for k in ids:
    rest = {p for parts, f in zip(raw, folds) if f != k for p in parts}
    unseen = {p for parts, f in zip(raw, folds) if f == k for p in parts} - rest
    if unseen:
      raise ValueError(f"task {name}: labels in fold {k} absent from the other folds: "
                       f"{sorted(unseen)[:10]}")
  classes = _sort_classes({p for parts in raw for p in parts})
  y = _encode({"all": raw}, classes, multilabel)["all"]
  return Task(name, multilabel, classes, {"train": clips, "valid": [], "test": test_clips},
              {"train": y, "valid": y[:0], "test": y}, skipped, np.asarray(folds), crop)


def _load_logmel(path: str, spec: LogMelSpec) -> np.ndarray:
  if os.path.splitext(path)[1] == ".npy":
    try:
      f = paths.open(path, "rb")
    except (FileNotFoundError, IsADirectoryError) as e:
      raise audio_io.AudioError(path, "missing") from e
    try:
      with f:
        x = np.load(f, allow_pickle=False).astype(np.float32)
    except Exception as e:
      raise audio_io.AudioError(path, "unreadable", str(e)) from e
    x = x[0] if x.ndim == 3 and x.shape[0] == 1 else x
    if x.ndim != 2 or x.shape[0] != spec.n_mels:
      raise audio_io.AudioError(path, "unreadable", f"log-mel shape {x.shape}")
    if not np.all(np.isfinite(x)):
      raise audio_io.AudioError(path, "nan")
    return x
  return log_mel(audio_io.load_audio(path, spec.sample_rate), spec)


def _load_clip(path: str, spec: LogMelSpec, unit: int | None):
  """``(log-mel, full clip or None)``: without a unit the file's log-mel; with one, its unit crop
  at 0 and, for a clip longer than the unit, the full wave (or ``.npy`` log-mel) to crop at random
  later."""
  if unit is None:
    return _load_logmel(path, spec), None
  if os.path.splitext(path)[1] == ".npy":
    full = _load_logmel(path, spec)
    longer = full.shape[1] > num_frames(unit, spec)
  else:
    full = audio_io.load_audio(path, spec.sample_rate)
    longer = full.shape[0] > unit
  return unit_clip(full, unit, spec), (full if longer else None)


def _layout(csv_path: str, fieldnames) -> str:
  """``"split"`` or ``"fold"`` (EVAR reads ``fold`` only when there is no ``split`` column)."""
  have = set(fieldnames or ())
  layout = "split" if "split" in have else "fold" if "fold" in have else None
  missing = sorted({"file_name", "label"} - have) + ([] if layout else ["split"])
  if missing:
    raise ValueError(f"{csv_path}: missing column(s) {missing}; EVAR CSVs have file_name,label "
                     f"and split (or fold) (found {fieldnames})")
  return layout


def load_csv_task(csv_path: str | os.PathLike, *, sep: str = ",",
                  multilabel: bool | None = None, spec: LogMelSpec = LogMelSpec(),
                  num_threads: int = 4, name: str | None = None, audio_root: str | None = None,
                  unit_sec: float | None = None) -> Task:
  """An EVAR CSV task (see the module docstring); ``audio_root``: the folder ``file_name`` is
  relative to (default: the CSV's); ``unit_sec``: EVAR's fixed clip length."""
  csv_path = os.fspath(csv_path)
  if not paths.isfile(csv_path):
    raise FileNotFoundError(f"task CSV not found: {csv_path}")
  if unit_sec is not None and not unit_sec > 0:
    raise ValueError(f"unit_sec must be positive, got {unit_sec}")
  reader = csv.DictReader(io.StringIO(paths.read_text(csv_path), newline=""))
  layout = _layout(csv_path, reader.fieldnames)
  rows = list(reader)
  if layout == "split":
    bad_splits = sorted({r["split"] for r in rows} - set(SPLITS))
    if bad_splits:
      raise ValueError(f"{csv_path}: unknown split(s) {bad_splits}; expected {SPLITS}")
  if multilabel is None:
    multilabel = any(sep in r["label"] for r in rows)
  root, csv_name = audio_root or paths.parent(csv_path), paths.name(csv_path)
  unit = None if unit_sec is None else int(spec.sample_rate * unit_sec)  # EVAR's unit_samples

  def load(row):
    try:
      return _load_clip(paths.join(root, row["file_name"]), spec, unit), None
    except audio_io.AudioError as e:
      return None, e

  with concurrent.futures.ThreadPoolExecutor(max(1, num_threads)) as pool:
    results = list(pool.map(load, rows))
  x = {s: [] for s in SPLITS}
  raw = {s: [] for s in SPLITS}
  folds: list = []
  long: dict[str, list] = {"train": [], "valid": []}
  skipped: dict[str, int] = {}
  for i, (row, (clip, err)) in enumerate(zip(rows, results)):
    if err is not None:
      skipped[err.reason] = skipped.get(err.reason, 0) + 1
      log.warning("task %s: skipping %s", csv_name, err)
      continue
    parts = [p.strip() for p in row["label"].split(sep)] if multilabel else [row["label"]]
    parts = [p for p in parts if p]
    lm, full = clip
    if layout == "fold":  # every clip trains in the other folds and is tested in its own
      split = "train"
      x["test"].append(lm)
      folds.append(_fold_value(row["fold"]))
    else:
      split = row["split"]
    if full is not None and split != "test":  # its train crop: drawn per seed (for_seed)
      long[split].append((len(x[split]), i, full))
    x[split].append(lm)
    raw[split].append(parts)
  if skipped:
    log.warning("task %s: skipped %d of %d files: %s", csv_name, sum(skipped.values()),
                len(rows), skipped)
  crop = None if unit is None else UnitCrop(unit, spec, long)
  name = name or os.path.splitext(csv_name)[0]
  if layout == "fold":
    return _build_folds(name, x["train"], x["test"], raw["train"], folds, multilabel, skipped,
                        crop)
  return dataclasses.replace(_check_and_build(name, x, raw, multilabel, skipped), crop=crop)


def _fold_value(text: str):
  try:
    return int(text)
  except ValueError:
    return text.strip()


def load_tfds_task(name: str, *, data_dir: str | None = None, label_key: str = "label",
                   audio_key: str = "audio", spec: LogMelSpec = LogMelSpec(),
                   valid_fraction: float = 0.1, seed: int = 0) -> Task:
  """A TFDS audio dataset with a ``ClassLabel`` (or ``Sequence(ClassLabel)``) label feature."""
  from dwm_jax.data import tfds_source
  tfds = tfds_source.import_tfds()
  train = tfds_source.open_data_source(name, "train", data_dir)
  features = train.dataset_info.features
  if label_key not in features:
    raise ValueError(f"TFDS {name!r} has no label feature {label_key!r}; features: "
                     f"{list(features)}")
  feat = features[label_key]
  multilabel = isinstance(feat, tfds.features.Sequence)
  label_feat = feat.feature if multilabel else feat
  names = list(getattr(label_feat, "names", []) or [])
  rate = tfds_source.audio_sample_rate(train, audio_key, spec.sample_rate)
  available = set(train.dataset_info.splits.keys())
  if "test" not in available:
    raise ValueError(f"TFDS {name!r} has no test split (splits: {sorted(available)})")
  valid_name = next((s for s in ("validation", "valid", "val") if s in available), None)

  def read(split_name):
    ds = train if split_name == "train" else tfds_source.open_data_source(name, split_name,
                                                                          data_dir)
    xs, ys = [], []
    for i in range(len(ds)):
      rec = ds[i]
      xs.append(log_mel(tfds_source.to_wave(rec[audio_key], rate, spec.sample_rate), spec))
      lab = np.atleast_1d(np.asarray(rec[label_key])).tolist()
      ys.append([names[int(v)] if names else str(v) for v in lab])
    return xs, ys

  x, raw = {}, {}
  x["train"], raw["train"] = read("train")
  x["test"], raw["test"] = read("test")
  if valid_name:
    x["valid"], raw["valid"] = read(valid_name)
  else:
    order = np.random.default_rng(seed).permutation(len(x["train"]))
    n_valid = int(round(valid_fraction * len(order)))
    pick = {"valid": order[:n_valid], "train": np.sort(order[n_valid:])}
    x_tr, raw_tr = x["train"], raw["train"]
    for s, idx in pick.items():
      x[s], raw[s] = [x_tr[i] for i in idx], [raw_tr[i] for i in idx]
  task = _check_and_build(name, x, raw, multilabel, {})
  if names and not multilabel:
    # Keep the dataset's own class order when it names its classes.
    present = set(task.classes)
    classes = [n for n in names if n in present]
    task = Task(name, multilabel, classes, x, _encode(raw, classes, multilabel), {})
  return task


def load_task(spec: str, *, data_dir: str | None = None, data_root: str | None = None,
              unit_sec: float | None = None, **kwargs) -> Task:
  """``spec``: an EVAR CSV path, an EVAR task name (its CSV and audio under EVAR's root folder
  ``data_root``; see :mod:`dwm_jax.data.evar_tasks`), or ``tfds:NAME`` (with ``data_dir``)."""
  if spec.startswith("tfds:"):
    if unit_sec is not None:
      raise ValueError(f"{spec}: unit_sec crops are implemented for CSV tasks only")
    return load_tfds_task(spec[len("tfds:"):], data_dir=data_dir, **kwargs)
  if evar_tasks.is_task_name(spec) and not paths.isfile(spec):
    if not data_root:
      raise ValueError(f"{spec!r} is an EVAR task name: give EVAR's root folder (--data-root "
                       f"DIR with evar/metadata/{spec}.csv and work/16k/...), or a CSV path")
    csv_path, audio = evar_tasks.locate(spec, data_root)
    return load_csv_task(csv_path, audio_root=audio, unit_sec=unit_sec, name=spec, **kwargs)
  return load_csv_task(spec, unit_sec=unit_sec, **kwargs)


def synthetic_tasks(num_clips: int, seed: int = 0, seconds: float = 6.08,
                    spec: LogMelSpec = LogMelSpec()) -> list[Task]:
  """The synthetic set's ``event``, ``pitch`` and ``timbre`` tasks (log-mels shared)."""
  from dwm_jax.data import synthetic
  if num_clips < 10:
    raise ValueError(f"synthetic tasks need at least 10 clips, got {num_clips}")
  split = synthetic.splits(num_clips, seed)
  clips = [synthetic.synthesize_clip(i, seed=seed, seconds=seconds,
                                     sample_rate=spec.sample_rate) for i in range(num_clips)]
  x = {s: [] for s in SPLITS}
  labels = {s: [] for s in SPLITS}
  for i, (wave, lab) in enumerate(clips):
    x[split[i]].append(log_mel(wave, spec))
    labels[split[i]].append(lab)
  tasks = []
  for task, names in synthetic.LABEL_NAMES.items():
    y = {s: np.asarray([lab[task] for lab in labels[s]], np.int64) for s in SPLITS}
    tasks.append(Task(f"synthetic_{task}", False, list(names), x, y))
  return tasks


def load_tasks(specs: list[str], *, synthetic: int = 0, synthetic_seed: int = 1,
               data_dir: str | None = None, sep: str = ",", data_root: str | None = None,
               unit_sec: float | Callable[[str], float | None] | None = None) -> list[Task]:
  """Loads (and validates) every task; raises on the first bad one, naming it.

  ``unit_sec``: EVAR's clip length for every CSV task, or a function of the spec giving it
  (``None``: whole clips); ``data_root``: EVAR's root folder, for specs that are EVAR task names.
  """
  tasks = []
  if synthetic:
    tasks += synthetic_tasks(synthetic, seed=synthetic_seed)
  for spec in specs:
    kwargs = {} if spec.startswith("tfds:") else {"sep": sep}
    unit = unit_sec(spec) if callable(unit_sec) else unit_sec
    try:
      task = load_task(spec, data_dir=data_dir, data_root=data_root, unit_sec=unit, **kwargs)
    except (ValueError, FileNotFoundError) as e:
      raise type(e)(f"task {spec}: {e}") from e
    if task.skipped:
      log.warning("task %s: skipped %d files %s", task.name, sum(task.skipped.values()),
                  task.skipped)
    tasks.append(task)
  names = [t.name for t in tasks]
  dup = sorted({n for n in names if names.count(n) > 1})
  if dup:
    raise ValueError(f"two tasks share the name(s) {dup}; results are keyed by task name")
  return tasks
