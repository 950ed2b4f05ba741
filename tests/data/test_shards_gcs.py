"""The sharded layout in a bucket, against a real GCS-protocol server (fake-gcs-server, the
session fixture ``gcs``): prepared straight into the bucket, read back as the local ``.npy``
layout reads, resumed exactly, sliced over processes, damage skipped and counted, a crop fetching
about its own bytes, a killed prepare rerun to identical shards, a dead bucket stopping the run.
"""
import os
import signal
import subprocess
import sys
import textwrap
import uuid

import numpy as np
import pytest

from dwm_jax import paths
from dwm_jax.data import prepare as prep
from dwm_jax.data import shards
from dwm_jax.data import sources
from dwm_jax.data.shards import ShardSource
from dwm_jax.testing.tcp_proxy import LatencyProxy

from .conftest import NUM_CLIPS, data_cfg, take
from .test_shards import decode, id_cfg, loader, write_id_set

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _fs():
  import gcsfs
  return gcsfs.GCSFileSystem(token="anon")  # STORAGE_EMULATOR_HOST: the test server


def _bucket(gcs, prefix: str) -> str:
  return gcs.make_bucket(f"{prefix}-{uuid.uuid4().hex[:8]}")


@pytest.fixture(scope="module")
def remote_set(gcs, synth_dir):
  """The conftest's WAVs prepared with --layout shards straight into a bucket (float32, as the
  conftest's .npy set)."""
  out = f"{_bucket(gcs, 'prepared')}/shards"
  report = prep.prepare_shards(str(synth_dir / "audio"), out, workers=0, dtype="float32",
                               clips_per_shard=5, chunk_frames=16, progress=False)
  assert report["converted"] == NUM_CLIPS and report["shards"] == 3
  return f"{out}/{shards.CLIPS}"


def test_bucket_shards_read_as_local_npy_and_resume_exactly(remote_set, prepared_dir):
  npy = data_cfg(source="npy", csv=str(prepared_dir / "files.csv"))
  full, _ = take(loader(npy, seed=4), 8)
  remote = data_cfg(source="shards", csv=remote_set, prefetch=2)
  first, it = take(loader(remote, seed=4), 3)  # interrupted after 3 batches, then restored
  rest, _ = take(loader(remote, seed=4), 5, state=it.get_state())
  for x, y in zip(full, first + rest):
    np.testing.assert_array_equal(x, y)


@pytest.mark.slow
def test_a_grain_worker_reads_the_bucket_shards(remote_set, prepared_dir):
  """The source pickled into a worker process opens its own stores there."""
  full, _ = take(loader(data_cfg(source="npy", csv=str(prepared_dir / "files.csv")), seed=4), 4)
  got, it = take(loader(data_cfg(source="shards", csv=remote_set, num_workers=1), seed=4), 4)
  it.close()
  for x, y in zip(full, got):
    np.testing.assert_array_equal(x, y)


@pytest.fixture(scope="module")
def remote_ids(gcs):
  return write_id_set(f"{_bucket(gcs, 'ids')}/set")


def test_two_processes_read_disjoint_slices_whose_union_is_the_stream(remote_ids):
  cfg, gbs = id_cfg(remote_ids), 6
  single, _ = take(loader(cfg, seed=3, gbs=gbs, num_epochs=1), 2)
  parts = [take(loader(cfg, seed=3, gbs=gbs, num_epochs=1, process_index=p, process_count=2),
                2)[0] for p in range(2)]
  seen = []
  for step in range(2):
    a, b = parts[0][step], parts[1][step]
    assert a.shape == b.shape == (gbs // 2, 80, 64)
    assert not set(decode(a)[0]) & set(decode(b)[0])
    union = sorted(map(tuple, np.concatenate([a, b])[:, 0, :].tolist()))
    assert union == sorted(map(tuple, single[step][:, 0, :].tolist()))  # same clips, same crops
    seen += decode(a)[0] + decode(b)[0]
  assert sorted(seen) == list(range(12))


def test_damaged_record_in_a_bucket_shard_is_skipped_and_counted(gcs):
  clips = write_id_set(f"{_bucket(gcs, 'damaged')}/set")
  obj = paths.join(paths.parent(clips), "shards/00001/c/0/0")[len("gs://"):]
  fs = _fs()
  data = bytearray(fs.cat(obj))
  data[100] ^= 0xFF  # shard 1's first chunk: the start of clip 4
  fs.pipe(obj, bytes(data))
  src = ShardSource(clips)
  out = src.batch([(4, 0.0), (5, 0.0)], 64)
  assert decode(out)[0] == [5, 5] and src.skipped == {"corrupt": 1}
  batches, _ = take(loader(id_cfg(clips), num_epochs=1, gbs=4), 3)  # the epoch runs through
  ids = sum((decode(b)[0] for b in batches), [])
  assert 4 not in ids and len(ids) == 12 and set(ids) == set(range(12)) - {4}


def test_a_crop_reads_about_its_own_bytes(gcs, monkeypatch):
  """10 s clips (80 x 1001 float16), one 608-frame crop (97,280 bytes) of each: what crosses the
  wire per crop, against the whole clips the .npy layout reads."""
  rng = np.random.default_rng(0)
  clips = [rng.normal(-5, 3, (80, 1001)).astype(np.float16) for _ in range(64)]
  root = f"{_bucket(gcs, 'bytes')}/set"
  records = []
  for k in range(4):
    shards.write_shard(paths.join(root, shards.shard_name(k)),
                       np.concatenate(clips[16 * k:16 * k + 16], axis=1), shards.CHUNK_FRAMES)
    records.append({"shard": k, "frames": 16 * 1001, "clips": [
        {"file_name": f"c{16 * k + i}", "frames": 1001} for i in range(16)]})
  shards.write_manifest(root, records, n_mels=80, dtype="float16",
                        chunk_frames=shards.CHUNK_FRAMES)
  npy_root = f"{_bucket(gcs, 'bytes-npy')}/set"
  for i, x in enumerate(clips):
    with paths.open(f"{npy_root}/c{i}.npy", "wb") as f:
      np.save(f, x)
  paths.write_text(f"{npy_root}/files.csv",
                   "file_name\n" + "".join(f"c{i}.npy\n" for i in range(64)))
  with LatencyProxy("127.0.0.1", gcs.port) as proxy:
    monkeypatch.setenv("TENSORSTORE_GCS_HTTP_URL", proxy.url)  # read at each store's opening
    wire = {}
    for name, src in (("shards", ShardSource(f"{root}/{shards.CLIPS}")),
                      ("npy", sources.NpySource(f"{npy_root}/files.csv"))):
      src.batch([(16 * k, 0.0) for k in range(4)], 16)  # opens the stores, reads chunk indexes
      proxy.reset_counters()
      reqs = [(int(i), float(u)) for i, u in zip(rng.permutation(64), rng.random(64))]
      out = src.batch(reqs, 608)  # every clip once
      for row, (i, u) in zip(out, reqs):
        start, stop = sources.window(1001, 608, u)
        np.testing.assert_array_equal(row, clips[i][:, start:stop].astype(np.float32))
      wire[name] = proxy.bytes_down / 64, proxy.requests / 64
  crop = 80 * 608 * 2
  # The chunks around each crop (64 frames on average) and the response headers.
  assert 0.98 * crop < wire["shards"][0] < 1.15 * crop, wire
  assert wire["shards"][1] <= 1.0, wire  # one request a crop (neighbouring crops may share one)
  assert wire["npy"][0] > 80 * 1001 * 2 and wire["npy"][1] == 1.0, wire  # each whole clip


KILL_SCRIPT = textwrap.dedent("""
    import os, signal, sys
    from dwm_jax.data import prepare, shards
    real = shards.write_shard

    def write_shard(folder, x, chunk_frames):  # shard 1's array is written, its record not yet
      real(folder, x, chunk_frames)
      if folder.endswith("shards/00001"):
        os.kill(os.getpid(), signal.SIGKILL)

    shards.write_shard = write_shard
    prepare.main(sys.argv[1:])
    """)


@pytest.mark.slow
def test_prepare_killed_midway_then_rerun_gives_identical_shards(gcs, synth_dir):
  bucket = _bucket(gcs, "prepare")
  args = ["--layout", "shards", "--workers", "0", "--no-progress", "--clips-per-shard", "5",
          "--chunk-frames", "16"]
  proc = subprocess.run([sys.executable, "-c", KILL_SCRIPT, str(synth_dir / "audio"),
                         f"{bucket}/killed", *args], cwd=REPO, capture_output=True, text=True,
                        timeout=300)
  assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
  assert paths.exists(f"{bucket}/killed/shards/00000.json")
  assert not paths.exists(f"{bucket}/killed/shards/00001.json")
  assert not paths.exists(f"{bucket}/killed/{shards.MANIFEST}")
  again = prep.prepare_shards(str(synth_dir / "audio"), f"{bucket}/killed", workers=0,
                              clips_per_shard=5, chunk_frames=16, progress=False)
  assert again["already_done"] == 5 and again["converted"] == NUM_CLIPS - 5
  prep.prepare_shards(str(synth_dir / "audio"), f"{bucket}/clean", workers=2,
                      clips_per_shard=5, chunk_frames=16, progress=False)
  killed, clean = (paths.walk_files(f"{bucket}/{run}") for run in ("killed", "clean"))
  assert killed == clean and "shards/00001/c/0/0" in clean
  for rel in clean:
    if rel != "prepare_report.json":  # it holds wall times
      assert (paths.read_bytes(f"{bucket}/killed/{rel}") == paths.read_bytes(
          f"{bucket}/clean/{rel}")), rel


def test_a_bucket_that_stops_answering_stops_the_read(gcs, remote_ids, monkeypatch):
  """Records are skipped only when they are bad; a bucket that is down fails the batch with one
  line (the run stops and resumes later, losing no data)."""
  monkeypatch.setattr(sources, "BUCKET_RETRIES",
                      {"max_retries": 1, "initial_delay": "0.01s", "max_delay": "0.01s"})
  proxy = LatencyProxy("127.0.0.1", gcs.port)
  monkeypatch.setenv("TENSORSTORE_GCS_HTTP_URL", proxy.url)
  src = ShardSource(remote_ids)
  src.batch([(0, 0.0)], 64)
  proxy.stop()  # connections refused from now on
  with pytest.raises(sources.StorageUnavailable, match=r"cannot read clip0\d .* rerun"):
    src.batch([(5, 0.0), (9, 0.0)], 64)
  assert src.skipped == {}
