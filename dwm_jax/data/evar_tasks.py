"""EVAR's downstream task definitions (``nttcslab/eval-audio-repr``, ``evar/ds_tasks.py``) and
its fixed-length clips (``evar/data.py``).

Each task has a number of folds (1: the metadata CSV has a ``split`` column; more: a ``fold``
column, leave-one-fold-out), a unit length (every clip is cropped or zero-padded to it) and the
folder its audio sits in. EVAR's layout under its root folder (its ``$EVAR``): metadata
``evar/metadata/<task>.csv``, 16 kHz audio ``work/16k/<folder>/`` with the CSV's ``file_name``
relative to it. ``--task esc50 --data-root DIR`` reads exactly that.
"""
from __future__ import annotations

import dataclasses
import os

import numpy as np

from dwm_jax import paths
from dwm_jax.data.log_mel import LogMelSpec, log_mel, num_frames


@dataclasses.dataclass(frozen=True)
class EvarTask:
  """One row of EVAR's ``_defs``: ``folds``, ``unit_sec`` and the data ``folder``."""
  folds: int
  unit_sec: float
  folder: str


def _task(folds: int, unit_sec: float, folder: str | None, name: str) -> EvarTask:
  return EvarTask(folds, unit_sec, folder or name)


# evar/ds_tasks.py `_defs` (folds, unit_sec, data folder; None: the task's own name); its
# captioning / retrieval entries (audiocaps, clotho, xacle) are not classification tasks.
_DEFS = {
    "us8k": (10, 4.0, None), "esc50": (5, 5.0, None), "fsd50k": (1, 7.6358, None),
    "fsdnoisy18k": (1, 8.25, None), "gtzan": (1, 30.0, None), "nsynth": (1, 4.0, None),
    "nspitch": (1, 4.0, "nsynth"), "nsvelocity": (1, 4.0, "nsynth"), "cremad": (1, 2.5, None),
    "cremad_gender": (1, 2.5, "cremad"), "spcv1": (1, 1.0, None), "spcv2": (1, 1.0, None),
    "surge": (1, 4.0, None), "vc1": (1, 8.2, None), "vocalsound": (1, 4.18, None),
    "voxforge": (1, 5.8, None), "as20k": (1, 10.0, "as"), "as": (1, 10.0, "as"),
    "circor1": (1, 5.0, None), "circor2": (1, 5.0, None), "circor3": (1, 5.0, None),
    "bmdhs1": (1, 20.0, "bmdhs"), "bmdhs2": (1, 20.0, "bmdhs"), "bmdhs3": (1, 20.0, "bmdhs"),
}
TASKS: dict[str, EvarTask] = {name: _task(*d, name) for name, d in _DEFS.items()}

# EVAR's sample-rate folders (`_fs_table`); dwm-jax encoders take 16 kHz.
_RATE_FOLDER = {16000: "16k"}


def find(spec: str) -> tuple[str, EvarTask] | None:
  """The EVAR task a ``--task`` spec names: its name (``esc50``) or a CSV named after it
  (``.../esc50.csv``); ``None`` for anything else."""
  stem = os.path.splitext(paths.name(spec))[0] if spec.endswith(".csv") else spec
  return (stem, TASKS[stem]) if stem in TASKS else None


def is_task_name(spec: str) -> bool:
  """``spec`` is a bare EVAR task name (not a path or ``tfds:NAME``)."""
  return spec in TASKS


def locate(name: str, root: str, sample_rate: int = 16000) -> tuple[str, str]:
  """``(metadata CSV, audio folder)`` of EVAR task ``name`` under EVAR's root folder ``root``."""
  if name not in TASKS:
    raise ValueError(f"{name!r} is not one of EVAR's tasks ({', '.join(sorted(TASKS))})")
  if sample_rate not in _RATE_FOLDER:
    raise ValueError(f"EVAR audio folders for {sample_rate} Hz are not known to dwm-jax")
  csv_path = paths.join(root, "evar", "metadata", f"{name}.csv")
  audio = paths.join(root, "work", _RATE_FOLDER[sample_rate], TASKS[name].folder)
  return csv_path, audio


@dataclasses.dataclass(frozen=True)
class UnitCrop:
  """EVAR's fixed-length clips (``unit_sec``): ``samples`` at ``spec.sample_rate``.

  ``long[split]``: ``(position in x[split], crop key, full clip)`` of the train / valid clips
  longer than the unit, whose crop ``Task.for_seed`` draws for each seed (``x`` holds their
  crop at 0 until then). A full clip is a wave ``[S]``, or a ``.npy`` row's log-mel ``[F, T]``.
  """
  samples: int
  spec: LogMelSpec
  long: dict[str, list[tuple[int, int, np.ndarray]]]


def unit_clip(clip: np.ndarray, samples: int, spec: LogMelSpec = LogMelSpec(),
              rng: np.random.Generator | None = None) -> np.ndarray:
  """EVAR's fixed-length input (``BaseRawAudioDataset.__getitem__``): a clip longer than the unit
  is cropped at a start drawn from ``[0, S - unit)`` (``rng``; ``None``: at 0, as for test), a
  shorter one zero-padded at its end.

  ``clip``: a wave ``[S]`` -> the log-mel of the unit ``[F, num_frames(samples)]``; or a log-mel
  ``[F, T]`` cropped in frames, padded with digital silence's value ``log(eps)``.
  """
  if clip.ndim == 1:
    length, unit = clip.shape[0], samples
  else:
    length, unit = clip.shape[1], num_frames(samples, spec)
  start = int(rng.integers(length - unit)) if rng is not None and length > unit else 0
  if clip.ndim == 1:
    clip = clip[start:start + unit]
    return log_mel(np.pad(clip, (0, unit - clip.shape[0])), spec)
  clip = clip[:, start:start + unit]
  return np.pad(clip, ((0, 0), (0, unit - clip.shape[1])),
                constant_values=np.log(np.float32(spec.eps)))
