"""Input-pipeline throughput: batches/s and clips/s from prepared ``.npy`` and from raw WAV.

Generates an AudioSet-like folder (10 s synthetic clips written as 16-bit WAV with
``dwm-jax synth``), prepares it (``dwm-jax prepare``, float16 ``.npy``), then times
``dwm_jax.data.make_pretrain_loader`` (batch 64, 608-frame crops, normalised) for each source
(``npy``, ``audio``) and each worker count (0 = in the training process, with ``--threads``
prefetch threads; N = N grain worker processes). The first batch (worker start-up) is excluded.

It also times the per-clip work of one core directly (``np.load`` + crop; decode + resample +
log-mel), the figure to size workers with: ``workers ~= clips/s the train step consumes /
single-core clips/s`` (one worker ~ one core; add headroom). Writes ``results.csv`` and
``results.md`` to ``--out``.

  python experiments/input_pipeline/run.py                 # 2000 clips, workers 0,1,2
  python experiments/input_pipeline/run.py --small         # 192 clips, quick look
  python experiments/input_pipeline/run.py --workers 0,1,2,4,8 --num-clips 4000
"""
from __future__ import annotations

import argparse
import csv
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

from dwm_jax.config import base_config
from dwm_jax.data import audio_io, synthetic
from dwm_jax.data.log_mel import log_mel
from dwm_jax.data.pipeline import make_pretrain_loader
from dwm_jax.data.prepare import prepare

BATCH = 64
FRAMES = 608
FIELDS = ("source", "workers", "threads", "batches", "seconds", "batches_per_s", "clips_per_s",
          "clips_per_s_per_worker", "cpu_count")


def make_data(root: Path, num_clips: int, seconds: float, workers: int) -> tuple[Path, Path]:
  wav_dir, npy_dir = root / "wav", root / "npy"
  if not (wav_dir / "files.csv").is_file():
    t0 = time.perf_counter()
    synthetic.write_dataset(wav_dir, num_clips, seed=0, seconds=seconds)
    print(f"synthesised {num_clips} x {seconds:g} s WAV clips in {time.perf_counter() - t0:.1f} s")
  report = prepare(wav_dir / "audio", npy_dir, workers=workers, dtype="float16", progress=False)
  print(f"prepare: {report['converted']} converted, {report['already_done']} already done, "
        f"{report['skipped']} skipped, {report['wall_seconds']:.1f} s "
        f"({report['converted'] / max(report['wall_seconds'], 1e-9):.0f} files/s with "
        f"{workers} workers)")
  return wav_dir / "files.csv", npy_dir / "files.csv"


def time_loader(source: str, csv_path: Path, workers: int, threads: int, batches: int) -> dict:
  cfg = base_config().data
  cfg.source, cfg.csv = source, str(csv_path)
  cfg.num_workers, cfg.prefetch = workers, threads
  ds = make_pretrain_loader(cfg, input_shape=(80, FRAMES), global_batch_size=BATCH, seed=0)
  it = iter(ds)
  next(it)  # worker start-up and first fill excluded
  t0 = time.perf_counter()
  for _ in range(batches):
    b = next(it)["logmel"]
    assert b.shape == (BATCH, 80, FRAMES)
  dt = time.perf_counter() - t0
  if hasattr(it, "close"):
    it.close()
  clips = batches * BATCH / dt
  return {"source": source, "workers": workers, "threads": threads, "batches": batches,
          "seconds": round(dt, 3), "batches_per_s": round(batches / dt, 3),
          "clips_per_s": round(clips, 1),
          "clips_per_s_per_worker": round(clips / max(workers, 1), 1),
          "cpu_count": os.cpu_count()}


def single_core(wav_csv: Path, npy_csv: Path, n: int) -> dict:
  """Per-clip cost on one core, no pipeline: npy load + crop; WAV decode + log-mel."""
  wav_root, npy_root = wav_csv.parent, npy_csv.parent
  with open(wav_csv) as f:
    wavs = [line.strip() for line in f][1:n + 1]
  with open(npy_csv) as f:
    npys = [line.strip() for line in f][1:n + 1]
  rng = np.random.default_rng(0)
  t0 = time.perf_counter()
  for name in npys:
    x = np.load(npy_root / name).astype(np.float32)
    s = rng.integers(0, x.shape[1] - FRAMES + 1)
    _ = (x[:, s:s + FRAMES] + 7.1) / 4.2
  t_npy = (time.perf_counter() - t0) / len(npys)
  t0 = time.perf_counter()
  for name in wavs:
    w = audio_io.load_audio(wav_root / name)
  t_dec = (time.perf_counter() - t0) / len(wavs)
  t0 = time.perf_counter()
  for _ in range(len(wavs)):
    log_mel(w)
  t_lm = (time.perf_counter() - t0) / len(wavs)
  return {"npy_ms": t_npy * 1e3, "decode_ms": t_dec * 1e3, "log_mel_ms": t_lm * 1e3}


def write_results(out: Path, rows: list[dict], core: dict, args) -> str:
  out.mkdir(parents=True, exist_ok=True)
  with open(out / "results.csv", "w", newline="") as f:
    w = csv.DictWriter(f, FIELDS)
    w.writeheader()
    w.writerows(rows)
  lines = [
      f"# Input pipeline throughput ({platform.node() or 'host'}, {os.cpu_count()} CPUs, "
      f"Python {sys.version.split()[0]})", "",
      f"{args.num_clips} clips of {args.seconds:g} s; batch {BATCH} x 80 x {FRAMES}; "
      f"{args.batches} timed batches per row after one warm-up batch.", "",
      "| source | workers | threads | batches/s | clips/s | clips/s per worker |",
      "|---|---:|---:|---:|---:|---:|"]
  for r in rows:
    lines.append(f"| {r['source']} | {r['workers']} | {r['threads']} | {r['batches_per_s']:.2f} "
                 f"| {r['clips_per_s']:.0f} | {r['clips_per_s_per_worker']:.0f} |")
  lines += ["", "Single core, no pipeline (per clip): "
            f"npy load + crop + normalise {core['npy_ms']:.2f} ms "
            f"({1e3 / core['npy_ms']:.0f} clips/s); WAV decode {core['decode_ms']:.2f} ms + "
            f"log-mel {core['log_mel_ms']:.2f} ms "
            f"({1e3 / (core['decode_ms'] + core['log_mel_ms']):.0f} clips/s).", "",
            "Sizing: workers ~= (clips/s the train step consumes) / (clips/s per worker), "
            "plus headroom; 'workers 0' runs in the training process with `threads` prefetch "
            "threads."]
  md = "\n".join(lines) + "\n"
  (out / "results.md").write_text(md)
  return md


def main(argv: list[str] | None = None) -> int:
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--small", action="store_true", help="192 clips, 3 batches per row")
  p.add_argument("--num-clips", type=int, default=2000)
  p.add_argument("--seconds", type=float, default=10.0)
  p.add_argument("--workers", default="0,1,2", help="comma-separated worker counts")
  p.add_argument("--threads", type=int, default=2, help="prefetch threads per process")
  p.add_argument("--batches", type=int, default=10)
  p.add_argument("--data", default="/tmp/dwm_input_pipeline", help="generated data folder")
  p.add_argument("--out", default=str(Path(__file__).parent / "results"))
  args = p.parse_args(argv)
  if args.small:
    args.num_clips, args.batches = 192, 3
  root = Path(args.data) / f"{args.num_clips}x{args.seconds:g}s"
  wav_csv, npy_csv = make_data(root, args.num_clips, args.seconds,
                               workers=min(os.cpu_count() or 1, 8))
  core = single_core(wav_csv, npy_csv, n=min(64, args.num_clips))
  print(f"single core: {core}")
  rows = []
  for source, path in (("npy", npy_csv), ("audio", wav_csv)):
    for workers in [int(w) for w in args.workers.split(",")]:
      r = time_loader(source, path, workers, args.threads, args.batches)
      print(r)
      rows.append(r)
  print(write_results(Path(args.out), rows, core, args))
  return 0


if __name__ == "__main__":
  sys.exit(main())
