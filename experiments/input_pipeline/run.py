"""Input-pipeline throughput from local disk and from a bucket, per layout, and host sizing.

Generates an AudioSet-like folder (10 s synthetic clips written as 16-bit WAV with
``dwm-jax synth``), prepares it twice (``dwm-jax prepare``: one float16 ``.npy`` per clip, and
``--layout shards``), puts both in a bucket on 127.0.0.1 (fake-gcs-server behind a latency proxy,
``bucket.py``), then times ``dwm_jax.data.make_pretrain_loader`` (batch 64, 608-frame crops,
normalised) for each layout, place (local disk; the bucket at each added latency) and worker
count, with two placements of the CPUs:

- ``shared``: the loader, the server and the proxy share every core (the server and the proxy
  cost CPU per request that a real bucket spends elsewhere);
- ``split`` (in-process loader only): the loader on CPU 0, the server and the proxy on CPU 1, as
  on a host whose bucket serves from other machines.

Rounds go round-robin over the rows and each row reports its median clips/s and its ratio to
the same layout, workers and placement on local disk (same run), so load from other jobs on the
machine spreads over all rows. The first ``prefetch + 1`` batches (worker start-up and the first
fill) are not timed.

The cost per clip is measured apart, one batch at a time (``data.prefetch`` 0, no workers, so
nothing is read ahead of the count): bytes read (local: by the loader's process; bucket: what
crossed the proxy), requests, CPU-ms of the loader and CPU-ms of the server and the proxy.

Then a table on paper: what an 8 x H100 host, a TPU v5e-8 host and a v4-32 slice need per host
(clips/s, cores, network, requests/s) for each layout, from the measured per-clip figures.
Writes ``results.csv``, ``results.md`` and ``sizing.csv`` to ``--out``.

  python experiments/input_pipeline/run.py           # 1024 clips, 3 rounds (7-9 min on 2 busy cores)
  python experiments/input_pipeline/run.py --small   # 64 clips, 1 round of 2 batches (the test)
"""
from __future__ import annotations

import argparse
import csv
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import psutil

sys.path.insert(0, str(Path(__file__).parent))
from bucket import Bucket  # pylint: disable=wrong-import-position

from dwm_jax.config import base_config  # pylint: disable=wrong-import-position
from dwm_jax.data import audio_io, synthetic  # pylint: disable=wrong-import-position
from dwm_jax.data.log_mel import log_mel  # pylint: disable=wrong-import-position
from dwm_jax.data.pipeline import make_pretrain_loader  # pylint: disable=wrong-import-position
from dwm_jax.data.prepare import prepare, prepare_shards  # pylint: disable=wrong-import-position

BATCH = 64
FRAMES = 608
CROP_BYTES = 80 * FRAMES * 2  # float16
FIELDS = ("cpus", "layout", "where", "latency_ms", "workers", "prefetch", "rounds", "clips_per_s",
          "vs_local", "cpu_count")
COST_FIELDS = ("layout", "where", "batches", "bytes_per_clip", "requests_per_clip",
               "cpu_ms_per_clip", "rig_cpu_ms_per_clip")
# The sizing targets: M2D ViT-B at 86 GFLOP per clip (fwd + bwd) and 45% of the chip's dense
# bf16 peak (the figures; replace them with the device check's measured clips/s).
GFLOP_PER_CLIP, MFU = 86.0, 0.45
HOSTS = (  # name, chips per host, hosts, dense bf16 TFLOP/s per chip
    ("8 x H100 (one host)", 8, 1, 989.0),
    ("TPU v5e-8 (one host)", 8, 1, 197.0),
    ("TPU v4-32 (4 hosts x 4 chips)", 4, 4, 275.0),
)
HEADROOM = 1.3  # cores and workers: 30% above the measured need


def make_data(root: Path, num_clips: int, seconds: float, clips_per_shard: int,
              workers: int) -> dict[str, Path]:
  """WAVs, then the .npy and the sharded layouts of them; returns each layout's data.csv."""
  wav_dir = root / "wav"
  if not (wav_dir / "files.csv").is_file():
    t0 = time.perf_counter()
    synthetic.write_dataset(wav_dir, num_clips, seed=0, seconds=seconds)
    print(f"synthesised {num_clips} x {seconds:g} s WAV clips in {time.perf_counter() - t0:.1f} s")
  for layout, fn, kw in (("npy", prepare, {}),
                         ("shards", prepare_shards, {"clips_per_shard": clips_per_shard})):
    report = fn(wav_dir / "audio", root / layout, workers=workers, dtype="float16",
                progress=False, **kw)
    print(f"prepare --layout {layout}: {report['converted']} converted, "
          f"{report['already_done']} already done, {report['skipped']} skipped, "
          f"{report['wall_seconds']:.1f} s with {workers} workers")
  return {"audio": wav_dir / "files.csv", "npy": root / "npy" / "files.csv",
          "shards": root / "shards" / "clips.csv"}


def _cpu_seconds(procs: list[psutil.Process]) -> float:
  return sum(t.user + t.system for t in (p.cpu_times() for p in procs))


def _read_bytes(procs: list[psutil.Process]) -> int:
  return sum(p.io_counters().read_chars for p in procs)


def pin(pid: int, cpus: set[int]) -> None:
  """Every thread of process ``pid`` to ``cpus`` (threads and processes it starts later
  inherit it)."""
  for tid in os.listdir(f"/proc/{pid}/task"):
    try:
      os.sched_setaffinity(int(tid), cpus)
    except OSError:  # the thread ended
      pass


def open_loader(layout: str, csv_path: str, workers: int, prefetch: int):
  cfg = base_config().data
  cfg.source = "audio" if layout == "audio" else layout
  cfg.csv, cfg.num_workers, cfg.prefetch = csv_path, workers, prefetch
  return iter(make_pretrain_loader(cfg, input_shape=(80, FRAMES), global_batch_size=BATCH,
                                   seed=0))


def throughput(layout: str, csv_path: str, workers: int, prefetch: int, batches: int) -> float:
  """Clips/s over ``batches`` batches, after ``prefetch + 1`` untimed ones."""
  it = open_loader(layout, csv_path, workers, prefetch)
  for _ in range(prefetch + 1):
    next(it)
  t0 = time.perf_counter()
  for _ in range(batches):
    assert next(it)["logmel"].shape == (BATCH, 80, FRAMES)
  dt = time.perf_counter() - t0
  if hasattr(it, "close"):
    it.close()
  return batches * BATCH / dt


def cost(layout: str, csv_path: str, bucket: Bucket | None, batches: int) -> dict:
  """Per clip, one batch at a time: bytes and requests read, CPU of the loader and of the
  bucket's server and proxy."""
  it = open_loader(layout, csv_path, workers=0, prefetch=0)
  next(it)  # opens the files or stores (and reads the chunk indexes it needs first)
  me = psutil.Process()
  cpu0, read0 = _cpu_seconds([me]), _read_bytes([me])
  if bucket:
    bucket.reset()
    rig0 = bucket.cpu_seconds()
  for _ in range(batches):
    next(it)
  cpu, read = _cpu_seconds([me]) - cpu0, _read_bytes([me]) - read0
  wire = bucket.counters() if bucket else None
  clips = batches * BATCH
  return {"layout": layout, "where": "bucket" if bucket else "local", "batches": batches,
          "bytes_per_clip": (wire["bytes_down"] if wire else read) / clips,
          "requests_per_clip": wire["requests"] / clips if wire else float("nan"),
          "cpu_ms_per_clip": cpu / clips * 1e3,
          "rig_cpu_ms_per_clip": (bucket.cpu_seconds() - rig0) / clips * 1e3 if bucket
                                 else float("nan")}


def single_core(wav_csv: Path, n: int) -> dict:
  """Per-clip cost of decoding a WAV and computing its log-mel on one core (no pipeline)."""
  names = [line.strip() for line in wav_csv.read_text().splitlines()[1:n + 1]]
  t0 = time.perf_counter()
  waves = [audio_io.load_audio(wav_csv.parent / name) for name in names]
  t_dec = (time.perf_counter() - t0) / len(names)
  t0 = time.perf_counter()
  for w in waves:
    log_mel(w)
  return {"decode_ms": t_dec * 1e3, "log_mel_ms": (time.perf_counter() - t0) / len(names) * 1e3}


def run_rows(plan: list[dict], data: dict, remote: dict, bucket: Bucket, rounds: int,
             batches: int, prefetch: int) -> list[dict]:
  """Every row of ``plan`` ``rounds`` times, round-robin; the median clips/s of each row."""
  every_cpu = os.sched_getaffinity(0)
  runs: list[list[float]] = [[] for _ in plan]
  for r in range(rounds):
    for row, out in zip(plan, runs):
      split = row["cpus"] == "split"
      pin(os.getpid(), {0} if split else every_cpu)
      for pid in bucket.pids:
        pin(pid, {1} if split else every_cpu)
      remote_row = row["where"] == "bucket"
      if remote_row:
        bucket.set_latency(row["latency_ms"] / 1e3)
      path = remote[row["layout"]] if remote_row else data[row["layout"]]
      out.append(throughput(row["layout"], str(path), row["workers"], prefetch, batches))
      print(f"round {r + 1}/{rounds} CPUs {row['cpus']:6s} {row['layout']:6s} "
            f"{row['where']:6s} +{row['latency_ms']:>3} ms workers {row['workers']}: "
            f"{out[-1]:7.0f} clips/s", flush=True)
  pin(os.getpid(), every_cpu)
  for pid in bucket.pids:
    pin(pid, every_cpu)
  rows = [{**row, "prefetch": prefetch, "rounds": rounds, "clips_per_s": statistics.median(out),
           "cpu_count": os.cpu_count()} for row, out in zip(plan, runs)]
  local = {(r["cpus"], r["layout"], r["workers"]): r["clips_per_s"] for r in rows
           if r["where"] == "local"}
  for r in rows:
    r["vs_local"] = r["clips_per_s"] / local[(r["cpus"], r["layout"], r["workers"])]
  return rows


def checks(rows: list[dict], latencies: list[int]) -> list[tuple[str, float, float]]:
  """The issue's targets: ``(what, measured, needed)``."""
  hi, lo = max(latencies), min(latencies)
  out = []
  for cpus, layout, w in sorted({(r["cpus"], r["layout"], r["workers"]) for r in rows
                                 if r["layout"] != "audio"}, key=lambda k: (k[0] != "shared",
                                                                           k[1] != "shards", k[2])):
    get = {(r["where"], r["latency_ms"]): r for r in rows
           if (r["cpus"], r["layout"], r["workers"]) == (cpus, layout, w)}
    if ("bucket", hi) not in get:
      continue
    what = f"{layout}, workers {w}, CPUs {cpus}"
    out.append((f"{what}: bucket +{hi} ms / +{lo} ms",
                get[("bucket", hi)]["clips_per_s"] / get[("bucket", lo)]["clips_per_s"], 0.9))
    out.append((f"{what}: bucket +{hi} ms / local disk", get[("bucket", hi)]["vs_local"],
                0.8 if layout == "shards" else 0.3))
  return out


def sizing(costs: list[dict]) -> list[dict]:
  """Per host of each machine, per layout read from a bucket: clips/s, cores, network and
  requests/s needed."""
  out = []
  for name, chips, hosts, tflops in HOSTS:
    per_host = chips * tflops * 1e12 * MFU / (GFLOP_PER_CLIP * 1e9)
    for c in costs:
      if c["where"] != "bucket":
        continue
      out.append({"machine": name, "hosts": hosts, "layout": c["layout"],
                  "clips_per_s_per_host": per_host,
                  "cores_per_host": per_host * c["cpu_ms_per_clip"] / 1e3 * HEADROOM,
                  "gbit_per_s_per_host": per_host * c["bytes_per_clip"] * 8 / 1e9,
                  "requests_per_s_per_host": per_host * c["requests_per_clip"],
                  "requests_per_s_total": per_host * hosts * c["requests_per_clip"]})
  return out


def _csv(path: Path, fields, rows: list[dict]) -> None:
  with open(path, "w", newline="") as f:
    w = csv.DictWriter(f, list(fields), extrasaction="ignore")
    w.writeheader()
    w.writerows(rows)


def write_results(out: Path, rows: list[dict], costs: list[dict], sized: list[dict], core: dict,
                  args, setup: str) -> str:
  out.mkdir(parents=True, exist_ok=True)
  _csv(out / "results.csv", FIELDS, rows)
  _csv(out / "cost.csv", COST_FIELDS, costs)
  _csv(out / "sizing.csv", list(sized[0]), sized)
  lat = [int(v) for v in args.latency_ms.split(",")]
  lines = [
      f"# Input pipeline throughput ({platform.node() or 'host'}, {os.cpu_count()} CPUs, "
      f"Python {sys.version.split()[0]}, load average {os.getloadavg()[0]:.1f} at the end)", "",
      f"{args.num_clips} clips of {args.seconds:g} s ({args.clips_per_shard} per shard); batch "
      f"{BATCH} x 80 x {FRAMES}; {args.batches} timed batches per row and round after "
      f"{args.prefetch + 1} untimed; {args.rounds} rounds, round-robin, median clips/s; "
      f"`data.prefetch` {args.prefetch}. {setup}", "",
      "| CPUs | layout | where | added latency | workers | clips/s | vs local disk |",
      "|---|---|---|---:|---:|---:|---:|"]
  for r in rows:
    lines.append(f"| {r['cpus']} | {r['layout']} | {r['where']} "
                 f"| {'+%d ms' % r['latency_ms'] if r['where'] == 'bucket' else '-'} "
                 f"| {r['workers']} | {r['clips_per_s']:.0f} | {r['vs_local']:.2f}x |")
  lines += ["", "Targets (the issue's):", "", "| check | measured | needed | met |",
            "|---|---:|---:|---|"]
  for what, got, need in checks(rows, lat):
    lines.append(f"| {what} | {got:.2f}x | {need:.1f}x | {'yes' if got >= need else 'NO'} |")
  lines += ["", f"## Cost per clip ({args.cost_batches} batches read one at a time, CPUs shared)",
            "",
            f"A crop is {CROP_BYTES / 1e3:.1f} kB of float16 (80 x {FRAMES}); a 10 s clip "
            f"{80 * 1001 * 2 / 1e3:.1f} kB. Local bytes are what the loader's process read "
            "from files (the page cache here); bucket bytes what crossed the proxy (HTTP "
            "headers included).", "",
            "| layout | where | kB read / clip | requests / clip | loader CPU-ms / clip "
            "| server + proxy CPU-ms / clip |", "|---|---|---:|---:|---:|---:|"]
  for c in costs:
    bucket_row = c["where"] == "bucket"
    lines.append(f"| {c['layout']} | {c['where']} | {c['bytes_per_clip'] / 1e3:.1f} "
                 f"| {'%.2f' % c['requests_per_clip'] if bucket_row else '-'} "
                 f"| {c['cpu_ms_per_clip']:.2f} "
                 f"| {'%.2f' % c['rig_cpu_ms_per_clip'] if bucket_row else '-'} |")
  if core:
    lines += ["", f"Single core, no pipeline, per clip: WAV decode {core['decode_ms']:.2f} ms + "
              f"log-mel {core['log_mel_ms']:.2f} ms "
              f"({1e3 / (core['decode_ms'] + core['log_mel_ms']):.0f} clips/s)."]
  lines += ["", "## Sizing on paper (the bucket rows of the cost table)", "",
            f"Target: M2D ViT-B at {GFLOP_PER_CLIP:g} GFLOP per clip and {MFU:.0%} of the chips' "
            f"dense bf16 peak; cores at this machine's loader CPU-ms per clip, plus "
            f"{HEADROOM - 1:.0%}.", "",
            "| machine | layout | clips/s per host | cores per host | Gbit/s per host "
            "| requests/s per host | requests/s, all hosts |",
            "|---|---|---:|---:|---:|---:|---:|"]
  for s in sized:
    lines.append(f"| {s['machine']} | {s['layout']} | {s['clips_per_s_per_host']:,.0f} "
                 f"| {s['cores_per_host']:.0f} | {s['gbit_per_s_per_host']:.1f} "
                 f"| {s['requests_per_s_per_host']:,.0f} | {s['requests_per_s_total']:,.0f} |")
  md = "\n".join(lines) + "\n"
  (out / "results.md").write_text(md)
  return md


def main(argv: list[str] | None = None) -> int:
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--small", action="store_true",
                 help="64 clips, shards and npy, no workers, 1 round of 2 batches (the test)")
  p.add_argument("--num-clips", type=int, default=1024)
  p.add_argument("--seconds", type=float, default=10.0)
  p.add_argument("--clips-per-shard", type=int, default=64)
  p.add_argument("--layouts", default="shards,npy,audio",
                 help="audio (raw WAV) runs from local disk only")
  p.add_argument("--workers", default="0,2", help="comma-separated worker counts")
  p.add_argument("--latency-ms", default="0,30", help="latencies the proxy adds, comma-separated")
  p.add_argument("--prefetch", type=int, default=4,
                 help="data.prefetch of every row: batch 64 x 4 = 256 reads in flight per "
                      "process, enough for 30 ms at 4000 clips/s (the default 2 is for the "
                      "per-host batches of real runs, 256 clips and up)")
  p.add_argument("--batches", type=int, default=24)
  p.add_argument("--cost-batches", type=int, default=16,
                 help="batches of the cost per clip, read one at a time")
  p.add_argument("--rounds", type=int, default=3)
  p.add_argument("--data", default="/tmp/dwm_input_pipeline", help="generated data folder")
  p.add_argument("--out", default=str(Path(__file__).parent / "results"))
  args = p.parse_args(argv)
  if args.small:
    args.num_clips, args.batches, args.rounds, args.cost_batches, args.prefetch = 64, 2, 1, 1, 1
    args.clips_per_shard, args.layouts, args.workers = 16, "shards,npy", "0"
  layouts = args.layouts.split(",")
  workers = [int(w) for w in args.workers.split(",")]
  latencies = [int(v) for v in args.latency_ms.split(",")]
  root = Path(args.data) / f"{args.num_clips}x{args.seconds:g}s"
  data = make_data(root, args.num_clips, args.seconds, args.clips_per_shard,
                   workers=0 if args.small else min(os.cpu_count() or 1, 8))
  core = single_core(data["audio"], n=min(32, args.num_clips)) if "audio" in layouts else {}
  bucket = Bucket(root / "bucket")
  try:
    t0 = time.perf_counter()
    remote = {layout: bucket.upload(data[layout].parent, layout) + "/" + data[layout].name
              for layout in layouts if layout != "audio"}
    print(f"uploaded {', '.join(remote)} to {bucket.url} in {time.perf_counter() - t0:.1f} s")
    plan = []
    for cpus in ("shared", "split") if len(os.sched_getaffinity(0)) >= 2 else ("shared",):
      for layout in layouts:
        if cpus == "split" and layout == "audio":
          continue
        places = [("local", 0)] + ([("bucket", lat) for lat in latencies]
                                   if layout != "audio" else [])
        plan += [{"cpus": cpus, "layout": layout, "where": where, "latency_ms": lat,
                  "workers": w}
                 for where, lat in places for w in (workers if cpus == "shared" else [0])]
    rows = run_rows(plan, data, remote, bucket, args.rounds, args.batches, args.prefetch)
    bucket.set_latency(0.0)
    costs = [cost(layout, str(data[layout]), None, args.cost_batches) for layout in layouts]
    costs += [cost(layout, remote[layout], bucket, args.cost_batches) for layout in layouts
              if layout != "audio"]
  finally:
    bucket.stop()
  sized = sizing(costs)
  setup = ("The bucket: fake-gcs-server (filesystem backend) on 127.0.0.1 behind "
           "`dwm_jax.testing.tcp_proxy.LatencyProxy` in its own process. CPUs `shared`: the "
           "loader, the server and the proxy share every core; `split`: the loader (workers 0) "
           "on CPU 0, the server and the proxy on CPU 1.")
  print(write_results(Path(args.out), rows, costs, sized, core, args, setup))
  return 0


if __name__ == "__main__":
  sys.exit(main())
