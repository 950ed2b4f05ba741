"""The sharded layout on local disk: same batches as the .npy layout, a standard Zarr v3 array,
damage skipped and counted, `prepare --layout shards` reports and resumes."""
import json
import logging
import os
import shutil

from pathlib import Path

import numpy as np
import pytest
import tensorstore as ts

from dwm_jax import paths
from dwm_jax.data import prepare as prep
from dwm_jax.data import shards
from dwm_jax.data.pipeline import make_pretrain_loader
from dwm_jax.data.shards import ShardSource
from dwm_jax.data.sources import PAD_VALUE, window

from .conftest import GOOD, NUM_CLIPS, data_cfg, take, write_mixed_folder

SHAPE = (80, 64)
LENGTHS = [40] + [64 + 9 * i for i in range(1, 12)]  # clip 0 is shorter than a crop


def write_id_set(root: str, lengths=LENGTHS, per_shard=4, chunk_frames=16) -> str:
  """Clip ``i`` holds ``1000 i + frame`` in every bin (float32): a crop names its clip and
  start. Written with the layout's own writer (local or ``gs://``); 3 shards of 4 clips.
  Returns the clip list."""
  records = []
  for k in range(0, len(lengths), per_shard):
    clips = [{"file_name": f"clip{i:02d}", "frames": n}
             for i, n in enumerate(lengths[k:k + per_shard], start=k)]
    x = np.concatenate([np.broadcast_to(1000.0 * int(c["file_name"][4:]) + np.arange(c["frames"]),
                                        (80, c["frames"])) for c in clips], axis=1)
    shards.write_shard(paths.join(root, shards.shard_name(k // per_shard)), x.astype(np.float32),
                       chunk_frames)
    records.append({"shard": k // per_shard, "frames": x.shape[1], "clips": clips})
  shards.write_manifest(root, records, n_mels=80, dtype="float32", chunk_frames=chunk_frames)
  return paths.join(root, shards.CLIPS)


@pytest.fixture
def id_shards(tmp_path):
  return Path(write_id_set(str(tmp_path)))


def id_cfg(csv_path, **kw):
  return data_cfg(**{"source": "shards", "csv": str(csv_path), "norm_mean": 0.0,
                     "norm_std": 1.0, **kw})


def loader(cfg, seed=0, gbs=4, **kw):
  return make_pretrain_loader(cfg, input_shape=SHAPE, global_batch_size=gbs, seed=seed, **kw)


def decode(batch):
  first = batch[:, 0, 0]
  return (first // 1000).astype(int).tolist(), (first % 1000).astype(int).tolist()


def test_window_covers_every_start_and_keeps_short_clips_whole():
  assert window(40, 64, 0.99) == (0, 40)
  assert window(100, 64, 0.0) == (0, 64)
  assert window(100, 64, np.nextafter(1.0, 0.0)) == (36, 100)
  starts = {window(100, 64, u)[0] for u in (np.arange(3700) + 0.5) / 3700}
  assert starts == set(range(37))


def test_crops_come_from_the_right_frames(id_shards):
  batches, _ = take(loader(id_cfg(id_shards), num_epochs=1), 3)
  for batch in batches:
    for row in batch:
      clip, start = int(row[0, 0] // 1000), int(row[0, 0] % 1000)
      if clip == 0:  # short: whole clip, then silence
        np.testing.assert_array_equal(row[:, :40], np.broadcast_to(np.arange(40.0), (80, 40)))
        np.testing.assert_allclose(row[:, 40:], PAD_VALUE)
      else:
        assert 0 <= start <= LENGTHS[clip] - 64
        np.testing.assert_array_equal(row, np.broadcast_to(1000.0 * clip + start
                                                           + np.arange(64.0), (80, 64)))
  ids = sum((decode(b)[0] for b in batches), [])
  assert sorted(ids) == list(range(12))  # one epoch: every clip once


@pytest.fixture(scope="module")
def both_layouts(synth_dir, prepared_dir, tmp_path_factory):
  """The conftest's clips prepared as .npy (float32) and as shards (float32, 5 per shard)."""
  out = tmp_path_factory.mktemp("shards")
  report = prep.prepare_shards(str(synth_dir / "audio"), str(out), workers=0, dtype="float32",
                               clips_per_shard=5, chunk_frames=16, progress=False)
  assert report["converted"] == NUM_CLIPS and report["shards"] == 3
  return prepared_dir / "files.csv", out / shards.CLIPS


def test_shards_give_the_batches_of_the_npy_layout(both_layouts):
  npy_csv, shard_csv = both_layouts
  for seed in (0, 5):
    a, _ = take(loader(data_cfg(source="npy", csv=str(npy_csv)), seed=seed), 4)
    b, _ = take(loader(data_cfg(source="shards", csv=str(shard_csv)), seed=seed), 4)
    for x, y in zip(a, b):
      np.testing.assert_array_equal(x, y)


def test_a_shard_is_a_zarr_array_any_reader_opens(both_layouts):
  """tensorstore's zarr3 driver (not the pipeline's chunk reader) reads the prepared clips."""
  npy_csv, shard_csv = both_layouts
  src = ShardSource(shard_csv)
  names = [n.decode() for n in src.names]
  for i in (0, 4, 5, 11):
    folder = shard_csv.parent / shards.shard_name(int(src.shard[i]))
    arr = ts.open({"driver": "zarr3", "kvstore": f"file://{folder}/"}).result()
    got = arr[:, int(src.offset[i]):int(src.offset[i] + src.frames[i])].read().result()
    want = np.load(npy_csv.parent / names[i].replace(".wav", ".npy"))
    np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(src[i], want)


def test_restore_continues_exactly(id_shards):
  full, _ = take(loader(id_cfg(id_shards), seed=7), 8)
  first, it = take(loader(id_cfg(id_shards), seed=7), 3)
  rest, _ = take(loader(id_cfg(id_shards), seed=7), 5, state=it.get_state())
  for x, y in zip(full, first + rest):
    np.testing.assert_array_equal(x, y)


def _flip(path, offset):
  data = bytearray(path.read_bytes())
  data[offset] ^= 0xFF
  path.write_bytes(bytes(data))


def test_damage_is_skipped_and_counted(id_shards, caplog):
  root = id_shards.parent
  # A damaged chunk in shard 0: frame 20 of clip 1 (its frames 40..112 in the shard); chunks
  # are 80 x 16 float32 + 4 crc bytes, stored in time order.
  _flip(root / "shards/00000/c/0/0", 3 * (80 * 16 * 4 + 4) + 100)
  # Shard 2's chunk index (at the end of its object) damaged: the whole shard is unreadable.
  _flip(root / "shards/00002/c/0/0", os.path.getsize(root / "shards/00002/c/0/0") - 10)
  src = ShardSource(id_shards)
  with caplog.at_level(logging.WARNING):
    out = src.batch([(1, 0.0), (2, 0.5), (8, 0.5), (11, 0.0)], 64)
  ids = decode(out)[0]
  assert ids[1] == 2
  assert ids[0] == 2  # clip 1's window covers the damaged chunk: the next clip takes its place
  assert ids[2] == ids[3] == 0  # shard 2 (clips 8-11) unreadable: the first clip after it
  assert src.skipped == {"corrupt": 3}
  assert "clip01" in caplog.text and "crc32c" in caplog.text and "shard index" in caplog.text
  assert np.all(np.isfinite(out))
  # A window that misses the damaged chunk still reads clip 1 (the chunk 3 holds frames 48-63).
  ok = src.batch([(1, 1.0)], 16)
  assert decode(ok)[0] == [1]
  # An epoch runs through: the unreadable clips are replaced, nothing stops.
  batches, _ = take(loader(id_cfg(id_shards), num_epochs=1), 3)
  assert len(batches) == 3 and all(np.all(np.isfinite(b)) for b in batches)


def test_missing_shard_object_and_bad_manifests(id_shards, tmp_path):
  root = id_shards.parent
  shutil.rmtree(root / "shards/00001/c")
  src = ShardSource(id_shards)
  out = src.batch([(5, 0.0)], 64)
  assert decode(out)[0] == [8] and src.skipped == {"missing": 1}
  (root / shards.MANIFEST).rename(tmp_path / "m.json")
  with pytest.raises(shards.ShardSetError, match="manifest.json not found.*--layout shards"):
    ShardSource(id_shards)
  (tmp_path / "m.json").rename(root / shards.MANIFEST)
  with pytest.raises(shards.ShardSetError, match="the shards hold 80 mel bins, the model wants 64"):
    ShardSource(id_shards, n_mels=64)
  lines = id_shards.read_text().splitlines()
  id_shards.write_text("\n".join([lines[0], lines[5], lines[1]]) + "\n")
  with pytest.raises(shards.ShardSetError, match="out of shard order"):
    ShardSource(id_shards)
  id_shards.write_text("file_name,offset\nx,0\n")
  with pytest.raises(shards.ShardSetError, match="file_name,shard,offset,frames"):
    ShardSource(id_shards)


def test_prepare_shards_reports_skips_and_resumes(tmp_path):
  src = write_mixed_folder(tmp_path / "src")  # the folder test_prepare prepares as .npy
  out = tmp_path / "out"
  assert prep.main([str(src), str(out), "--layout", "shards", "--workers", "0", "--no-progress",
                    "--clips-per-shard", "3", "--chunk-frames", "32"]) == 0
  report = json.loads((out / "prepare_report.json").read_text())
  assert report["converted"] == 4 and report["skipped"] == 4 and report["shards"] == 3
  assert report["skipped_by_reason"] == {"unreadable": 1, "empty": 1, "silent": 1,
                                         "too short": 1}
  src_set = ShardSource(out / shards.CLIPS)
  assert sorted(n.decode() for n in src_set.names) == sorted(GOOD)
  stats = json.loads((out / "stats.json").read_text())
  values = np.concatenate([src_set[i].ravel() for i in range(len(src_set))]).astype(np.float64)
  assert stats["num_clips"] == 4 and stats["mean"] == pytest.approx(values.mean(), rel=1e-6)
  # A shard whose record is gone (a kill between its array and its record) is written again,
  # identically; the others are kept as they are.
  objects = {p: p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()
             and p.name != "prepare_report.json"}
  mtimes = {p: p.stat().st_mtime_ns for p in objects}
  (out / "shards/00001.json").unlink()
  again = prep.prepare_shards(str(src), str(out), workers=0, clips_per_shard=3, chunk_frames=32,
                              progress=False)
  assert again["already_done"] + again["converted"] == 4 and again["converted"] >= 1
  assert {p: p.read_bytes() for p in objects} == objects
  assert mtimes[out / "shards/00000.json"] == (out / "shards/00000.json").stat().st_mtime_ns


def test_prepare_errors_are_one_line(tmp_path, capsys):
  assert prep.main([str(tmp_path / "missing"), str(tmp_path / "out"), "--layout", "shards",
                    "--no-progress"]) == 2
  err = capsys.readouterr().err.strip().splitlines()
  assert err == [f"dwm-jax prepare: audio folder not found: {tmp_path / 'missing'}"]
  (tmp_path / "src").mkdir()
  assert prep.main([str(tmp_path / "src"), str(tmp_path / "out"), "--layout", "shards",
                    "--clips-per-shard", "0"]) == 2
  assert "clips_per_shard (0)" in capsys.readouterr().err
