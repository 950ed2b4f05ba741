"""Whole-config validation, run before any data is read or anything is compiled.

Every problem found is reported at once, one line each, starting with the field's dotted name
(``model.input_shape: 80x600 is not divisible by the patch size 16x16``), in a
:class:`ConfigError`. Only cheap checks live here (names, ranges, shapes, paths, device counts).
"""
from __future__ import annotations

from typing import Any, Callable

import ml_collections

from dwm_jax import faults, masking, objectives, paths, patching
from dwm_jax.data.pipeline import SOURCES
from dwm_jax.data.rendered import TASKS as RENDERED_TASKS
from dwm_jax.models.vit import DTYPES, MODEL_SIZES
from dwm_jax.objectives.m2d import TARGET_INITS
from dwm_jax.train import ema
from dwm_jax.train.optimizer import DECAY_GROUPS


class ConfigError(faults.UsageFault, ValueError):
  """An invalid config; ``problems`` lists ``"field: message"`` lines."""

  def __init__(self, problems: list[str]):
    self.problems = list(problems)
    super().__init__("invalid config:\n  " + "\n  ".join(self.problems))


class _Checker:
  """Collects ``field: message`` problems; ``get`` reads a dotted field, None if absent."""

  def __init__(self, config: ml_collections.ConfigDict):
    self.config = config
    self.problems: list[str] = []

  def get(self, field: str) -> Any:
    node = self.config
    for part in field.split("."):
      if node is None or part not in node:
        return None
      node = node[part]
    return node

  def fail(self, field: str, message: str) -> None:
    self.problems.append(f"{field}: {message}")

  def check(self, field: str, ok: Callable[[Any], bool], message: str) -> Any:
    """Fails with ``message`` (``{v}`` = the value) unless ``ok(value)``; returns the value."""
    value = self.get(field)
    try:
      good = ok(value)
    except (TypeError, ValueError):
      good = False
    if not good:
      self.fail(field, message.format(v=value))
    return value if good else None

  def number(self, field: str, *, lo: float | None = None, hi: float | None = None,
             lo_open: bool = False, hi_open: bool = False, integer: bool = False,
             optional: bool = False) -> Any:
    """A number in ``[lo, hi]`` (open ends with ``lo_open``/``hi_open``); None allowed if optional."""
    value = self.get(field)
    if value is None and optional:
      return None
    kind = "an integer" if integer else "a number"
    if isinstance(value, bool) or not isinstance(value, (int, float)) or (
        integer and not float(value).is_integer()):
      self.fail(field, f"must be {kind}, got {value!r}")
      return None
    below = lo is not None and (value <= lo if lo_open else value < lo)
    above = hi is not None and (value >= hi if hi_open else value > hi)
    if below or above:
      left = "(" if lo_open else "["
      right = ")" if hi_open else "]"
      span = f"{left}{'-inf' if lo is None else lo}, {'inf' if hi is None else hi}{right}"
      self.fail(field, f"must be in {span}, got {value!r}")
      return None
    return value


def _pair(value: Any) -> tuple[int, int] | None:
  try:
    a, b = value
  except (TypeError, ValueError):
    return None
  if any(isinstance(v, bool) or not float(v).is_integer() or v < 1 for v in (a, b)):
    return None
  return int(a), int(b)


def _check_model(c: _Checker) -> patching.Grid | None:
  c.check("model.name", lambda v: v in MODEL_SIZES,
          f"unknown model {{v!r}}; valid: {', '.join(MODEL_SIZES)}")
  c.check("model.dtype", lambda v: v in DTYPES,
          f"unknown dtype {{v!r}}; valid: {', '.join(DTYPES)}")
  c.check("model.remat", lambda v: isinstance(v, bool), "must be true or false, got {v!r}")
  c.number("model.dropout", lo=0.0, hi=1.0, hi_open=True)
  c.number("model.drop_path", lo=0.0, hi=1.0, hi_open=True)
  for f in ("width", "depth", "heads", "mlp_dim"):
    c.number(f"model.{f}", lo=1, integer=True, optional=True)
  size = dict(MODEL_SIZES.get(c.get("model.name"), {}))
  size.update({k: c.get(f"model.{k}") for k in size if c.get(f"model.{k}") is not None})
  if size and size["width"] % size["heads"]:
    c.fail("model.heads", f"width {size['width']} is not divisible by {size['heads']} heads")

  shape = _pair(c.get("model.input_shape"))
  patch = _pair(c.get("model.patch_size"))
  if shape is None:
    c.fail("model.input_shape", f"must be two positive ints (F, T), got "
           f"{c.get('model.input_shape')!r}")
  if patch is None:
    c.fail("model.patch_size", f"must be two positive ints, got {c.get('model.patch_size')!r}")
  if shape is None or patch is None:
    return None
  if shape[0] % patch[0] or shape[1] % patch[1]:
    c.fail("model.input_shape", f"{shape[0]}x{shape[1]} is not divisible by the patch size "
           f"{patch[0]}x{patch[1]}")
    return None
  return patching.grid_for(shape, patch)


def _check_objective(c: _Checker) -> None:
  c.check("objective.name", lambda v: v in objectives.names(),
          f"unknown objective {{v!r}}; valid: {', '.join(objectives.names())}")
  c.number("objective.predictor_depth", lo=1, integer=True)
  dim = c.number("objective.predictor_dim", lo=1, integer=True)
  heads = c.number("objective.predictor_heads", lo=1, integer=True)
  if dim and heads and dim % heads:
    c.fail("objective.predictor_heads", f"predictor_dim {dim} is not divisible by {heads} heads")
  c.number("objective.ema_decay_start", lo=0.0, hi=1.0)
  c.number("objective.ema_decay_end", lo=0.0, hi=1.0)
  c.check("objective.ema_schedule", lambda v: v in ema.SCHEDULES,
          f"unknown EMA schedule {{v!r}}; valid: {', '.join(ema.SCHEDULES)}")
  c.check("objective.target_init", lambda v: v in TARGET_INITS,
          f"unknown target init {{v!r}}; valid: {', '.join(TARGET_INITS)}")


def _check_mask(c: _Checker, grid: patching.Grid | None) -> None:
  name = c.check("mask.name", lambda v: v in masking.names(),
                 f"unknown masking strategy {{v!r}}; valid: {', '.join(masking.names())}")
  if name is not None:
    try:
      masking.resolve_options(name, dict(c.get("mask.options") or {}))
    except ValueError as e:
      c.fail("mask.options", str(e))
  ratio = c.number("mask.ratio", lo=0.0, hi=1.0, lo_open=True, hi_open=True)
  if ratio is not None and grid is not None:
    k = patching.num_masked(grid.num_patches, ratio)
    if not 0 < k < grid.num_patches:
      c.fail("mask.ratio", f"{ratio} masks {k} of {grid.num_patches} patches; "
             "at least one patch must be masked and one visible")
  c.number("mask.hint.start_epoch", lo=0.0)
  c.number("mask.hint.k", lo=0.0, lo_open=True)
  c.number("mask.hint.fixed", lo=0.0, optional=True)


def _exists(c: _Checker, field: str, kind: str) -> None:
  path = c.get(field)
  try:
    ok = paths.isfile(path) if kind == "file" else paths.isdir(path)
  except paths.StorageError as e:  # the bucket itself: missing, unreachable, refused
    c.fail(field, str(e))
    return
  if not ok:
    c.fail(field, f"{kind} {path!r} does not exist")


def _check_data(c: _Checker) -> None:
  source = c.check("data.source", lambda v: v in SOURCES,
                   f"unknown data source {{v!r}}; valid: {', '.join(SOURCES)}")
  if source in ("npy", "shards"):
    written = "`dwm-jax prepare`" if source == "npy" else "`dwm-jax prepare --layout shards`"
    if not c.get("data.csv"):
      c.fail("data.csv", f"required for data.source={source!r} (the file list written by "
             f"{written})")
    else:
      _exists(c, "data.csv", "file")
  elif source == "audio":
    if c.get("data.csv"):
      _exists(c, "data.csv", "file")
    elif c.get("data.root"):
      _exists(c, "data.root", "folder")
    else:
      c.fail("data.csv", "data.source='audio' needs data.csv (a file list) or data.root (a folder)")
  elif source == "tfds":
    c.check("data.tfds_name", bool, "required for data.source='tfds' (a TFDS dataset name)")
    if c.get("data.tfds_data_dir"):
      _exists(c, "data.tfds_data_dir", "folder")
  elif source == "synthetic":
    c.number("data.synthetic.num_clips", lo=1, integer=True)
    c.number("data.synthetic.seconds", lo=0.0, lo_open=True)
  if c.get("data.stats"):
    _exists(c, "data.stats", "file")
  c.number("data.stats_crops", lo=0, integer=True)
  c.number("data.norm_std", lo=0.0, lo_open=True)
  c.number("data.norm_mean")
  c.number("data.num_workers", lo=0, integer=True)
  c.number("data.prefetch", lo=0, integer=True)


def _check_schedule(c: _Checker, device_count: int, process_count: int) -> None:
  batch = c.number("batch_size", lo=1, integer=True)
  if batch is not None and batch % device_count:
    c.fail("batch_size", f"global batch {batch} is not divisible by the {device_count} devices "
           f"(batch_size = per-device batch x {device_count})")
  if batch is not None and batch % process_count:
    c.fail("batch_size", f"global batch {batch} is not divisible by the {process_count} processes")
  c.number("epochs", lo=0, lo_open=True)
  c.number("steps_per_epoch", lo=1, integer=True, optional=True)
  c.number("total_steps", lo=1, integer=True, optional=True)
  c.number("seed", integer=True)
  c.number("optim.base_lr", lo=0.0, lo_open=True)
  c.number("optim.min_lr", lo=0.0)
  c.number("optim.warmup_epochs", lo=0.0)
  c.number("optim.weight_decay", lo=0.0)
  c.number("optim.b1", lo=0.0, hi=1.0, hi_open=True)
  c.number("optim.b2", lo=0.0, hi=1.0, hi_open=True)
  c.number("optim.clip_norm", lo=0.0)
  c.check("optim.decay_groups", lambda v: v in DECAY_GROUPS,
          f"unknown weight-decay groups {{v!r}}; valid: {', '.join(DECAY_GROUPS)}")
  c.number("optim.accum_steps", lo=1, integer=True)
  c.number("checkpoint.every_steps", lo=1, integer=True)
  c.number("checkpoint.keep", lo=1, integer=True)
  c.number("checkpoint.keep_period", lo=0, integer=True)
  c.number("checkpoint.every_minutes", lo=0.0)
  c.number("log_every_steps", lo=1, integer=True)
  c.number("mask_png_every_steps", lo=0, integer=True)


def _check_launch(c: _Checker, process_count: int) -> None:
  """Observability and storage fields: they never change what is trained."""
  c.number("peak_tflops", lo=0.0, lo_open=True, optional=True)
  c.check("compile_cache", lambda v: v is None or isinstance(v, str),
          "must be \"auto\", \"off\", a folder or a bucket URL, got {v!r}")
  c.number("profile.start_step", lo=1, integer=True)
  c.number("profile.num_steps", lo=0, integer=True)
  processes = c.get("profile.processes")
  if isinstance(processes, int):
    processes = (processes,)
  if not isinstance(processes, (tuple, list)) or not all(
      isinstance(p, int) and not isinstance(p, bool) and 0 <= p < process_count
      for p in processes):
    c.fail("profile.processes", f"must be process indices in [0, {process_count}), got "
           f"{c.get('profile.processes')!r}")
  timeout = c.number("storage.timeout_seconds", lo=0.0, lo_open=True)
  request = c.number("storage.request_timeout_seconds", lo=1.0)
  if timeout is not None and request is not None and request > timeout:
    c.fail("storage.request_timeout_seconds", f"{request:g} s is longer than "
           f"storage.timeout_seconds ({timeout:g} s), which bounds every wait")


def _check_probe(c: _Checker) -> None:
  c.number("probe.seeds", lo=1, integer=True)
  c.number("probe.evar_lr", lo=0.0, lo_open=True)
  tasks = c.get("probe.tasks") or ()
  if isinstance(tasks, str):
    tasks = (tasks,)
  for i, task in enumerate(tasks):
    if str(task).startswith("tfds:"):
      continue
    try:
      ok = paths.isfile(str(task))
    except paths.StorageError as e:
      c.fail(f"probe.tasks[{i}]", str(e))
      continue
    if not ok:
      c.fail(f"probe.tasks[{i}]", f"task CSV {task!r} does not exist (or use tfds:NAME)")
  rendered = c.get("probe.rendered") or ()
  if isinstance(rendered, str):
    rendered = (rendered,)
  for i, name in enumerate(rendered):
    if name not in RENDERED_TASKS:
      c.fail(f"probe.rendered[{i}]",
             f"unknown rendered task {name!r}; valid: {', '.join(RENDERED_TASKS)}")
  c.check("probe.rendered_per_class",
          lambda v: len(v) == 3 and all(isinstance(n, int) and n >= 1 for n in v),
          "must be 3 positive clip counts per class (train, valid, test), got {v!r}")
  if c.get("probe.after_pretrain") and not tasks and c.get("data.source") != "synthetic":
    c.fail("probe.tasks", "probe.after_pretrain needs task CSVs (or tfds:NAME) when "
           "data.source is not synthetic (the synthetic tasks only stand in for synthetic data)")


def validate(config: ml_collections.ConfigDict, *, device_count: int | None = None,
             process_count: int | None = None) -> None:
  """Raises :class:`ConfigError` listing every invalid field of ``config``.

  ``device_count`` / ``process_count`` default to the running JAX's global counts (reading them
  initializes the backend but compiles nothing).
  """
  if device_count is None or process_count is None:
    import jax
    device_count = jax.device_count() if device_count is None else device_count
    process_count = jax.process_count() if process_count is None else process_count
  c = _Checker(config)
  grid = _check_model(c)
  _check_objective(c)
  _check_mask(c, grid)
  _check_data(c)
  _check_schedule(c, int(device_count), int(process_count))
  _check_launch(c, int(process_count))
  _check_probe(c)
  if c.problems:
    raise ConfigError(c.problems)
