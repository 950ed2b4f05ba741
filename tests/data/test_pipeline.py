"""Pretraining loader: determinism per source, crop/normalise, epochs, checkpoint, sharding."""
import csv
import logging

import numpy as np
import pytest

from dwm_jax.data import pipeline
from dwm_jax.data.pipeline import PAD_VALUE, dataset_size, make_pretrain_loader
from dwm_jax.data.sources import NpySource

from .conftest import NUM_CLIPS, TFDS_NAME, data_cfg, take

B = 4
SHAPE = (80, 64)


def loader(cfg, seed=0, **kw):
  return make_pretrain_loader(cfg, input_shape=SHAPE, global_batch_size=kw.pop("gbs", B),
                              seed=seed, **kw)


def source_cfgs(synth_dir, prepared_dir, tfds_dir):
  return {
      "synthetic": data_cfg(),
      "npy": data_cfg(source="npy", csv=str(prepared_dir / "files.csv")),
      "audio_csv": data_cfg(source="audio", csv=str(synth_dir / "files.csv")),
      "audio_root": data_cfg(source="audio", root=str(synth_dir / "audio")),
      "tfds": data_cfg(source="tfds", tfds_name=TFDS_NAME, tfds_data_dir=str(tfds_dir)),
  }


@pytest.mark.parametrize("name", ["synthetic", "npy", "audio_csv", "audio_root", "tfds"])
def test_same_seed_same_batches_other_seed_differs(name, synth_dir, prepared_dir, tfds_dir):
  cfg = source_cfgs(synth_dir, prepared_dir, tfds_dir)[name]
  a, _ = take(loader(cfg, seed=1), 3)
  b, _ = take(loader(cfg, seed=1), 3)
  c, _ = take(loader(cfg, seed=2), 3)
  for x in a:
    assert x.shape == (B, *SHAPE) and x.dtype == np.float32 and np.all(np.isfinite(x))
  assert all(np.array_equal(x, y) for x, y in zip(a, b))
  assert not all(np.array_equal(x, y) for x, y in zip(a, c))
  # Normalised with M2D's statistics: roughly centred, unit-ish spread.
  assert abs(np.mean(a)) < 2.0 and 0.2 < np.std(a) < 3.0


def test_npy_and_audio_sources_agree(synth_dir, prepared_dir):
  # Same clips, same seed: decoding in the pipeline equals preparing first (float32 .npy).
  a, _ = take(loader(data_cfg(source="npy", csv=str(prepared_dir / "files.csv"))), 2)
  b, _ = take(loader(data_cfg(source="audio", csv=str(synth_dir / "files.csv"))), 2)
  for x, y in zip(a, b):
    np.testing.assert_allclose(x, y, atol=1e-5)
  assert dataset_size(data_cfg(source="npy", csv=str(prepared_dir / "files.csv"))) == NUM_CLIPS


@pytest.fixture
def id_set(tmp_path):
  """12 clips whose value encodes (clip, frame): x[:, t] = 1000 * clip + t. Clip 0 is short."""
  names = []
  for i in range(12):
    frames = 40 if i == 0 else 64 + 9 * i
    x = np.broadcast_to(1000.0 * i + np.arange(frames), (80, frames)).astype(np.float32)
    names.append(f"sub/{i:02d}.npy")
    (tmp_path / "sub").mkdir(exist_ok=True)
    np.save(tmp_path / names[-1], x)
  with open(tmp_path / "files.csv", "w", newline="") as f:
    csv.writer(f).writerows([["file_name"]] + [[n] for n in names])
  return tmp_path


def id_cfg(root, **kw):
  return data_cfg(**{"source": "npy", "csv": str(root / "files.csv"), "norm_mean": 0.0,
                     "norm_std": 1.0, **kw})


def decode(batch):
  """Clip ids and crop starts of a batch of the id set."""
  first = batch[:, 0, 0]
  return (first // 1000).astype(int).tolist(), (first % 1000).astype(int).tolist()


def test_crops_pads_and_normalises(id_set):
  cfg = id_cfg(id_set, norm_mean=5.0, norm_std=2.0)
  batches, _ = take(loader(cfg, num_epochs=1), 3)
  for batch in batches:
    raw = batch * 2.0 + 5.0
    for row in raw:
      clip, start = int(row[0, 0] // 1000), int(row[0, 0] % 1000)
      frames = 40 if clip == 0 else 64 + 9 * clip
      if clip == 0:  # short: whole clip, then silence padding
        np.testing.assert_allclose(row[:, :40], np.arange(40)[None].repeat(80, 0), atol=1e-3)
        np.testing.assert_allclose(row[:, 40:], PAD_VALUE, atol=1e-4)
      else:
        assert 0 <= start <= frames - 64
        np.testing.assert_allclose(row, 1000.0 * clip + start + np.arange(64)[None].repeat(80, 0),
                                   atol=1e-3)


def test_epochs_cover_everything_in_a_new_order(id_set):
  batches, _ = take(loader(id_cfg(id_set), num_epochs=2, gbs=4), 6)
  ids = sum((decode(b)[0] for b in batches), [])
  e0, e1 = ids[:12], ids[12:]
  assert sorted(e0) == sorted(e1) == list(range(12))
  assert e0 != e1 and e0 != list(range(12))
  with pytest.raises(StopIteration):
    take(loader(id_cfg(id_set), num_epochs=2, gbs=4), 7)
  # drop_remainder: 12 clips, batch 5 -> 2 full batches in one epoch.
  b5, it = take(loader(id_cfg(id_set), num_epochs=1, gbs=5), 2)
  with pytest.raises(StopIteration):
    next(it)


@pytest.mark.parametrize("workers", [0, 1])
def test_checkpoint_restore_continues_exactly(id_set, workers):
  # The uninterrupted reference runs in-process; the interrupted one with `workers` worker
  # processes, so this also shows that workers do not change the batches.
  full, _ = take(loader(id_cfg(id_set), seed=7), 8)
  cfg = id_cfg(id_set, num_workers=workers, prefetch=2)
  first, it1 = take(loader(cfg, seed=7), 3)
  state = it1.get_state()
  if workers:
    it1.close()
  rest, it2 = take(loader(cfg, seed=7), 5, state=state)
  if workers:
    it2.close()
  for x, y in zip(full, first + rest):
    np.testing.assert_array_equal(x, y)


def test_two_process_shards_are_disjoint_and_cover(id_set):
  cfg = id_cfg(id_set)
  gbs = 6
  single, _ = take(loader(cfg, seed=3, gbs=gbs, num_epochs=1), 2)
  shards = [take(loader(cfg, seed=3, gbs=gbs, num_epochs=1, process_index=p,
                        process_count=2), 2)[0] for p in range(2)]
  seen = []
  for step in range(2):
    a, b = shards[0][step], shards[1][step]
    assert a.shape == b.shape == (gbs // 2, *SHAPE)
    ids_a, ids_b = decode(a)[0], decode(b)[0]
    assert not set(ids_a) & set(ids_b)
    # The two shards of step k hold exactly the single-process global batch k (same crops).
    union = sorted(map(tuple, np.concatenate([a, b])[:, 0, :].tolist()))
    assert union == sorted(map(tuple, single[step][:, 0, :].tolist()))
    seen += ids_a + ids_b
  assert sorted(seen) == list(range(12))  # one epoch, both processes: every clip once


def test_bad_files_are_skipped_logged_and_counted(id_set, caplog):
  (id_set / "sub/03.npy").write_bytes(b"\x93NUMPY garbage")
  (id_set / "sub/05.npy").unlink()
  src = NpySource(id_set / "files.csv")
  with caplog.at_level(logging.WARNING):
    np.testing.assert_array_equal(src[3], src[4])  # falls back to the next record
    np.testing.assert_array_equal(src[5], src[6])
  assert src.skipped == {"unreadable": 1, "missing": 1}
  assert "sub/03.npy" in caplog.text and "sub/05.npy" in caplog.text
  batches, _ = take(loader(id_cfg(id_set), num_epochs=1), 3)  # the run keeps going
  ids = sum((decode(b)[0] for b in batches), [])
  assert 3 not in ids and 5 not in ids and len(ids) == 12


def test_silent_clip_flows_through(tmp_path):
  np.save(tmp_path / "s.npy", np.full((80, 100), np.log(np.finfo(np.float32).eps), np.float32))
  (tmp_path / "files.csv").write_text("file_name\ns.npy\n")
  (x,), _ = take(loader(data_cfg(source="npy", csv=str(tmp_path / "files.csv")), gbs=2), 1)
  assert np.all(np.isfinite(x)) and np.ptp(x) == 0


def test_clear_errors(tmp_path, id_set):
  tmp_path = tmp_path / "errors"  # id_set lives in tmp_path itself
  tmp_path.mkdir()
  with pytest.raises(FileNotFoundError, match="not found"):
    loader(data_cfg(source="npy", csv=str(tmp_path / "nope.csv")))
  (tmp_path / "bad.csv").write_text("path\nx.npy\n")
  with pytest.raises(ValueError, match="file_name"):
    loader(data_cfg(source="npy", csv=str(tmp_path / "bad.csv")))
  (tmp_path / "elsewhere.csv").write_text("file_name\nsub/00.npy\n")
  with pytest.raises(FileNotFoundError, match="none of the first"):
    loader(data_cfg(source="npy", csv=str(tmp_path / "elsewhere.csv")))
  with pytest.raises(ValueError, match="needs data.csv"):
    loader(data_cfg(source="npy"))
  with pytest.raises(ValueError, match="unknown data.source"):
    loader(data_cfg(source="webdataset"))
  with pytest.raises(ValueError, match="multiple of process_count"):
    loader(id_cfg(id_set), gbs=5, process_count=2)
  with pytest.raises(ValueError, match="unknown TFDS"):
    loader(data_cfg(source="tfds", tfds_name="no_such_dataset_xyz", tfds_data_dir=str(tmp_path)))


def test_stats_json_overrides_norm(id_set, tmp_path):
  (tmp_path / "stats.json").write_text('{"mean": 10.0, "std": 0.5}')
  assert pipeline.norm_stats(id_cfg(id_set, stats=str(tmp_path / "stats.json"))) == (10.0, 0.5)
  (tmp_path / "bad.json").write_text('{"mean": 1.0, "std": 0.0}')
  with pytest.raises(ValueError, match="invalid stats"):
    pipeline.norm_stats(id_cfg(id_set, stats=str(tmp_path / "bad.json")))
