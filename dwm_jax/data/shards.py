"""The sharded log-mel layout: many clips per shard object, and a crop reads about its own bytes.

What ``dwm-jax prepare SRC OUT --layout shards`` writes (OUT local or ``gs://``)::

  OUT/clips.csv         file_name,shard,offset,frames: one row per clip (``data.csv`` of
                        ``data.source = 'shards'``); ``offset`` is the clip's first frame in its
                        shard
  OUT/manifest.json     the layout: mel bins, dtype, chunk frames, each shard's name and frames
  OUT/shards/00000/     a Zarr v3 array ``[n_mels, frames]``: the shard's clips one after another
                        along time, stored as one object ``c/0/0`` (``sharding_indexed`` codec)
                        of chunks of all mel bins x ``chunk_frames`` frames, in time order, each
                        with a crc32c, the chunk index (with its own crc32c) at the end;
                        ``zarr.json`` beside it
  OUT/shards/00000.json the shard's record (its clips, skipped files, stats sums), written after
                        the array, so a shard without it is unfinished
  OUT/stats.json, OUT/prepare_report.json   as for the ``.npy`` layout

Chunks that span every mel bin, stored in time order, make a crop of ``T`` frames one contiguous
byte range: a read fetches the chunks that overlap it, about ``(T + chunk_frames) x n_mels x 2``
bytes (for 608 frames, 64-frame chunks and float16, 108 kB against the crop's 97 kB), in one
request; each chunk is ``[n_mels, chunk_frames]``, the model's orientation, so it is copied into
the batch without a transpose. The reader goes through tensorstore's ``zarr3_sharding_indexed``
key-value store: the chunk index of each shard is read once and cached (16 bytes a chunk), the
chunks themselves are not cached, and the chunks of a batch's crops are requested together
(tensorstore joins neighbouring ones into one request). tensorstore's ``zarr3`` driver opens a
shard as an ordinary array. ``docs/data.md`` gives the measurements behind this choice
(ArrayRecord, the other candidate, issues one open-ended request per record from a bucket).
"""
from __future__ import annotations

import csv
import io
import json
import os
import struct
import threading
from typing import Any, Sequence

import numpy as np

from dwm_jax import faults, paths
from dwm_jax.data.sources import (PAD_VALUE, READ_ERRORS, BadRecord, LogMelSource, Request,
                                  read_error, tensorstore_context, window)

LAYOUT = "dwm-jax log-mel shards"
VERSION = 1
MANIFEST = "manifest.json"
CLIPS = "clips.csv"
SHARDS_DIR = "shards"
CHUNK_FRAMES = 64
# The stored object of a one-chunk-grid array (zarr3 "default" chunk keys), and what each
# chunk index entry costs in memory (offset and length, uint64 each).
SHARD_KEY = "c/0/0"
INDEX_BYTES_PER_CHUNK = 16


class ShardSetError(faults.UsageFault):
  """A prepared shard set that cannot be read as given: no manifest (an unfinished prepare),
  wrong columns, another layout version or number of mel bins."""


def shard_name(shard: int) -> str:
  return f"{SHARDS_DIR}/{shard:05d}"


def zarr_metadata(frames: int, n_mels: int, dtype: str, chunk_frames: int) -> dict:
  """Zarr v3 metadata of one shard ``[n_mels, frames]``: a single outer chunk (one object)
  holding ``[n_mels, chunk_frames]`` chunks, little-endian, each with a crc32c."""
  outer = -(-max(frames, 1) // chunk_frames) * chunk_frames
  return {
      "zarr_format": 3, "node_type": "array", "shape": [n_mels, frames], "data_type": dtype,
      "chunk_grid": {"name": "regular", "configuration": {"chunk_shape": [n_mels, outer]}},
      "chunk_key_encoding": {"name": "default", "configuration": {"separator": "/"}},
      "fill_value": 0.0,
      "codecs": [{"name": "sharding_indexed", "configuration": {
          "chunk_shape": [n_mels, chunk_frames],
          "codecs": [{"name": "bytes", "configuration": {"endian": "little"}}, {"name": "crc32c"}],
          "index_codecs": [{"name": "bytes", "configuration": {"endian": "little"}},
                           {"name": "crc32c"}],
          "index_location": "end"}}]}


def write_shard(folder: str, x: np.ndarray, chunk_frames: int) -> None:
  """Writes ``x: [n_mels, frames]`` as the shard array at ``folder`` (replacing what is there).

  Every chunk is stored, even one equal to the fill value, so a missing chunk always means
  damage. Deterministic: the same ``x`` gives the same objects, byte for byte."""
  import tensorstore as ts  # pylint: disable=import-outside-toplevel
  spec = {"driver": "zarr3", "kvstore": paths.kvstore_spec(folder),
          "metadata": zarr_metadata(x.shape[1], x.shape[0], x.dtype.name, chunk_frames),
          "create": True, "delete_existing": True, "store_data_equal_to_fill_value": True}
  ts.open(spec).result().write(x).result()


def _layout_of(meta: dict) -> tuple:
  """What a reader of the chunks relies on in a shard's ``zarr.json`` (written defaults left out
  by tensorstore filled back in)."""
  try:
    (codec,) = meta["codecs"]
    inner = codec["configuration"]
    return (meta["shape"], meta["data_type"], meta["chunk_grid"], codec["name"],
            inner["chunk_shape"], inner["codecs"], inner["index_codecs"],
            inner.get("index_location", "end"))
  except (KeyError, TypeError, ValueError):
    return ()


def decode_chunk(value: bytes, dtype: np.dtype, n_mels: int, chunk_frames: int,
                 where: str) -> np.ndarray:
  """A stored chunk (``bytes`` codec, then crc32c) -> ``[n_mels, chunk_frames]``; raises
  :class:`BadRecord` ('corrupt') when its length or checksum is wrong."""
  import google_crc32c  # pylint: disable=import-outside-toplevel
  size = chunk_frames * n_mels * dtype.itemsize
  if len(value) != size + 4:
    raise BadRecord(where, "corrupt", f"a chunk of {len(value)} bytes, not {size + 4}")
  if google_crc32c.value(value[:size]) != int.from_bytes(value[size:], "little"):
    raise BadRecord(where, "corrupt", "a chunk's crc32c does not match")
  return np.frombuffer(value, dtype, count=chunk_frames * n_mels).reshape(n_mels, chunk_frames)


def write_manifest(out: str, records: Sequence[dict], *, n_mels: int, dtype: str,
                   chunk_frames: int) -> None:
  """Writes ``clips.csv`` then ``manifest.json`` (last: a set without it is unfinished) of the
  shards whose ``records`` (one per shard, in order: ``shard``, ``frames``, ``clips`` =
  ``[{"file_name", "frames"}, ...]`` in the order they are stored) are given."""
  rows = []
  for r in records:
    offset = 0
    for c in r["clips"]:
      rows.append([c["file_name"], r["shard"], offset, c["frames"]])
      offset += c["frames"]
  text = io.StringIO()
  csv.writer(text, lineterminator="\n").writerows([["file_name", "shard", "offset", "frames"],
                                                   *rows])
  paths.write_text(paths.join(out, CLIPS), text.getvalue())
  manifest = {"layout": LAYOUT, "version": VERSION, "n_mels": n_mels, "dtype": dtype,
              "chunk_frames": chunk_frames, "clips": len(rows),
              "frames": sum(r["frames"] for r in records),
              "shards": [{"name": shard_name(r["shard"]), "clips": len(r["clips"]),
                          "frames": r["frames"]} for r in records]}
  paths.write_text(paths.join(out, MANIFEST), json.dumps(manifest, indent=1) + "\n")


def read_manifest(csv_path: str) -> tuple[dict, dict[str, np.ndarray]]:
  """``(manifest, clips)`` of a prepared set: ``clips`` has ``file_name`` (bytes), ``shard``,
  ``offset``, ``frames`` arrays, one entry per clip. Errors name the file and what to do."""
  csv_path = os.fspath(csv_path)
  root = paths.parent(csv_path)
  manifest_path = paths.join(root, MANIFEST)
  if not paths.isfile(csv_path):
    raise ShardSetError(f"clip list not found: {csv_path}")
  if not paths.isfile(manifest_path):
    raise ShardSetError(f"{manifest_path} not found: {csv_path} is not in a folder written by "
                        "`dwm-jax prepare --layout shards`, or that run did not finish (rerun "
                        "it to complete the set)")
  try:
    manifest = json.loads(paths.read_text(manifest_path))
  except ValueError as e:
    raise ShardSetError(f"{manifest_path}: not JSON ({e})") from e
  if manifest.get("layout") != LAYOUT or manifest.get("version") != VERSION:
    raise ShardSetError(f"{manifest_path}: not a version-{VERSION} '{LAYOUT}' manifest; prepare "
                        "the set with this version")
  reader = csv.reader(io.StringIO(paths.read_text(csv_path), newline=""))
  header = next(reader, None)
  if header != ["file_name", "shard", "offset", "frames"]:
    raise ShardSetError(f"{csv_path}: needs the columns file_name,shard,offset,frames, has "
                        f"{header}")
  rows = list(reader)
  if not rows:
    raise ShardSetError(f"{csv_path}: no clips listed")
  try:
    names, shard, offset, frames = zip(*rows)
    clips = {"file_name": np.array(names, dtype=np.bytes_),
             "shard": np.array(shard, np.int64), "offset": np.array(offset, np.int64),
             "frames": np.array(frames, np.int64)}
  except ValueError as e:
    raise ShardSetError(f"{csv_path}: unreadable rows ({e})") from e
  shard_frames = np.array([s["frames"] for s in manifest["shards"]], np.int64)
  if (clips["shard"].min() < 0 or clips["shard"].max() >= len(shard_frames) or
      np.any(np.diff(clips["shard"]) < 0) or np.any(clips["frames"] < 1) or
      np.any(clips["offset"] + clips["frames"] > shard_frames[clips["shard"]])):
    raise ShardSetError(f"{csv_path}: clips out of shard order or outside their shards; does it "
                        f"belong to {manifest_path}?")
  return manifest, clips


class ShardSource(LogMelSource):
  """Clips of the sharded layout; :meth:`read_into` reads only each window's chunks, every
  request of a batch in flight at once."""

  def __init__(self, csv_path: str | os.PathLike, n_mels: int = 80):
    super().__init__()
    csv_path = os.fspath(csv_path)
    self.root = paths.parent(csv_path)
    self.manifest, clips = read_manifest(csv_path)
    m = self.manifest
    if int(m["n_mels"]) != n_mels:
      raise ShardSetError(f"{csv_path}: the shards hold {m['n_mels']} mel bins, the model wants "
                          f"{n_mels} (model.input_shape)")
    self.names, self.shard = clips["file_name"], clips["shard"]
    self.offset, self.frames = clips["offset"], clips["frames"]
    self.n_mels, self.chunk_frames = n_mels, int(m["chunk_frames"])
    self.dtype = np.dtype(m["dtype"])
    self.shard_chunks = [-(-int(s["frames"]) // self.chunk_frames) for s in m["shards"]]
    try:
      paths.kvstore_spec(self.root)  # read with tensorstore: local or gs://
    except ValueError as e:
      raise ShardSetError(f"{e}; copy the set there") from e
    self._check_first_shard()
    self._open_lock = threading.Lock()
    self._open_stores: dict[int, Any] = {}
    self._open_context = None

  def __setstate__(self, state: dict) -> None:
    super().__setstate__(state)
    self._open_lock, self._open_stores, self._open_context = threading.Lock(), {}, None

  def _check_first_shard(self) -> None:
    shard = int(self.shard[0])
    path = paths.join(self.root, shard_name(shard), "zarr.json")
    want = zarr_metadata(int(self.manifest["shards"][shard]["frames"]), self.n_mels,
                         self.dtype.name, self.chunk_frames)
    try:
      got = json.loads(paths.read_text(path))
    except (OSError, ValueError) as e:
      raise ShardSetError(f"cannot read {path} ({faults.one_line(e)}); is the set complete?") \
          from e
    if _layout_of(got) != _layout_of(want):
      raise ShardSetError(f"{path}: not the shard layout this reader knows ({LAYOUT} "
                          f"v{VERSION}); prepare the set again with this version")

  def __len__(self) -> int:
    return len(self.frames)

  def describe(self, index: int) -> str:
    return (f"{self.names[index].decode()} (frames {self.offset[index]}:"
            f"{self.offset[index] + self.frames[index]} of "
            f"{paths.join(self.root, shard_name(int(self.shard[index])))})")

  def index_bytes(self) -> int:
    """Memory the chunk indexes of every shard take once all were read (per process)."""
    return sum(n * INDEX_BYTES_PER_CHUNK + 4 for n in self.shard_chunks)

  def _store(self, shard: int) -> Any:
    with self._open_lock:
      store = self._open_stores.get(shard)
      if store is None:
        if self._open_context is None:  # room for every shard's chunk index, and some slack
          self._open_context = tensorstore_context(self.index_bytes() * 5 // 4 + (1 << 20))
        store = _sharded_store(paths.join(self.root, shard_name(shard)),
                               self.shard_chunks[shard], self._open_context)
        self._open_stores[shard] = store
      return store

  def load(self, index: int) -> np.ndarray:
    out = np.empty((1, self.n_mels, int(self.frames[index])), np.float32)
    (error,) = self.read_into([(index, 0.0)], out)
    if error is not None:
      raise error
    return out[0]

  def read_into(self, requests: Sequence[Request], out: np.ndarray) -> list[Any]:
    import tensorstore as ts  # pylint: disable=import-outside-toplevel
    c, frames = self.chunk_frames, out.shape[2]
    plans = []
    with ts.Batch() as batch:  # every read is submitted when the block ends
      for i, u in requests:
        start, stop = window(int(self.frames[i]), frames, u)
        lo, hi = int(self.offset[i]) + start, int(self.offset[i]) + stop
        try:
          store = self._store(int(self.shard[i]))
        except READ_ERRORS as e:
          plans.append((i, lo, hi, read_error(e, self.describe(i), scope="shard")))
          continue
        # staleness_bound=0: a cached chunk index is used as it is, never revalidated (a
        # request per shard and batch); shards are written once and never change.
        plans.append((i, lo, hi, [store.read(_chunk_key(k), batch=batch, staleness_bound=0)
                                  for k in range(lo // c, (hi - 1) // c + 1)]))
    return [self._put(row, *plan) for row, plan in zip(out, plans)]

  def _put(self, row: np.ndarray, index: int, lo: int, hi: int, futures: Any) -> Any:
    """Writes shard frames ``[lo, hi)`` into ``row`` (padded with silence) from the reads of
    their chunks; returns None, or the exception that explains why not."""
    if isinstance(futures, Exception):
      return futures
    where, c = self.describe(index), self.chunk_frames
    try:
      for k, future in enumerate(futures):
        try:  # what fails here is the shard's object or its chunk index
          result = future.result()
        except READ_ERRORS as e:
          raise read_error(e, where, scope="shard") from e
        if result.state != "value":
          raise BadRecord(where, "missing", "the shard's object or chunk", scope="shard")
        chunk = decode_chunk(result.value, self.dtype, self.n_mels, c, where)
        first = (lo // c + k) * c  # shard frame of the chunk's column 0
        a, b = max(lo, first), min(hi, first + c)
        row[:, a - lo:b - lo] = chunk[:, a - first:b - first]
    except BadRecord as e:
      return e
    row[:, hi - lo:] = PAD_VALUE
    return None

  def replacement(self, index: int, error: BaseException) -> int:
    """The next clip, or the first clip of the next shard when the shard itself failed (its
    object or its chunk index): every clip of it would fail the same way."""
    if getattr(error, "scope", "record") != "shard":
      return (index + 1) % len(self)
    return int(np.searchsorted(self.shard, self.shard[index], side="right")) % len(self)


def _chunk_key(chunk: int) -> bytes:
  """Key of chunk ``chunk`` (along time) in a shard's ``zarr3_sharding_indexed`` store."""
  return struct.pack(">II", 0, chunk)


def _sharded_store(folder: str, chunks: int, context: Any) -> Any:
  """The chunks of the shard array at ``folder`` as a key-value store (keys: :func:`_chunk_key`);
  raises ValueError for a bucket tensorstore does not read."""
  import tensorstore as ts  # pylint: disable=import-outside-toplevel
  base = paths.kvstore_spec(folder)
  spec = {"driver": "zarr3_sharding_indexed", "base": {**base, "path": base["path"] + SHARD_KEY},
          "grid_shape": [1, chunks],
          "index_codecs": [{"name": "bytes", "configuration": {"endian": "little"}},
                           {"name": "crc32c"}]}
  return ts.KvStore.open(spec, context=context).result()
