"""``dwm-jax prepare SRC_DIR OUT_DIR``: audio folder -> log-mel ``.npy`` tree or shards + stats.

``--layout npy`` (the default), the M2D convention (``wav_to_lms.py``): every audio file under
SRC_DIR becomes ``OUT_DIR/<same relative path>.npy`` holding its ``[80, T]`` log-mel (16 kHz
mono, see :mod:`dwm_jax.data.log_mel`). Also written to OUT_DIR:

- ``files.csv``: ``file_name`` of every prepared file (relative to OUT_DIR): ``data.csv`` for
  ``data.source = 'npy'``;
- ``stats.json``: mean/std over all prepared log-mels (``data.stats``);
- ``prepare_report.json``: counts, seconds of audio, and every skipped file with its reason.

``--layout shards`` (for large sets and buckets, :mod:`dwm_jax.data.shards`): the files, in
sorted order, are grouped ``--clips-per-shard`` at a time; each group becomes one shard (a Zarr
v3 array of its clips' log-mels, time-major) and its record; ``clips.csv`` (``data.csv`` for
``data.source = 'shards'``), ``manifest.json``, ``stats.json`` and ``prepare_report.json`` follow.
SRC_DIR and OUT_DIR may be buckets (``gs://``).

Parallel worker processes (one file, or one shard, at a time), a progress bar, resumable:
existing outputs are kept and only read for the statistics (a shard is done once its record is
written, after its array), and outputs are written atomically, so an interrupted run leaves no
partial file and its rerun writes what an uninterrupted run would have. Unreadable, empty, too
short, NaN/Inf and silent files are skipped and reported; none aborts the run.
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

from dwm_jax import console, faults, paths
from dwm_jax.data import audio_io, shards
from dwm_jax.data.log_mel import LogMelSpec, log_mel
from dwm_jax.data.stats import RunningStats, save_stats

LAYOUTS = ("npy", "shards")
PROG = "dwm-jax prepare"

log = logging.getLogger(__name__)


def _out_name(rel: str) -> str:
  return str(Path(rel).with_suffix(".npy").as_posix())


def audio_log_mel(src_root: str, rel: str, min_seconds: float, silence: float,
                  spec: LogMelSpec = LogMelSpec()) -> tuple[np.ndarray, float]:
  """``(log-mel [F, T] float32, seconds)`` of one audio file; raises ``AudioError`` for a file
  to skip (unreadable, empty, too short, NaN, silent)."""
  path = paths.join(src_root, rel)
  wave = audio_io.load_audio(path, spec.sample_rate, min_seconds=min_seconds)
  if float(wave.max() - wave.min()) <= silence:
    raise audio_io.AudioError(path, "silent", f"peak-to-peak {float(wave.max() - wave.min()):.2e}")
  return log_mel(wave, spec), wave.shape[0] / spec.sample_rate


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
      lm, seconds = audio_log_mel(src_root, rel, min_seconds, silence, spec)
      out_path.parent.mkdir(parents=True, exist_ok=True)
      tmp = out_path.with_name(out_path.name + f".tmp{os.getpid()}")
      with open(tmp, "wb") as f:
        np.save(f, lm.astype(dtype))
      os.replace(tmp, out_path)
      x = lm.astype(dtype).astype(np.float64)
      res.update(status="converted", seconds=seconds)
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
  results = _run(_star, jobs, workers, progress, len(jobs), lambda r: 1)

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


def shard_job(src_root: str, out_root: str, shard: int, files: list[str], dtype: str,
              min_seconds: float, silence: float, chunk_frames: int) -> dict:
  """Converts one group of files into shard ``shard`` and writes its record (after the array);
  returns the record. A shard whose record already lists the same files and format is kept."""
  spec = LogMelSpec()
  record_path = paths.join(out_root, shards.shard_name(shard) + ".json")
  want = {"shard": shard, "files": files, "dtype": dtype, "n_mels": spec.n_mels,
          "chunk_frames": chunk_frames}
  if paths.exists(record_path):
    try:
      record = json.loads(paths.read_text(record_path))
    except ValueError:
      record = {}
    if all(record.get(k) == v for k, v in want.items()):
      return {**record, "status": "done"}
  logmels, clips, skipped = [], [], []
  acc = RunningStats()
  for rel in files:
    try:
      lm, seconds = audio_log_mel(src_root, rel, min_seconds, silence, spec)
      x = lm.astype(dtype)
      acc.add(x)
    except audio_io.AudioError as e:
      skipped.append({"file": rel, "reason": e.reason, "detail": e.detail})
      continue
    except Exception as e:  # pylint: disable=broad-except  (one file must not stop the others)
      skipped.append({"file": rel, "reason": "unreadable", "detail": f"{type(e).__name__}: {e}"})
      continue
    logmels.append(x)
    clips.append({"file_name": rel, "frames": int(x.shape[1]), "seconds": seconds})
  if logmels:
    shards.write_shard(paths.join(out_root, shards.shard_name(shard)),
                       np.concatenate(logmels, axis=1), chunk_frames)
  record = {**want, "frames": sum(c["frames"] for c in clips), "clips": clips,
            "skipped": skipped, "sums": {"n_clips": acc.n_clips, "n": acc.n, "s": acc.s,
                                         "ss": acc.ss}}
  paths.write_text(record_path, json.dumps(record, indent=1) + "\n")  # the shard is done
  return {**record, "status": "converted"}


def _shard_star(args):
  return shard_job(*args)


def prepare_shards(src_dir: str, out_dir: str, *, workers: int = 0, dtype: str = "float16",
                   min_seconds: float = 0.1, silence: float = 1e-5,
                   clips_per_shard: int = 1024, chunk_frames: int = shards.CHUNK_FRAMES,
                   progress: bool = True) -> dict:
  """``--layout shards``: runs the shard jobs, then writes ``clips.csv``, ``manifest.json``,
  ``stats.json`` and the report (also returned)."""
  src, out = paths.absolute(src_dir), paths.absolute(out_dir)
  if clips_per_shard < 1 or chunk_frames < 1:
    raise ValueError(f"clips_per_shard ({clips_per_shard}) and chunk_frames ({chunk_frames}) "
                     "must be positive")
  files = audio_io.find_audio_files(src)  # raises if src is not a folder
  if not files:
    raise FileNotFoundError(f"no audio files ({', '.join(audio_io.AUDIO_EXTENSIONS)}) "
                            f"under {src}")
  paths.check_writable(out)
  paths.makedirs(paths.join(out, shards.SHARDS_DIR))
  groups = [files[i:i + clips_per_shard] for i in range(0, len(files), clips_per_shard)]
  jobs = [(src, out, k, group, dtype, min_seconds, silence, chunk_frames)
          for k, group in enumerate(groups)]
  t0 = time.perf_counter()
  records = _run(_shard_star, jobs, workers, progress, len(files), lambda r: len(r["files"]))
  records.sort(key=lambda r: r["shard"])

  acc = RunningStats()
  for r in records:
    part = RunningStats()
    part.n_clips, part.n, part.s, part.ss = (r["sums"][k] for k in ("n_clips", "n", "s", "ss"))
    acc.merge(part)
  if acc.n_clips:
    save_stats(paths.join(out, "stats.json"), acc.result())
  skipped = [s for r in records for s in r["skipped"]]
  report = {
      "source": src, "output": out, "layout": "shards", "files": len(files),
      "converted": sum(len(r["clips"]) for r in records if r["status"] == "converted"),
      "already_done": sum(len(r["clips"]) for r in records if r["status"] == "done"),
      "skipped": len(skipped),
      "skipped_by_reason": dict(Counter(s["reason"] for s in skipped)),
      "skipped_files": skipped,
      "seconds_converted": sum(c["seconds"] for r in records if r["status"] == "converted"
                               for c in r["clips"]),
      "seconds_total": sum(c["seconds"] for r in records for c in r["clips"]),
      "wall_seconds": time.perf_counter() - t0,
      "dtype": dtype, "shards": len(records), "clips_per_shard": clips_per_shard,
      "chunk_frames": chunk_frames,
  }
  if acc.n_clips:
    st = acc.result()
    report["stats"] = {"mean": st.mean, "std": st.std}
  paths.write_text(paths.join(out, "prepare_report.json"), json.dumps(report, indent=2))
  shards.write_manifest(out, records, n_mels=LogMelSpec().n_mels, dtype=dtype,
                        chunk_frames=chunk_frames)
  return report


def _run(fn, jobs: list, workers: int, progress: bool, total: int, size) -> list:
  """``[fn(job) for job in jobs]`` in ``workers`` processes (0: here), with a progress bar of
  ``total`` files advanced by ``size(result)``."""
  from tqdm import tqdm  # pylint: disable=import-outside-toplevel
  bar = tqdm(total=total, unit="file", desc="prepare", disable=not progress, file=sys.stderr)
  results = []
  if workers > 0:
    # spawn: safe even when the caller has JAX (multithreaded) loaded.
    ctx = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(workers, mp_context=ctx) as pool:
      for r in pool.map(fn, jobs, chunksize=max(1, min(64, len(jobs) // (8 * workers)))):
        results.append(r)
        bar.update(size(r))
  else:
    for job in jobs:
      results.append(fn(job))
      bar.update(size(results[-1]))
  bar.close()
  return results


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
    listing = (f"{report['shards']} shards, clip list -> clips.csv, manifest.json"
               if report.get("layout") == "shards" else "file list -> files.csv")
    lines.append(f"  stats: mean {report['stats']['mean']:.4f}, std {report['stats']['std']:.4f}"
                 f" -> stats.json; {listing}")
  return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
  p = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n")[0])
  p.add_argument("src_dir")
  p.add_argument("out_dir")
  p.add_argument("--layout", choices=LAYOUTS, default="npy",
                 help="npy: one .npy per clip (M2D's); shards: many clips per shard, for large "
                      "sets and buckets (see docs/data.md)")
  p.add_argument("--workers", type=int, default=os.cpu_count() or 1,
                 help="worker processes (0: convert in this process)")
  p.add_argument("--dtype", choices=("float16", "float32"), default="float16")
  p.add_argument("--min-seconds", type=float, default=0.1,
                 help="shorter files are skipped as 'too short'")
  p.add_argument("--silence", type=float, default=1e-5,
                 help="files whose peak-to-peak amplitude is at most this are skipped as silent")
  p.add_argument("--clips-per-shard", type=int, default=1024,
                 help="--layout shards: files per shard (1024 10 s clips: 160 MB in float16)")
  p.add_argument("--chunk-frames", type=int, default=shards.CHUNK_FRAMES,
                 help="--layout shards: frames per stored chunk, the unit a crop reads")
  p.add_argument("--no-progress", action="store_true")
  args = p.parse_args(argv)
  console.setup_logging("warning")
  common = dict(workers=args.workers, dtype=args.dtype, min_seconds=args.min_seconds,
                silence=args.silence, progress=not args.no_progress)
  try:
    if args.layout == "shards":
      report = prepare_shards(args.src_dir, args.out_dir, clips_per_shard=args.clips_per_shard,
                              chunk_frames=args.chunk_frames, **common)
    else:
      report = prepare(args.src_dir, args.out_dir, **common)
  except faults.Fault as e:  # a bucket that is missing, unreachable or refuses the credentials
    return console.report_fault(PROG, e)
  except (FileNotFoundError, NotADirectoryError, ValueError) as e:  # the request as given
    print(f"{PROG}: {e}", file=sys.stderr)
    return 2
  except OSError as e:  # e.g. the disk filled: what is finished is kept
    print(f"{PROG}: {faults.one_line(e)}; rerun the same command to finish (finished outputs "
          "are kept)", file=sys.stderr)
    return 1
  print(format_report(report))
  return 0
