"""The sharded layout's candidates, measured from the bucket: what one 608-frame crop costs.

64 random 10 s clips (float16 ``[80, 1001]``) are stored in a bucket on 127.0.0.1 (``bucket.py``:
fake-gcs-server behind a latency proxy) in each candidate layout, 16 clips per shard:

- ``zarr3 + sharding store``: the chosen layout (``dwm_jax.data.shards``): chunks of 80 x 64
  frames read through tensorstore's ``zarr3_sharding_indexed`` key-value store, a batch's reads
  submitted together;
- ``zarr3 driver``: the same shards through tensorstore's ``zarr3`` array driver, one read per
  crop, its cache as large as the chosen reader's (the chunk indexes and the chunks share it);
- ``ArrayRecord, a clip per record``: ``array_record`` 0.8's own ``gs://`` reader, a shard file per
  16 clips, uncompressed, ``group_size:1``, the reader's random-access options;
- ``ArrayRecord, 64 frames per record``: the same, each clip split into 64-frame records so a
  crop reads only the records it overlaps;
- ``.npy per clip``: one object per clip (M2D's layout), read whole through tensorstore.

For each: bytes that crossed the proxy and HTTP requests per crop, and the wall time of a batch of
64 crops (every crop of the batch requested before any is waited for) at each added latency,
median of ``--rounds``. Writes ``candidates.csv`` and ``candidates.md`` to ``--out``.

  python experiments/input_pipeline/candidates.py            # ~1 min
"""
from __future__ import annotations

import argparse
import concurrent.futures
import csv
import io
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from bucket import Bucket  # pylint: disable=wrong-import-position

from dwm_jax import paths  # pylint: disable=wrong-import-position
from dwm_jax.data import shards, sources  # pylint: disable=wrong-import-position

CLIPS, PER_SHARD, FRAMES, LENGTH, BLOCK = 64, 16, 608, 1001, 64
FIELDS = ("candidate", "latency_ms", "kb_per_crop", "requests_per_crop", "ms_per_batch")


def make_sets(bucket: Bucket, tmp: Path, clips: list[np.ndarray]) -> dict:
  """Writes every candidate layout of ``clips``; returns how to read a batch from each."""
  # pylint: disable=import-outside-toplevel
  from array_record.python.array_record_module import ArrayRecordWriter
  root = f"{bucket.url}/candidates"
  records = []
  for k in range(CLIPS // PER_SHARD):
    group = clips[k * PER_SHARD:(k + 1) * PER_SHARD]
    shards.write_shard(paths.join(root, "zarr", shards.shard_name(k)),
                       np.concatenate(group, axis=1), shards.CHUNK_FRAMES)
    records.append({"shard": k, "frames": PER_SHARD * LENGTH, "clips": [
        {"file_name": f"c{k * PER_SHARD + i}", "frames": LENGTH} for i in range(PER_SHARD)]})
    for kind, pieces in (("whole", lambda x: [x]),
                         ("blocks", lambda x: [x[:, s:s + BLOCK]
                                               for s in range(0, LENGTH, BLOCK)])):
      local = tmp / f"{kind}-{k}.array_record"
      w = ArrayRecordWriter(str(local), "group_size:1,uncompressed")
      for x in group:
        for piece in pieces(x):
          w.write(np.ascontiguousarray(piece).tobytes())
      w.close()
      paths.write_bytes(f"{root}/ar-{kind}/{k}.array_record", local.read_bytes())
  shards.write_manifest(paths.join(root, "zarr"), records, n_mels=80, dtype="float16",
                        chunk_frames=shards.CHUNK_FRAMES)
  for i, x in enumerate(clips):
    buf = io.BytesIO()
    np.save(buf, x)
    paths.write_bytes(f"{root}/npy/c{i}.npy", buf.getvalue())
  paths.write_text(f"{root}/npy/files.csv",
                   "file_name\n" + "".join(f"c{i}.npy\n" for i in range(CLIPS)))
  return {"zarr": f"{root}/zarr/{shards.CLIPS}", "npy": f"{root}/npy/files.csv",
          "ar-whole": f"{root}/ar-whole", "ar-blocks": f"{root}/ar-blocks"}


class ZarrDriver:
  """The shards through tensorstore's zarr3 driver, one read per crop, with the memory the chosen
  reader gives its chunk indexes: the driver keeps the indexes and the chunks it read in one
  cache, so on a set much larger than memory (here: than that cache) the chunks push the
  indexes out."""

  def __init__(self, clips_csv: str):
    import tensorstore as ts  # pylint: disable=import-outside-toplevel
    self.src = shards.ShardSource(clips_csv)
    limit = self.src.index_bytes() * 5 // 4 + (1 << 20)  # as ShardSource's own
    ctx = ts.Context({"cache_pool": {"total_bytes_limit": limit}})
    self.arrays = [ts.open({"driver": "zarr3", "kvstore": paths.kvstore_spec(
        paths.join(self.src.root, shards.shard_name(k))), "recheck_cached_data": False,
                            "recheck_cached_metadata": False}, context=ctx).result()
                   for k in range(CLIPS // PER_SHARD)]

  def batch(self, requests, frames):
    import tensorstore as ts  # pylint: disable=import-outside-toplevel
    with ts.Batch() as b:
      futures = []
      for i, u in requests:
        start, stop = sources.window(LENGTH, frames, u)
        off = int(self.src.offset[i])
        futures.append(self.arrays[int(self.src.shard[i])][:, off + start:off + stop].read(
            batch=b))
    return [f.result() for f in futures]


class ArrayRecordSet:
  """A shard file per ``PER_SHARD`` clips; ``per_clip`` records per clip (1: whole clips)."""

  def __init__(self, folder: str, per_clip: int):
    # pylint: disable=import-outside-toplevel
    from array_record.python.array_record_module import ArrayRecordReader
    self.per_clip = per_clip
    self.readers = [ArrayRecordReader(f"{folder}/{k}.array_record",
                                      "readahead_buffer_size:0,max_parallelism:16")
                    for k in range(CLIPS // PER_SHARD)]
    self.pool = concurrent.futures.ThreadPoolExecutor(16)

  def batch(self, requests, frames):
    def one(request):
      i, u = request
      start, stop = sources.window(LENGTH, frames, u)
      k, j = divmod(i, PER_SHARD)
      if self.per_clip == 1:
        keys, first = [j], 0
      else:
        first = start // BLOCK
        keys = [j * self.per_clip + b for b in range(first, (stop - 1) // BLOCK + 1)]
      raw = self.readers[k].read(keys)
      x = np.concatenate([np.frombuffer(r, np.float16).reshape(80, -1) for r in raw], axis=1)
      return x[:, start - first * BLOCK:stop - first * BLOCK]
    return list(self.pool.map(one, requests))


def wait_until_quiet(bucket: Bucket, seconds: float = 0.3) -> None:
  """Returns once nothing has crossed the proxy for ``seconds``."""
  before = bucket.counters()["bytes_down"]
  while True:
    time.sleep(seconds)
    now = bucket.counters()["bytes_down"]
    if now == before:
      return
    before = now


def main(argv: list[str] | None = None) -> int:
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--latency-ms", default="0,30")
  p.add_argument("--rounds", type=int, default=3)
  p.add_argument("--data", default="/tmp/dwm_input_pipeline/candidates")
  p.add_argument("--out", default=str(Path(__file__).parent / "results"))
  args = p.parse_args(argv)
  tmp = Path(args.data)
  tmp.mkdir(parents=True, exist_ok=True)
  rng = np.random.default_rng(0)
  clips = [rng.normal(-5, 3, (80, LENGTH)).astype(np.float16) for _ in range(CLIPS)]
  bucket = Bucket(tmp / "bucket", name=f"cand-{os.getpid()}")
  os.environ["CLOUD_STORAGE_EMULATOR_ENDPOINT"] = os.environ[paths.EMULATOR_ENV]  # array_record
  rows = []
  try:
    sets = make_sets(bucket, tmp, clips)
    readers = {
        "zarr3 + sharding store (chosen)": shards.ShardSource(sets["zarr"]),
        "zarr3 driver": ZarrDriver(sets["zarr"]),
        ".npy per clip": sources.NpySource(sets["npy"]),
        "ArrayRecord, a clip per record": ArrayRecordSet(sets["ar-whole"], 1),
        "ArrayRecord, 64 frames per record": ArrayRecordSet(sets["ar-blocks"],
                                                            -(-LENGTH // BLOCK)),
    }
    for lat in [int(v) for v in args.latency_ms.split(",")]:
      bucket.set_latency(lat / 1e3)
      for name, reader in readers.items():
        reader.batch([(k * PER_SHARD, 0.0) for k in range(CLIPS // PER_SHARD)], 16)  # open
        times, wire = [], []
        for _ in range(args.rounds):
          requests = [(int(i), float(u)) for i, u in zip(rng.permutation(CLIPS),
                                                         rng.random(CLIPS))]
          wait_until_quiet(bucket)  # ArrayRecord's abandoned streams are still arriving
          bucket.reset()
          t0 = time.perf_counter()
          out = reader.batch(requests, FRAMES)
          times.append(time.perf_counter() - t0)
          wire.append(bucket.counters())
          for x, (i, u) in zip(out, requests):  # every candidate reads the right frames
            start, stop = sources.window(LENGTH, FRAMES, u)
            assert np.array_equal(np.asarray(x, np.float32), clips[i][:, start:stop]), name
        rows.append({"candidate": name, "latency_ms": lat,
                     "kb_per_crop": np.mean([w["bytes_down"] for w in wire]) / CLIPS / 1e3,
                     "requests_per_crop": np.mean([w["requests"] for w in wire]) / CLIPS,
                     "ms_per_batch": statistics.median(times) * 1e3})
        print(rows[-1], flush=True)
  finally:
    bucket.stop()
  out = Path(args.out)
  out.mkdir(parents=True, exist_ok=True)
  with open(out / "candidates.csv", "w", newline="") as f:
    w = csv.DictWriter(f, FIELDS)
    w.writeheader()
    w.writerows(rows)
  lines = [f"# Layout candidates: one batch of {CLIPS} crops ({80 * FRAMES * 2 / 1e3:.1f} kB "
           f"each) from the bucket", "",
           f"{CLIPS} clips of 80 x {LENGTH} float16 ({80 * LENGTH * 2 / 1e3:.1f} kB), "
           f"{PER_SHARD} per shard; every crop of a batch requested before any is waited for; "
           f"median of {args.rounds} batches. kB and requests: what crossed the proxy.", "",
           "| candidate | added latency | kB / crop | requests / crop | ms / batch |",
           "|---|---:|---:|---:|---:|"]
  for r in rows:
    lines.append(f"| {r['candidate']} | +{r['latency_ms']} ms | {r['kb_per_crop']:.1f} | "
                 f"{r['requests_per_crop']:.2f} | {r['ms_per_batch']:.0f} |")
  (out / "candidates.md").write_text("\n".join(lines) + "\n")
  print("\n".join(lines))
  return 0


if __name__ == "__main__":
  sys.exit(main())
