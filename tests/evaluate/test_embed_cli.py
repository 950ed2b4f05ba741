"""``dwm-jax embed`` end to end: a real collection, the probe's and the authors' embeddings,
kill -9 and resume, memory on a 3-minute file, shares over a bucket, refusals."""
import csv
import io
import json
import os
import signal
import subprocess
import sys
import time
import tracemalloc
import uuid

import numpy as np
import pytest
import soundfile as sf

from dwm_jax import cli, paths
from dwm_jax.data import labeled
from dwm_jax.data.audio_io import load_audio
from dwm_jax.data.log_mel import log_mel
from dwm_jax.evaluate import embed_inputs, embed_store, embed_stream, probe
from dwm_jax.evaluate.embed import embed_logmel
from dwm_jax.evaluate.embed_cli import settings_for
from dwm_jax.evaluate.encoder import load_encoder

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def tone(seconds, rate, channels=1, seed=0):
  t = np.arange(int(seconds * rate)) / rate
  x = 0.3 * np.sin(2 * np.pi * (220 + 50 * seed) * t) * (1 + np.sin(2 * np.pi * 0.5 * t))
  x = x + 0.02 * np.random.default_rng(seed).standard_normal(t.size)
  return np.stack([x, 0.5 * x[::-1]], 1) if channels == 2 else x


@pytest.fixture(scope="module")
def collection(tmp_path_factory):
  """A 3-minute file, short files, a 44.1 kHz stereo file, a broken one, nested folders."""
  root = tmp_path_factory.mktemp("collection")
  (root / "short" / "deeper").mkdir(parents=True)
  sf.write(str(root / "long.wav"), tone(180, 22050, seed=1), 22050, subtype="PCM_16")
  sf.write(str(root / "short" / "a.wav"), tone(0.5, 16000, seed=2), 16000, subtype="PCM_16")
  sf.write(str(root / "short" / "b.ogg"), tone(1.3, 16000, seed=3), 16000, subtype="VORBIS")
  sf.write(str(root / "short" / "deeper" / "c.flac"), tone(0.05, 8000, seed=4), 8000)
  sf.write(str(root / "stereo44k.wav"), tone(2.5, 44100, 2, seed=5), 44100, subtype="PCM_16")
  (root / "broken.wav").write_bytes(b"RIFF\x00\x00\x00\x00WAVEnot audio at all")
  (root / "notes.txt").write_text("not audio: not listed")
  return root


READABLE = ["long.wav", "short/a.wav", "short/b.ogg", "short/deeper/c.flac", "stereo44k.wav"]


def embed_cmd(*args) -> int:
  return cli.main(["embed", *map(str, args), "--no-progress"])


def index_of(out):
  with open(os.path.join(out, "index.csv"), newline="") as f:
    return list(csv.DictReader(f))


def reference(encoder, path):
  """The in-memory path: the whole file decoded, then ``embed_logmel`` (what embed() does)."""
  x = log_mel(load_audio(path, 16000))
  frames, clip = embed_logmel(encoder, x)
  return x, frames, clip


def test_a_collection_end_to_end_then_resume(collection, export, tmp_path, capsys):
  out = tmp_path / "out"
  assert embed_cmd("--encoder", export, collection, "--out", out, "--frames", "--layers") == 0
  printed = capsys.readouterr().out
  assert "embedded 5 files" in printed and "skipped (unreadable): 1, e.g. broken.wav" in printed
  enc = load_encoder(export)
  index = index_of(out)
  assert [r["file_name"] for r in index] == READABLE
  clips = np.load(out / "clips.npy")
  assert clips.shape == (5, 160) and clips.dtype == np.float32
  for row, clip in zip(index, clips):
    path = collection / row["file_name"]
    x, frames, ref_clip = reference(enc, path)
    got = np.load(out / "frames" / (row["file_name"] + ".npy"))
    layers = np.load(out / "layers" / (row["file_name"] + ".npy"), mmap_mode="r")
    assert got.shape == frames.shape == (int(row["frames"]), 160) == (-(-x.shape[1] // 16), 160)
    assert layers.shape == (len(got), 1, 160)
    np.testing.assert_array_equal(layers[:, -1], got)
    np.testing.assert_allclose(got, frames, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(clip, ref_clip, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(clip, got.mean(axis=0))  # the clip is its frames' mean
    assert float(row["seconds"]) == pytest.approx(sf.info(str(path)).duration, abs=1e-4)
  assert index[0]["frames"] == str(-(-18001 // 16))  # 3 minutes: 18001 log-mel frames
  report = json.loads((out / "embed_report.json").read_text())
  assert (report["files"], report["embedded"], report["skipped"]) == (6, 5, 1)
  assert report["skipped_files"][0]["file"] == "broken.wav"
  assert report["skipped_files"][0]["reason"] == "unreadable"
  assert report["seconds_total"] == pytest.approx(sum(float(r["seconds"]) for r in index))
  settings = json.loads((out / "embed.json").read_text())
  assert settings["encoder"]["fingerprint"] == enc.fingerprint
  assert settings["encoder"]["model"]["width"] == 32 and settings["outputs"]["layers"]
  assert settings["timestamps"] == {"first_s": 0.075, "hop_s": 0.16}
  assert os.listdir(out / ".tmp") == []

  # Rerun: the done files are skipped (the broken one is tried again), outputs unchanged.
  before = {p: (out / p).read_bytes() for p in ("clips.npy", "index.csv", "frames/long.wav.npy")}
  assert embed_cmd("--encoder", export, collection, "--out", out, "--frames", "--layers") == 0
  assert "embedded 0 files" in capsys.readouterr().out
  assert all((out / p).read_bytes() == b for p, b in before.items())
  # Other options into the same folder: refused, naming what differs, nothing touched.
  assert embed_cmd("--encoder", export, collection, "--out", out, "--frames") == 2
  err = capsys.readouterr().err.strip()
  assert err.startswith("dwm-jax embed: ") and "\n" not in err
  assert "outputs =" in err and "give another --out" in err
  assert (out / "clips.npy").read_bytes() == before["clips.npy"]


def test_clip_embeddings_are_the_probes(dataset, export, tmp_path):
  """The command on an EVAR task CSV gives the clip embeddings the probe trains on."""
  csv_path = dataset / "event.csv"
  assert embed_cmd("--encoder", export, csv_path, "--out", tmp_path / "e") == 0
  enc = load_encoder(export)
  task = labeled.load_csv_task(csv_path)
  feats = probe.task_features(enc, task)
  rows = {r["file_name"]: i for i, r in enumerate(index_of(tmp_path / "e"))}
  clips = np.load(tmp_path / "e" / "clips.npy")
  with open(csv_path, newline="") as f:
    listed = list(csv.DictReader(f))
  for split in ("train", "valid", "test"):
    names = [r["file_name"] for r in listed if r["split"] == split]
    assert len(names) == len(feats[split]) > 0
    np.testing.assert_allclose(clips[[rows[n] for n in names]], feats[split], rtol=1e-5,
                               atol=1e-6)
  # The same clips prepared as float32 .npy log-mels (prepare's files.csv): the same embeddings.
  from dwm_jax.data.prepare import prepare
  prepare(dataset / "audio", tmp_path / "prep", workers=0, dtype="float32", progress=False)
  assert embed_cmd("--encoder", export, tmp_path / "prep" / "files.csv", "--out",
                   tmp_path / "n") == 0
  npy_rows = index_of(tmp_path / "n")
  assert [r["file_name"] for r in npy_rows] == [f"{i:06d}.npy" for i in range(40)]
  np.testing.assert_allclose(np.load(tmp_path / "n" / "clips.npy"),
                             clips[[rows[f"audio/{i:06d}.wav"] for i in range(40)]],
                             rtol=1e-5, atol=1e-6)


def test_frames_and_layers_are_the_authors_runtime(tmp_path):
  """An authors' checkpoint (timm ViT, M2D layout, 64-frame windows) imported with import-torch:
  the command's frames, clips and per-block outputs equal the authors' runtime on the same
  log-mels (``portable_m2d.encode_lms``; layers as ``forward_encoder(return_layers=True)``)."""
  pytest.importorskip("torch")
  pytest.importorskip("timm")
  from tests.evaluate.test_torch_checkpoint import SMALL_FOLDER, m2d_checkpoint
  from tests.m2d_reference import authors_frames, rel_err, timm_m2d_vit
  vit = timm_m2d_vit(64, depth=2, heads=1, img=(80, 64), seed=12)
  ckpt = m2d_checkpoint(vit, tmp_path / SMALL_FOLDER / "checkpoint-300.pth")
  assert cli.main(["import-torch", ckpt, "--out", str(tmp_path / "m2d.msgpack")]) == 0
  audio = tmp_path / "audio"
  audio.mkdir()
  sf.write(str(audio / "a.wav"), tone(3.1, 16000, seed=6), 16000, subtype="PCM_16")
  sf.write(str(audio / "b.wav"), tone(0.43, 32000, 2, seed=7), 32000, subtype="PCM_16")
  out = tmp_path / "out"
  assert embed_cmd("--encoder", tmp_path / "m2d.msgpack", audio, "--out", out, "--frames",
                   "--layers") == 0
  clips = np.load(out / "clips.npy")
  for i, name in enumerate(["a.wav", "b.wav"]):
    x = log_mel(load_audio(audio / name, 16000))[None]
    ref = authors_frames(vit, x, -5.5, 3.3, 64)[0]
    ref_layers = authors_frames(vit, x, -5.5, 3.3, 64, return_layers=True)[0]
    frames = np.load(out / "frames" / f"{name}.npy")
    layers = np.load(out / "layers" / f"{name}.npy")
    assert frames.shape == ref.shape and layers.shape == ref_layers.shape == (len(ref), 2, 320)
    assert rel_err(frames, ref) < 1e-4 and rel_err(layers, ref_layers) < 1e-4
    assert rel_err(clips[i], ref.mean(axis=0)) < 1e-4
    assert rel_err(layers[:, 0], ref_layers[:, 1]) > 1e-2  # the blocks are told apart


def test_memory_of_a_3_minute_file_is_bounded(export, tmp_path):
  """The command's path (streamed decoding, the loop, arrays written as they come) on a
  3-minute 44.1 kHz stereo file: numpy/Python allocations peak under 24 MiB, as for a 30 s file
  (decoding it whole, as load_audio does, takes over 100 MiB before any embedding)."""
  enc = load_encoder(export)
  peaks, host_windows = {}, {}
  for seconds in (30, 180):
    path = tmp_path / f"{seconds}.wav"
    sf.write(str(path), tone(seconds, 44100, 2, seed=seconds), 44100, subtype="PCM_16")
    for traced in (False, True):  # the first run compiles: not measured
      out = str(tmp_path / f"out{seconds}{traced}")
      args = type("A", (), dict(frames=True, layers=True, dtype="float32", split=None))
      store = embed_store.Store(out, settings_for(enc, export, str(path), args, 16, 0.075))
      store.open()
      if traced:
        tracemalloc.start()
      stats = embed_stream.run(enc, [embed_inputs.AudioFile("f.wav", str(path))], store,
                               batch_size=8, segments=4, workers=2, layers=True)
      store.close()
      if traced:
        peaks[seconds] = tracemalloc.get_traced_memory()[1] / 2**20
        tracemalloc.stop()
        host_windows[seconds] = stats.max_host_windows
    assert np.load(os.path.join(out, "layers", "f.wav.npy"), mmap_mode="r").shape[1:] == (1, 160)
  assert peaks[180] < 24 and peaks[180] < peaks[30] + 2, peaks
  bound = embed_stream.host_windows_bound(8, 4, 2, streams=1, chunk_windows=16)
  assert host_windows[180] <= bound < 18001 // 64, (host_windows, bound)


@pytest.mark.slow
def test_kill_9_mid_run_then_rerun_gives_the_same_outputs(export, tmp_path):
  """Short files done, a 15-minute one in flight (40 ms hop: 4 shifted streams, small batches):
  kill -9, then a rerun ends with the outputs of an uninterrupted run, bit for bit. (Long enough
  to be in flight for a few polls on a fast machine: a 3-minute file took under 0.5 s in CI.)"""
  audio = tmp_path / "audio"
  audio.mkdir()
  for i in range(6):
    sf.write(str(audio / f"a{i}.wav"), tone(0.4 + 0.3 * i, 16000, seed=i), 16000,
             subtype="PCM_16")
  sf.write(str(audio / "z_long.wav"), tone(900, 16000, seed=9), 16000, subtype="PCM_16")
  opts = ["--frames", "--hop-ms", "40", "--segments-per-row", "1", "--batch-size", "2",
          "--workers", "1"]
  ref, out = tmp_path / "ref", tmp_path / "out"
  assert embed_cmd("--encoder", export, audio, "--out", ref, *opts) == 0
  env = {**os.environ, "PYTHONPATH": REPO + os.pathsep + os.environ.get("PYTHONPATH", "")}
  command = [sys.executable, "-m", "dwm_jax.cli", "embed", "--encoder", str(export), str(audio),
             "--out", str(out), "--no-progress", *opts]
  proc = subprocess.Popen(command, env=env, cwd=REPO, stdout=subprocess.DEVNULL,
                          stderr=subprocess.PIPE)
  deadline = time.time() + 300

  def started(folder):
    return os.path.isdir(folder) and os.listdir(folder)

  while not (started(out / "records") and started(out / ".tmp")):  # done files, one in flight
    assert proc.poll() is None and time.time() < deadline, proc.stderr.read()[-3000:]
    time.sleep(0.002)
  os.kill(proc.pid, signal.SIGKILL)
  proc.wait()
  # Killed: some files recorded, the long one in flight in .tmp, nothing partial in place.
  recorded = embed_store.read_records(str(out))
  assert 0 < len(recorded) < 7 and "z_long.wav" not in recorded
  assert not (out / "index.csv").exists() and not (out / "frames" / "z_long.wav.npy").exists()
  assert os.listdir(out / ".tmp")
  for name in os.listdir(out / "frames"):
    if name.endswith(".npy"):  # whatever is in place loads whole
      np.testing.assert_array_equal(np.load(out / "frames" / name),
                                    np.load(ref / "frames" / name))
  assert embed_cmd("--encoder", export, audio, "--out", out, *opts) == 0
  assert os.listdir(out / ".tmp") == []
  assert (out / "index.csv").read_text() == (ref / "index.csv").read_text()
  np.testing.assert_array_equal(np.load(out / "clips.npy"), np.load(ref / "clips.npy"))
  for row in index_of(ref):
    name = row["file_name"] + ".npy"
    np.testing.assert_array_equal(np.load(out / "frames" / name), np.load(ref / "frames" / name))
  last = json.loads((out / "embed_report.json").read_text())["last_run"]
  assert last["embedded"] == 7 - len(recorded)  # the rerun did only what was not done


def test_shares_over_a_bucket(gcs, collection, export, tmp_path, capsys):
  """Two processes' shares of a bucket folder into a bucket: the index appears with the last
  share, equal to one local run's (one window per row: bit for bit)."""
  bucket = gcs.make_bucket(f"embed-{uuid.uuid4().hex[:8]}")
  for rel in READABLE[1:] + ["broken.wav"]:
    paths.write_bytes(f"{bucket}/audio/{rel}", (collection / rel).read_bytes())
  opts = ["--frames", "--segments-per-row", "1"]
  out = f"{bucket}/emb"
  assert embed_cmd("--encoder", export, f"{bucket}/audio", "--out", out, "--shard", "1/2",
                   *opts) == 0
  assert "files of other shares are not all done" in capsys.readouterr().out
  assert not paths.exists(f"{out}/index.csv")
  assert embed_cmd("--encoder", export, f"{bucket}/audio", "--out", out, "--shard", "0/2",
                   *opts) == 0
  local = tmp_path / "local"
  assert embed_cmd("--encoder", export, collection / "short", "--out", local, *opts) == 0
  index = paths.read_text(f"{out}/index.csv")
  assert index.splitlines()[1:4] == [f"short/{line}" for line in
                                     (local / "index.csv").read_text().splitlines()[1:]]
  clips = np.load(io.BytesIO(paths.read_bytes(f"{out}/clips.npy")))
  np.testing.assert_array_equal(clips[:3], np.load(local / "clips.npy"))
  report = json.loads(paths.read_text(f"{out}/embed_report.json"))
  assert (report["embedded"], report["skipped"]) == (4, 1)
  assert sorted(p for p in paths.walk_files(out) if "tmp" in p) == []
  frames = np.load(io.BytesIO(paths.read_bytes(f"{out}/frames/short/a.wav.npy")))
  np.testing.assert_array_equal(frames, np.load(local / "frames" / "a.wav.npy"))


@pytest.mark.parametrize("args,message", [
    (["{tmp}/nowhere"], "no input at"),
    (["{tmp}/empty"], "no audio files"),
    (["{tmp}/nofile.csv"], "no file_name column"),
    (["{tmp}/escape.csv"], "must be a path relative to the CSV's folder"),
    (["{tmp}/audio", "--shard", "2/2"], "--shard must be I/N"),
    (["{tmp}/audio", "--frames", "--hop-ms", "30"], "hop_ms must be one of"),
    (["{tmp}/audio", "--hop-ms", "40"], "add --frames or --layers"),
    (["{tmp}/audio", "--batch-size", "0"], "--batch-size must be >= 1"),
    (["{tmp}/audio", "--split", "train"], "--split is for tfds:NAME"),
])
def test_refusals_are_one_line_with_status_2(export, tmp_path, capsys, args, message):
  (tmp_path / "empty").mkdir()
  (tmp_path / "audio").mkdir()
  sf.write(str(tmp_path / "audio" / "x.wav"), tone(0.3, 16000), 16000)
  (tmp_path / "nofile.csv").write_text("path,label\nx.wav,a\n")
  (tmp_path / "escape.csv").write_text("file_name\n../outside.wav\n")
  args = [a.format(tmp=tmp_path) for a in args]
  assert embed_cmd("--encoder", export, *args, "--out", tmp_path / "out") == 2
  err = capsys.readouterr().err.strip().splitlines()
  assert len(err) == 1 and err[0].startswith("dwm-jax embed: ") and message in err[0], err
  assert not (tmp_path / "out" / "records").exists()


def test_a_failing_write_stops_with_status_1_and_a_rerun_finishes(collection, export, tmp_path,
                                                                  capsys):
  """The last file's frames cannot be moved into place (a folder is in the way): one line,
  exit 1, the files done before it stay done; once it is moved away the rerun does the rest."""
  out = tmp_path / "out"
  (out / "frames" / "stereo44k.wav.npy").mkdir(parents=True)
  args = ["--encoder", export, collection, "--out", out, "--frames", "--workers", "0"]
  assert embed_cmd(*args) == 1
  err = capsys.readouterr().err.strip().splitlines()[-1]
  assert err.startswith("dwm-jax embed: writing the outputs failed (") and "rerun" in err
  assert not (out / "index.csv").exists() and os.listdir(out / ".tmp") == []
  done = [k for k, r in embed_store.read_records(str(out)).items() if r["status"] == "ok"]
  assert 1 <= len(done) < 5 and "stereo44k.wav" not in done
  for name in done:
    assert np.load(out / "frames" / f"{name}.npy").shape[1] == 160
  (out / "frames" / "stereo44k.wav.npy").rmdir()
  assert embed_cmd(*args) == 0
  assert [r["file_name"] for r in index_of(out)] == READABLE
  assert f"embedded {5 - len(done)} files" in capsys.readouterr().out


def test_a_missing_encoder_is_refused(tmp_path, capsys):
  (tmp_path / "a.wav").write_bytes(b"")
  assert embed_cmd("--encoder", tmp_path / "none.msgpack", tmp_path, "--out", tmp_path / "o") == 2
  assert "cannot load the encoder" in capsys.readouterr().err


@pytest.mark.slow
def test_tfds_input(tfds_dir, export, tmp_path):
  """tfds:NAME: every split, records named SPLIT/INDEX, decoded as the probe decodes them."""
  from dwm_jax.data.tfds_source import open_data_source, to_wave
  from tests.tiny_tfds import TFDS_NAME
  out = tmp_path / "out"
  assert embed_cmd("--encoder", export, f"tfds:{TFDS_NAME}", "--out", out, "--tfds-data-dir",
                   tfds_dir, "--split", "test", "--split", "validation") == 0
  index = index_of(out)
  assert [r["file_name"] for r in index] == [f"test/{i}" for i in range(4)] + [
      f"validation/{i}" for i in range(4)]
  enc, clips = load_encoder(export), np.load(out / "clips.npy")
  ds = open_data_source(TFDS_NAME, "test", str(tfds_dir))
  for i in range(4):
    _, clip = embed_logmel(enc, log_mel(to_wave(ds[i]["audio"], 8000, 16000)))
    np.testing.assert_allclose(clips[i], clip, rtol=1e-5, atol=1e-6)
