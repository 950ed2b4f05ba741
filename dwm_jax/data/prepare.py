"""``dwm-jax prepare SRC_DIR OUT_DIR``: audio folder -> log-mel ``.npy`` tree + CSV + stats.

The M2D convention (``wav_to_lms.py``): every audio file under SRC_DIR becomes
``OUT_DIR/<same relative path>.npy`` holding its ``[80, T]`` log-mel (16 kHz mono, see
:mod:`dwm_jax.data.log_mel`). Also written to OUT_DIR:

- ``files.csv``: ``file_name`` of every prepared file (relative to OUT_DIR): ``data.csv`` for
  ``data.source = 'npy'``;
- ``stats.json``: mean/std over all prepared log-mels (``data.stats``);
- ``prepare_report.json``: counts, seconds of audio, and every skipped file with its reason.

Parallel worker processes, a progress bar, resumable (existing outputs are kept and only read for
the statistics; outputs are written atomically so an interrupted run leaves no partial file).
Unreadable, empty, too short, NaN/Inf and silent files are skipped and reported; none aborts
the run.
"""
from __future__ import annotations

import argparse
import concurrent.futures
import csv
import json
import logging
import multiprocessing
import os
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np

from dwm_jax import console
from dwm_jax.data import audio_io
from dwm_jax.data.log_mel import LogMelSpec, log_mel
from dwm_jax.data.stats import RunningStats, save_stats

log = logging.getLogger(__name__)


def _out_name(rel: str) -> str:
  return str(Path(rel).with_suffix(".npy").as_posix())


def convert_one(src_root: str, out_root: str, rel: str, dtype: str, min_seconds: float,
                silence: float) -> dict:
  """Convert one file (or read back an existing output); never raises for bad audio.

  Returns a dict: ``status`` converted | done | skipped, ``file_name`` (output, relative),
  ``reason``/``detail`` when skipped, ``seconds``, and stats sums ``n``, ``s``, ``ss``.
  """
  spec = LogMelSpec()
  out_rel = _out_name(rel)
  out_path = Path(out_root) / out_rel
  res = {"source": rel, "file_name": out_rel}
  try:
    if out_path.is_file():
      x = np.load(out_path).astype(np.float64)
      res.update(status="done", seconds=(x.shape[1] - 1) * spec.hop_length / spec.sample_rate)
    else:
      wave = audio_io.load_audio(Path(src_root) / rel, spec.sample_rate, min_seconds=min_seconds)
      if float(wave.max() - wave.min()) <= silence:
        raise audio_io.AudioError(Path(src_root) / rel, "silent",
                                  f"peak-to-peak {float(wave.max() - wave.min()):.2e}")
      lm = log_mel(wave, spec)
      out_path.parent.mkdir(parents=True, exist_ok=True)
      tmp = out_path.with_name(out_path.name + f".tmp{os.getpid()}")
      with open(tmp, "wb") as f:
        np.save(f, lm.astype(dtype))
      os.replace(tmp, out_path)
      x = lm.astype(dtype).astype(np.float64)
      res.update(status="converted", seconds=wave.shape[0] / spec.sample_rate)
  except audio_io.AudioError as e:
    res.update(status="skipped", reason=e.reason, detail=e.detail, n=0, s=0.0, ss=0.0)
    return res
  except Exception as e:  # anything else about one file must not stop the others
    res.update(status="skipped", reason="unreadable", detail=f"{type(e).__name__}: {e}", n=0,
               s=0.0, ss=0.0)
    return res
  res.update(n=int(x.size), s=float(x.sum()), ss=float(np.square(x).sum()))
  return res


def _star(args):
  return convert_one(*args)


def prepare(src_dir: str | os.PathLike, out_dir: str | os.PathLike, *, workers: int = 0,
            dtype: str = "float16", min_seconds: float = 0.1, silence: float = 1e-5,
            progress: bool = True) -> dict:
  """Runs the conversion; returns the report (also written to ``prepare_report.json``)."""
  src, out = Path(src_dir), Path(out_dir)
  if dtype not in ("float16", "float32"):
    raise ValueError(f"dtype must be float16 or float32, got {dtype!r}")
  files = audio_io.find_audio_files(src)  # raises if src is not a folder
  if not files:
    raise FileNotFoundError(f"no audio files ({', '.join(audio_io.AUDIO_EXTENSIONS)}) "
                            f"under {src}")
  out.mkdir(parents=True, exist_ok=True)
  jobs = [(str(src), str(out), rel, dtype, min_seconds, silence) for rel in files]
  t0 = time.perf_counter()
  from tqdm import tqdm
  bar = tqdm(total=len(jobs), unit="file", desc="prepare", disable=not progress, file=sys.stderr)
  results = []
  if workers > 0:
    # spawn: safe even when the caller has JAX (multithreaded) loaded.
    ctx = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(workers, mp_context=ctx) as pool:
      for r in pool.map(_star, jobs, chunksize=max(1, min(64, len(jobs) // (8 * workers)))):
        results.append(r)
        bar.update()
  else:
    for job in jobs:
      results.append(_star(job))
      bar.update()
  bar.close()

  acc = RunningStats()
  kept = []
  for r in results:
    if r["status"] == "skipped":
      log.warning("skipped %s: %s%s", src / r["source"], r["reason"],
                  f" ({r['detail']})" if r["detail"] else "")
      continue
    kept.append(r)
    acc.merge(_sums(r))
  kept.sort(key=lambda r: r["file_name"])
  with open(out / "files.csv", "w", newline="") as f:
    w = csv.writer(f)
    w.writerow(["file_name"])
    w.writerows([r["file_name"]] for r in kept)
  if kept:
    save_stats(out / "stats.json", acc.result())
  counts = Counter(r["status"] for r in results)
  report = {
      "source": str(src), "output": str(out), "files": len(results),
      "converted": counts["converted"], "already_done": counts["done"],
      "skipped": counts["skipped"],
      "skipped_by_reason": dict(Counter(r["reason"] for r in results
                                        if r["status"] == "skipped")),
      "skipped_files": [{"file": r["source"], "reason": r["reason"], "detail": r["detail"]}
                        for r in results if r["status"] == "skipped"],
      "seconds_converted": sum(r["seconds"] for r in results if r["status"] == "converted"),
      "seconds_total": sum(r["seconds"] for r in kept),
      "wall_seconds": time.perf_counter() - t0,
      "dtype": dtype,
  }
  if kept:
    st = acc.result()
    report["stats"] = {"mean": st.mean, "std": st.std}
  with open(out / "prepare_report.json", "w") as f:
    json.dump(report, f, indent=2)
  return report


def _sums(r: dict) -> RunningStats:
  acc = RunningStats()
  acc.n_clips, acc.n, acc.s, acc.ss = 1, r["n"], r["s"], r["ss"]
  return acc


def format_report(report: dict) -> str:
  lines = [f"prepared {report['source']} -> {report['output']}: {report['files']} files, "
           f"{report['converted']} converted, {report['already_done']} already done, "
           f"{report['skipped']} skipped; {report['seconds_converted']:.1f} s of audio converted "
           f"({report['seconds_total'] / 3600:.2f} h total) in {report['wall_seconds']:.1f} s"]
  for reason, n in sorted(report["skipped_by_reason"].items()):
    examples = [s["file"] for s in report["skipped_files"] if s["reason"] == reason][:3]
    lines.append(f"  skipped ({reason}): {n}, e.g. {', '.join(examples)}")
  if "stats" in report:
    lines.append(f"  stats: mean {report['stats']['mean']:.4f}, std {report['stats']['std']:.4f}"
                 f" -> stats.json; file list -> files.csv")
  return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
  p = argparse.ArgumentParser(prog="dwm-jax prepare", description=__doc__.split("\n")[0])
  p.add_argument("src_dir")
  p.add_argument("out_dir")
  p.add_argument("--workers", type=int, default=os.cpu_count() or 1,
                 help="worker processes (0: convert in this process)")
  p.add_argument("--dtype", choices=("float16", "float32"), default="float16")
  p.add_argument("--min-seconds", type=float, default=0.1,
                 help="shorter files are skipped as 'too short'")
  p.add_argument("--silence", type=float, default=1e-5,
                 help="files whose peak-to-peak amplitude is at most this are skipped as silent")
  p.add_argument("--no-progress", action="store_true")
  args = p.parse_args(argv)
  console.setup_logging("warning")
  report = prepare(args.src_dir, args.out_dir, workers=args.workers, dtype=args.dtype,
                   min_seconds=args.min_seconds, silence=args.silence,
                   progress=not args.no_progress)
  print(format_report(report))
  return 0
