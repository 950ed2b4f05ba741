"""Encoder windows of log-mel streams, and their packing into fixed-shape rows.

A clip is embedded as the authors' runtime (``encode_lms``) does: its normalized log-mel is cut
into windows of the encoder's input length ``W`` frames (``Tp = W / pw`` patch columns); the last,
shorter window is zero-padded to a whole column (``tp`` columns). :class:`Cutter` does this on a
stream of chunks, so a file is never held whole; a cutter may start its stream ``start`` frames
late (frames dropped) or early (``-start`` frames of zeros, the dataset mean, put before it): the
shifted streams of a finer timestamp hop (:mod:`dwm_jax.evaluate.hear.core`).

:class:`Packer` lays windows out on rows of ``Tp`` columns, the encoder's static input: a whole
window fills a row; shorter ones (the last window of each stream) share rows, up to ``segments``
per row, first fit. Each window of a row is a segment the encoder keeps apart with an attention
mask and its own CLS token (:mod:`dwm_jax.evaluate.packed_encoder`), so every window is encoded
exactly as if alone, and any mix of clip lengths runs through one compiled shape.
"""
from __future__ import annotations

import dataclasses

import numpy as np


@dataclasses.dataclass(frozen=True, eq=False)
class Window:
  """``data: [F, tp * pw]`` normalized log-mel of columns ``[col0, col0 + tp)`` of stream
  ``shift`` of file ``file`` (engine ids)."""
  file: int
  shift: int
  col0: int
  data: np.ndarray

  def columns(self, pw: int) -> int:
    return self.data.shape[1] // pw


class Cutter:
  """Normalized log-mel chunks ``[F, n]`` -> the windows of one (possibly shifted) stream."""

  def __init__(self, frames_per_window: int, patch_width: int, start: int = 0):
    self.w, self.pw = frames_per_window, patch_width
    self.skip = max(start, 0)   # frames still to drop from the front
    self.lead = max(-start, 0)  # zero frames still to put before the first real one
    self.parts: list[np.ndarray] = []
    self.buffered = 0
    self.col = 0

  def _take(self, n: int) -> np.ndarray:
    """The first ``n`` buffered frames as one array (copied: chunks are not kept alive)."""
    whole = np.concatenate(self.parts, axis=1) if len(self.parts) > 1 else self.parts[0]
    out, rest = np.array(whole[:, :n]), whole[:, n:]
    self.parts = [rest] if rest.shape[1] else []
    self.buffered -= n
    return out

  def feed(self, x: np.ndarray) -> list[tuple[int, np.ndarray]]:
    """Adds ``x: [F, n]``; returns the whole windows now complete as ``(col0, [F, W])``."""
    if self.lead:
      self.parts.append(np.zeros((x.shape[0], self.lead), np.float32))
      self.buffered, self.lead = self.buffered + self.lead, 0
    if self.skip:
      dropped = min(self.skip, x.shape[1])
      x, self.skip = x[:, dropped:], self.skip - dropped
    if x.shape[1]:
      self.parts.append(x)
      self.buffered += x.shape[1]
    out = []
    while self.buffered >= self.w:
      out.append((self.col, self._take(self.w)))
      self.col += self.w // self.pw
    return out

  def finish(self) -> list[tuple[int, np.ndarray]]:
    """The last, shorter window (zero-padded to a whole column), if any frames remain."""
    if not self.buffered:
      return []
    n = self.buffered
    x = self._take(n)
    tp = -(-n // self.pw)
    return [(self.col, np.pad(x, ((0, 0), (0, tp * self.pw - n))))]


@dataclasses.dataclass(frozen=True)
class Slot:
  """Where a window's ``tp`` columns sit in a batch: row ``row``, columns from ``c0``."""
  file: int
  shift: int
  col0: int
  row: int
  c0: int
  tp: int


@dataclasses.dataclass
class Batch:
  """The encoder's static inputs for ``B`` rows and where each window went.

  ``windows: [B, F, W]``; ``segment: int32 [B, Tp]`` (segment of each column in its row, -1:
  empty); ``position: int32 [B, Tp]`` (the column's index in its own window: the positional
  table's column); ``cls: int32 [B, S]`` (segment of each CLS slot, -1: unused).
  """
  windows: np.ndarray
  segment: np.ndarray
  position: np.ndarray
  cls: np.ndarray
  slots: list[Slot]
  real_columns: int


class Packer:
  """Windows -> rows of ``cols`` columns, first fit, at most ``segments`` windows per row."""

  def __init__(self, cols: int, patch_width: int, segments: int, open_rows: int = 16):
    if segments < 1:
      raise ValueError(f"segments per row must be >= 1, got {segments}")
    self.cols, self.pw, self.segments, self.open_rows = cols, patch_width, segments, open_rows
    self.rows: list[list[tuple[Window, int]]] = []  # open rows: (window, first column)

  def _used(self, row) -> int:
    """Columns taken: windows are laid out left to right."""
    return row[-1][1] + row[-1][0].columns(self.pw) if row else 0

  def add(self, w: Window) -> list[list[tuple[Window, int]]]:
    """Places ``w``; returns the rows it completed (none while they can still take windows)."""
    tp = w.columns(self.pw)
    if tp >= self.cols or self.segments == 1:
      return [[(w, 0)]]
    for row in self.rows:
      used = self._used(row)
      if used + tp <= self.cols:
        row.append((w, used))
        if used + tp == self.cols or len(row) == self.segments:
          self.rows.remove(row)
          return [row]
        return []
    self.rows.append([(w, 0)])
    if len(self.rows) > self.open_rows:  # the fullest row goes: it gains least by waiting
      full = max(self.rows, key=self._used)
      self.rows.remove(full)
      return [full]
    return []

  def flush(self) -> list[list[tuple[Window, int]]]:
    rows, self.rows = self.rows, []
    return rows


def batch_arrays(rows: list[list[tuple[Window, int]]], size: int, num_freq: int,
                 frames_per_window: int, patch_width: int, segments: int) -> Batch:
  """Rows (at most ``size``) -> a :class:`Batch` of ``size`` rows (the rest empty)."""
  assert len(rows) <= size, (len(rows), size)
  cols = frames_per_window // patch_width
  windows = np.zeros((size, num_freq, frames_per_window), np.float32)
  segment = np.full((size, cols), -1, np.int32)
  position = np.zeros((size, cols), np.int32)
  cls = np.full((size, segments), -1, np.int32)
  slots, real = [], 0
  for r, row in enumerate(rows):
    for s, (w, c0) in enumerate(row):
      tp = w.columns(patch_width)
      windows[r, :, c0 * patch_width:(c0 + tp) * patch_width] = w.data
      segment[r, c0:c0 + tp] = s
      position[r, c0:c0 + tp] = np.arange(tp)
      cls[r, s] = s
      slots.append(Slot(w.file, w.shift, w.col0, r, c0, tp))
      real += tp
  return Batch(windows, segment, position, cls, slots, real)
