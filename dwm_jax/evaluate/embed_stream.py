"""Embedding many log-mel streams on the accelerator: windows of any files, one compiled shape.

Each source yields its raw log-mel in chunks (a file is never held whole). Reader threads
normalize the chunks and cut them into encoder windows (:class:`windows.Cutter`, one per
timestamp shift); the loop packs windows of any files into rows of the encoder's input
(:class:`windows.Packer`) and runs batches of ``B`` rows through one compiled program
(:mod:`dwm_jax.evaluate.packed_encoder`): while the device encodes batch ``k``, the host routes
the results of batch ``k - 1`` and fills batch ``k + 1``. A file's frame embeddings reach the sink
in time order as they come back; when its last window is back the sink gets its clip embedding
(the mean of the frames of the unshifted stream: M2D's, the probe's). The host holds at most
:func:`host_windows_bound` windows at once (cut, not yet copied into a batch), and the device two
batches, whatever the files' lengths.

Output positions: with ``n`` streams starting ``starts = (s_0, s_0 + h, ...)`` frames into the
log-mel (``h = pw / n``), position ``k`` is column ``k // n`` of stream ``k % n`` and starts at
frame ``s_0 + k h``; a file of ``T`` log-mel frames has every position that starts inside it,
``ceil((T - s_0) / h)``. One stream at 0 gives the ``ceil(T / pw)`` columns of ``encode_lms``.
"""
from __future__ import annotations

import dataclasses
import queue
import threading
from typing import Any, Callable, Generator, Iterable, Iterator, Protocol

import jax
import numpy as np

from dwm_jax import faults
from dwm_jax.data.audio_io import AudioError
from dwm_jax.evaluate.encoder import Encoder
from dwm_jax.evaluate.packed_encoder import packed_forward
from dwm_jax.evaluate.windows import Cutter, Packer, Window, batch_arrays


class Source(Protocol):
  """One file: ``key`` names it to the sink; ``logmel_chunks()`` yields raw log-mel ``[F, n]``
  chunks and returns the number of 16 kHz samples it came from (None when unknown)."""
  key: Any

  def logmel_chunks(self) -> Generator[np.ndarray, None, int | None]: ...


@dataclasses.dataclass(frozen=True)
class Result:
  """A finished file: ``clip [E]`` float32, ``positions`` frame embeddings given to the sink,
  ``logmel_frames`` ``T``, ``num_samples`` (None when the source does not know)."""
  key: Any
  clip: np.ndarray
  positions: int
  logmel_frames: int
  num_samples: int | None


class Sink(Protocol):
  def frames(self, key: Any, start: int, frames: np.ndarray, layers: np.ndarray | None
             ) -> None: ...  # positions [start, start + n): frames [n, E], layers [n, L, E]
  def done(self, result: Result) -> None: ...
  def failed(self, key: Any, error: AudioError) -> None: ...
  def abandoned(self, key: Any) -> None: ...  # stopped before its end (``stop`` was set)


@dataclasses.dataclass
class Stats:
  """``columns``: patch columns encoded; ``real_columns``: those holding a window's columns;
  ``max_host_windows``: the most windows cut and not yet copied into a batch at one time."""
  batches: int = 0
  columns: int = 0
  real_columns: int = 0
  max_host_windows: int = 0
  files_done: int = 0
  files_failed: int = 0

  @property
  def packing(self) -> float:
    return self.real_columns / self.columns if self.columns else 0.0


# ------------------------------------------------------------------------------------------
# Per-file assembly.

class _File:
  """Pieces of one file's windows -> its positions in order, and its clip sum."""

  def __init__(self, source: Source, streams: int, default: int, cols: int):
    self.key, self.n, self.default, self.cols = source.key, streams, default, cols
    self.pieces: dict[tuple[int, int], tuple[np.ndarray, np.ndarray | None]] = {}
    self.block = 0          # next window index to hand out
    self.written = 0        # positions handed to the sink
    self.received = 0       # windows back
    self.expected = None    # windows in all, from the reader's end event
    self.total = None       # positions in all
    self.logmel_frames = 0
    self.num_samples = None
    self.clip_sum = None
    self.clip_count = 0

  def end(self, logmel_frames: int, num_samples: int | None, windows: int, first: int,
          hop: int) -> None:
    self.logmel_frames, self.num_samples, self.expected = logmel_frames, num_samples, windows
    self.total = -(-(logmel_frames - first) // hop)

  def add(self, shift: int, col0: int, frames: np.ndarray, layers: np.ndarray | None) -> None:
    self.received += 1
    if shift == self.default:  # the clip: the mean of every column of the unshifted stream
      # Row after row in float32, then divided in float64: ``frames.mean(axis=0)`` of the whole
      # file to the bit (numpy adds the rows of an axis-0 reduction in order), never holding it.
      rows = frames if self.clip_sum is None else np.concatenate([self.clip_sum[None], frames])
      self.clip_sum = np.add.reduce(rows, axis=0)
      self.clip_count += frames.shape[0]
    self.pieces[(shift, col0)] = (frames, layers)

  @property
  def complete(self) -> bool:
    return self.expected is not None and self.received == self.expected

  def ready(self) -> Iterator[tuple[int, np.ndarray, np.ndarray | None]]:
    """``(start, frames, layers)`` of the next whole blocks of positions that are back."""
    n = self.n
    while True:
      col0 = self.block * self.cols
      lo = col0 * n
      hi = (col0 + self.cols) * n if self.total is None else min((col0 + self.cols) * n,
                                                                  self.total)
      if lo >= hi or not all((j, col0) in self.pieces for j in range(min(n, hi - lo))):
        return
      parts = [self.pieces.pop((j, col0)) for j in range(min(n, hi - lo))]
      if n == 1:
        frames, layers = parts[0][0][:hi - lo], parts[0][1]
        layers = None if layers is None else layers[:hi - lo]
      else:  # position k = column k // n of stream k % n
        frames = _interleave([p[0] for p in parts], hi - lo, n)
        layers = None if parts[0][1] is None else _interleave([p[1] for p in parts], hi - lo, n)
      self.block += 1
      self.written = hi
      yield lo, frames, layers

  def result(self) -> Result:
    clip = (self.clip_sum.astype(np.float64) / self.clip_count).astype(np.float32)
    return Result(self.key, clip, self.written, self.logmel_frames, self.num_samples)


def _interleave(parts: list[np.ndarray], count: int, n: int) -> np.ndarray:
  cols = -(-count // n)
  out = np.zeros((cols, n) + parts[0].shape[1:], parts[0].dtype)
  for j, p in enumerate(parts):
    m = min(cols, p.shape[0])
    out[:m, j] = p[:m]
  return out.reshape((cols * n,) + parts[0].shape[1:])[:count]


# ------------------------------------------------------------------------------------------
# Readers.

@dataclasses.dataclass(frozen=True)
class _Start:
  file: int
  source: Any


@dataclasses.dataclass(frozen=True)
class _End:
  file: int
  logmel_frames: int
  num_samples: int | None
  windows: int


@dataclasses.dataclass(frozen=True)
class _Failed:
  file: int
  error: AudioError | None  # None: stopped, not failed


@dataclasses.dataclass(frozen=True)
class _Crash:
  error: BaseException


class _Gauge:
  """Windows on the host (cut, not yet in a batch or dropped) and their high-water mark."""

  def __init__(self):
    self.lock, self.now, self.max = threading.Lock(), 0, 0

  def add(self, n: int) -> None:
    with self.lock:
      self.now += n
      self.max = max(self.max, self.now)


def _file_events(fid: int, source: Source, encoder: Encoder, starts: tuple[int, ...],
                 gauge: _Gauge, stop: threading.Event | None) -> Iterator[Any]:
  """One file's events: start, its windows, end (before the tail windows), or failed."""
  yield _Start(fid, source)
  f, w = encoder.input_shape
  cutters = [Cutter(w, encoder.patch_size[1], s) for s in starts]
  count = frames = 0
  try:
    chunks = source.logmel_chunks()
    while True:
      if stop is not None and stop.is_set():
        yield _Failed(fid, None)
        return
      try:
        x = next(chunks)
      except StopIteration as e:
        num_samples = e.value
        break
      x = np.asarray(x, np.float32)
      if x.ndim != 2 or x.shape[0] != f:
        raise AudioError(str(source.key), "unreadable", f"log-mel must be [{f}, T], got "
                         f"shape {list(x.shape)}")
      if not np.isfinite(x).all():
        raise AudioError(str(source.key), "nan", "log-mel contains NaN or Inf")
      frames += x.shape[1]
      x = (x - encoder.norm_mean) / encoder.norm_std
      for j, cutter in enumerate(cutters):
        for col0, data in cutter.feed(x):
          count += 1
          gauge.add(1)
          yield Window(fid, j, col0, data)
    if frames == 0:
      raise AudioError(str(source.key), "empty")
    tail = [(j, c, d) for j, cutter in enumerate(cutters) for c, d in cutter.finish()]
    gauge.add(len(tail))
    yield _End(fid, frames, num_samples, count + len(tail))
    for j, col0, data in tail:
      yield Window(fid, j, col0, data)
  except AudioError as e:
    yield _Failed(fid, e)
  except Exception as e:  # pylint: disable=broad-except  (one bad file must not stop the run)
    yield _Failed(fid, AudioError(str(source.key), "unreadable", faults.one_line(e)))


def _events(sources: Iterable[Source], make: Callable, workers: int, max_queue: int,
            stop: threading.Event | None) -> Iterator[Any]:
  """Every file's events, read by ``workers`` threads (0: in this thread, in order)."""
  if workers <= 0:
    for fid, source in enumerate(sources):
      if stop is not None and stop.is_set():
        return
      yield from make(fid, source)
    return
  q: queue.Queue = queue.Queue(max_queue)
  items, lock, closing = enumerate(sources), threading.Lock(), threading.Event()
  done_marker = object()

  def put(ev) -> None:
    while not closing.is_set():
      try:
        q.put(ev, timeout=0.1)
        return
      except queue.Full:
        continue

  def reader() -> None:
    try:
      while not closing.is_set() and not (stop is not None and stop.is_set()):
        with lock:
          item = next(items, None)
        if item is None:
          break
        for ev in make(*item):
          put(ev)
    except BaseException as e:  # pylint: disable=broad-except  (re-raised in the loop)
      put(_Crash(e))
    finally:
      put(done_marker)

  threads = [threading.Thread(target=reader, daemon=True, name=f"embed-reader-{i}")
             for i in range(workers)]
  for t in threads:
    t.start()
  try:
    finished = 0
    while finished < workers:
      ev = q.get()
      if ev is done_marker:
        finished += 1
      elif isinstance(ev, _Crash):
        raise ev.error
      else:
        yield ev
  finally:
    closing.set()
    for t in threads:
      t.join(timeout=5)


# ------------------------------------------------------------------------------------------
# The loop.

def host_windows_bound(batch_size: int, segments: int, workers: int, streams: int,
                       chunk_windows: int) -> int:
  """The most windows the host holds at once: the reader queue (``2 B``), each reader's current
  chunk (``chunk_windows`` per stream, plus the tail), the open rows (``B`` rows of fewer than
  ``S`` windows) and the rows waiting for their batch (under ``B`` rows, plus one row)."""
  return (2 * batch_size + max(workers, 1) * (chunk_windows + 1) * streams
          + batch_size * (segments - 1) + batch_size * segments)


def _pow2_at_least(n: int) -> int:
  return 1 << max(0, (n - 1).bit_length())


def run(encoder: Encoder, sources: Iterable[Source], sink: Sink, *, batch_size: int = 32,
        starts: tuple[int, ...] = (0,), layers: bool = False, segments: int = 4,
        workers: int = 0, mesh: jax.sharding.Mesh | None = None, forward: Callable | None = None,
        shrink_last: bool = False, stop: threading.Event | None = None) -> Stats:
  """Embeds every source; returns the run's :class:`Stats`.

  Args:
    batch_size: rows per device call (with ``mesh``, a multiple of its devices).
    starts: the first frame of each timestamp stream (see the module docstring); one of them
      must be 0 (the clip embedding's).
    layers: also give the sink every block's output (``[n, L, E]``).
    segments: windows per row (CLS slots).
    workers: reader threads (0: read in this thread).
    mesh: split the batch over these devices (None: the default device).
    forward: the compiled program to call (default: ``packed_forward``, jitted per shape).
    shrink_last: run the last batch at the next power of two of its rows (in-memory use: a few
      clips need not pay for a whole batch; each size compiles once).
    stop: when set, files not finished are abandoned and the loop drains and returns.
  """
  f, w = encoder.input_shape
  pw = encoder.patch_size[1]
  cols = w // pw
  if 0 not in starts:
    raise ValueError(f"one stream must start at frame 0 (the clip's), got starts {starts}")
  hop = pw // len(starts)
  forward = forward or packed_forward(encoder, layers)
  if mesh is None:
    params = jax.device_put(encoder.params)
    table = jax.device_put(encoder.position_table)
    place = lambda *arrays: arrays
  else:
    from dwm_jax.train import mesh as mesh_lib  # pylint: disable=import-outside-toplevel
    params = jax.device_put(encoder.params, mesh_lib.replicated(mesh))
    table = jax.device_put(encoder.position_table, mesh_lib.replicated(mesh))
    split = mesh_lib.batch_sharded(mesh)
    place = lambda *arrays: tuple(jax.device_put(a, split) for a in arrays)
  gauge, stats = _Gauge(), Stats()
  packer = Packer(cols, pw, segments, open_rows=batch_size)
  files: dict[int, _File] = {}
  dropped: set[int] = set()
  pending: list[Any] = []  # [(device output, slots)]: the batch on the device

  def finish(fid: int) -> None:
    state = files.pop(fid)
    for start, frames, lay in state.ready():
      sink.frames(state.key, start, frames, lay)
    assert state.written == state.total and not state.pieces, (state.key, state.written,
                                                                state.total, list(state.pieces))
    sink.done(state.result())
    stats.files_done += 1

  def collect() -> None:
    out, slots = pending.pop()
    host = np.asarray(out)
    for s in slots:
      if s.file in dropped:
        continue
      piece = np.array(host[s.row, s.c0:s.c0 + s.tp])  # a copy: the batch's array can go
      frames, lay = (piece[:, -1], piece) if layers else (piece, None)
      state = files[s.file]
      state.add(s.shift, s.col0, frames, lay)
      for start, fr, ly in state.ready():
        sink.frames(state.key, start, fr, ly)
      if state.complete:
        finish(s.file)

  def dispatch(rows: list) -> None:
    size = batch_size
    if shrink_last and len(rows) < batch_size:
      size = min(batch_size, _pow2_at_least(len(rows)))
    b = batch_arrays(rows, size, f, w, pw, segments)
    gauge.add(-len(b.slots))
    out = forward(params, table, *place(b.windows, b.segment, b.position, b.cls))
    stats.batches += 1
    stats.columns += size * cols
    stats.real_columns += b.real_columns
    if pending:
      collect()  # the previous batch, while the device runs this one
    pending.append((out, b.slots))

  def make(fid, source):
    return _file_events(fid, source, encoder, tuple(starts), gauge, stop)

  rows: list = []
  for ev in _events(sources, make, workers, 2 * batch_size, stop):
    if isinstance(ev, Window):
      if ev.file in dropped:
        gauge.add(-1)
        continue
      rows += packer.add(ev)
      while len(rows) >= batch_size:
        dispatch(rows[:batch_size])
        rows = rows[batch_size:]
    elif isinstance(ev, _Start):
      files[ev.file] = _File(ev.source, len(starts), starts.index(0), cols)
    elif isinstance(ev, _End):
      files[ev.file].end(ev.logmel_frames, ev.num_samples, ev.windows, starts[0], hop)
      if files[ev.file].complete:
        finish(ev.file)
    elif isinstance(ev, _Failed):
      state = files.pop(ev.file)
      dropped.add(ev.file)
      if ev.error is None:
        sink.abandoned(state.key)
      else:
        sink.failed(state.key, ev.error)
        stats.files_failed += 1
  rows += packer.flush()
  while rows:
    dispatch(rows[:batch_size])
    rows = rows[batch_size:]
  if pending:
    collect()
  for fid in list(files):  # stopped mid-file: its windows never came
    sink.abandoned(files.pop(fid).key)
  stats.max_host_windows = gauge.max
  return stats
