"""Audio hours embedded per second by ``dwm-jax embed`` (issue 30's benchmark).

For each encoder (the quickstart's 4-block tiny ViT at 80 x 208, and ViT-B at 80 x 608, random
weights: the speed does not depend on them) and each synthesized collection:

- **bare**: the compiled program alone on full rows of windows already on the device, called
  back to back (``dwm_jax.timing.median_seconds``) just before and just after each end-to-end
  run (their mean): the windows/s, hence audio hours/s, the device sustains at 100% packing;
- **end to end**: ``dwm-jax embed`` on the collection's WAV files (in this process, clip
  embeddings, timed from the first file read: compiling excluded): decoding, resampling, log-mel,
  windows, packing, the device, the commit log; files/s, audio hours/s, and the packing (real
  columns / columns encoded);
- **e2e / (bare x packing)**: how much of the device's rate the pipeline delivers (1.0: the host
  keeps the device busy). On a CPU the "device" shares the cores with the readers, so below 1.

Collections: ``10s`` (AudioSet-like clips), ``1s`` (speech-command-like clips: packing matters),
``3min`` (long recordings: windowing and streaming), WAV at ``--rate`` Hz.

  python experiments/embed_throughput/run.py                  # this CPU: quickstart + ViT-B
  python experiments/embed_throughput/run.py --small          # tiny sizes (tests, device check)
  python experiments/embed_throughput/run.py --batch base=256 --batch quickstart=512 \\
      --clips 10s=300 --clips 1s=600 --clips 3min=4 --workers 16   # an accelerator host
Writes results.csv and results.md under --out.
"""
from __future__ import annotations

import argparse
import csv
import platform
import shutil
import tempfile
import time
from pathlib import Path

import jax
import numpy as np
import soundfile as sf

from configs import m2d, quickstart
from dwm_jax import console, timing
from dwm_jax.evaluate import embed_cli
from dwm_jax.evaluate.encoder import load_encoder, random_encoder, save_encoder
from dwm_jax.train import mesh as mesh_lib

HERE = Path(__file__).resolve().parent
SECONDS = {"10s": 10.0, "1s": 1.0, "3min": 180.0}
CPU_CLIPS = {"10s": 48, "1s": 192, "3min": 2}
CPU_BATCH = {"quickstart": 32, "base": 8, "tiny": 8}


def encoder_for(name: str):
  if name == "quickstart":
    return random_encoder(quickstart.get_config().model, seed=0)
  if name == "base":
    return random_encoder(m2d.get_config("model=base,data=synthetic").model, seed=0)
  if name == "tiny":  # the --small check: one block at 80 x 64
    cfg = quickstart.get_config().model
    cfg.input_shape, cfg.depth, cfg.width, cfg.heads, cfg.mlp_dim = (80, 64), 1, 32, 2, 64
    return random_encoder(cfg, seed=0)
  return load_encoder(name)  # an export file or a workdir


def write_collection(root: Path, kind: str, count: int, rate: int, seed: int = 0) -> float:
  """``count`` WAV files of ``SECONDS[kind]`` (tones in noise); returns the audio seconds."""
  rng = np.random.default_rng(seed)
  folder = root / kind
  folder.mkdir(parents=True)
  n = int(SECONDS[kind] * rate)
  t = np.arange(n) / rate
  for i in range(count):
    x = 0.2 * np.sin(2 * np.pi * rng.uniform(100, 4000) * t) + 0.05 * rng.standard_normal(n)
    sf.write(str(folder / f"{i:05d}.wav"), x.astype(np.float32), rate, subtype="PCM_16")
  return count * SECONDS[kind]


def bare_timer(encoder, batch: int):
  """``steps -> rows (full windows) per second`` of the compiled program on device-resident
  inputs (the median call of ``steps``)."""
  mesh = mesh_lib.data_mesh(jax.local_devices())
  compiled = embed_cli._compile(encoder, batch, 4, False, mesh)  # pylint: disable=protected-access
  f, w = encoder.input_shape
  cols = encoder.grid.time
  rep, split = mesh_lib.replicated(mesh), mesh_lib.batch_sharded(mesh)
  params = jax.device_put(encoder.params, rep)
  table = jax.device_put(encoder.position_table, rep)
  cls = np.full((batch, 4), -1, np.int32)
  cls[:, 0] = 0
  inputs = [jax.device_put(a, split) for a in (
      np.random.default_rng(0).normal(size=(batch, f, w)).astype(np.float32),
      np.zeros((batch, cols), np.int32), np.tile(np.arange(cols, dtype=np.int32), (batch, 1)),
      cls)]
  def rate(steps: int) -> float:
    call = lambda: compiled(params, table, *inputs).block_until_ready()
    return batch / timing.median_seconds(call, steps)

  return rate


def end_to_end(export: str, folder: Path, batch: int, workers: int) -> dict:
  out = Path(tempfile.mkdtemp(prefix="embed-bench-out-"))
  try:
    args = embed_cli._parser().parse_args([  # pylint: disable=protected-access
        "--encoder", export, str(folder), "--out", str(out), "--batch-size", str(batch),
        "--workers", str(workers), "--no-progress"])
    return embed_cli.run(args)
  finally:
    shutil.rmtree(out, ignore_errors=True)


def _pairs(items: list[str], cast) -> dict:
  return {k: cast(v) for k, v in (item.split("=") for item in items)}


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--encoders", default="quickstart,base",
                 help="quickstart, base, tiny, or export files / workdirs (comma-separated)")
  p.add_argument("--clips", action="append", default=[], metavar="KIND=N",
                 help=f"files per collection ({', '.join(SECONDS)}); default {CPU_CLIPS}")
  p.add_argument("--batch", action="append", default=[], metavar="ENCODER=B",
                 help=f"rows per device call; default {CPU_BATCH} (others 32)")
  p.add_argument("--rate", type=int, default=16000, help="sample rate of the WAV files")
  p.add_argument("--workers", type=int, default=2, help="reader threads")
  p.add_argument("--steps", type=int, default=5, help="timed calls of the bare program")
  p.add_argument("--small", action="store_true", help="a one-block encoder, a few files")
  p.add_argument("--out", default=str(HERE / "results"))
  a = p.parse_args(argv)
  console.setup_logging("warning")
  encoders = ["tiny"] if a.small else a.encoders.split(",")
  clips = {"10s": 4, "1s": 8, "3min": 1} if a.small else {**CPU_CLIPS, **_pairs(a.clips, int)}
  batches = {**CPU_BATCH, **_pairs(a.batch, int)}
  out = Path(a.out)
  out.mkdir(parents=True, exist_ok=True)
  work = Path(tempfile.mkdtemp(prefix="embed-bench-"))
  rows = []
  try:
    audio = {kind: write_collection(work, kind, n, a.rate) for kind, n in clips.items() if n}
    for name in encoders:
      enc = encoder_for(name)
      export = str(work / f"{Path(name).stem}.msgpack")
      save_encoder(export, model_cfg=enc.model_cfg, params=enc.params, norm_mean=enc.norm_mean,
                   norm_std=enc.norm_std, pos_embed=enc.pos_embed)
      batch = batches.get(name, 32)
      window_s = enc.input_shape[1] * 0.01
      timed = bare_timer(enc, batch)
      for kind, seconds in audio.items():
        # The bare program just before and just after: a shared machine's load hits both.
        before = timed(a.steps)
        s = end_to_end(export, work / kind, batch, a.workers)
        bare = (before + timed(a.steps)) / 2
        ceiling = bare * window_s / 3600 * s["packing"]
        rows.append(dict(
            encoder=name, input=f"{enc.input_shape[0]}x{enc.input_shape[1]}",
            collection=kind, files=s["embedded"], audio_h=seconds / 3600, batch=batch,
            packing=s["packing"], bare_windows_per_s=bare,
            bare_audio_h_per_s=bare * window_s / 3600, e2e_files_per_s=s["files_per_s"],
            e2e_audio_h_per_s=s["audio_hours_per_s"],
            e2e_vs_bare=s["audio_hours_per_s"] / ceiling, embed_s=s["embed_seconds"]))
        print({k: round(v, 5) if isinstance(v, float) else v for k, v in rows[-1].items()},
              flush=True)
  finally:
    shutil.rmtree(work, ignore_errors=True)
  with open(out / "results.csv", "w", newline="") as f:
    w = csv.DictWriter(f, fieldnames=list(rows[0]))
    w.writeheader()
    w.writerows(rows)
  device = jax.devices()[0]
  lines = [f"Device: {device.device_kind} x{jax.local_device_count()} ({jax.default_backend()}),"
           f" jax {jax.__version__}, {platform.platform()}, {time.strftime('%Y-%m-%d %H:%M')}; "
           f"{a.workers} reader threads, WAV at {a.rate} Hz, clip embeddings", "",
           "| encoder | input | collection | files | audio h | batch | packing | bare windows/s "
           "| bare audio h/s | e2e files/s | e2e audio h/s | e2e / (bare x packing) |",
           "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
  lines += [f"| {r['encoder']} | {r['input']} | {r['collection']} | {r['files']} | "
            f"{r['audio_h']:.3f} | {r['batch']} | {r['packing']:.2f} | "
            f"{r['bare_windows_per_s']:.1f} | {r['bare_audio_h_per_s']:.4g} | "
            f"{r['e2e_files_per_s']:.2f} | {r['e2e_audio_h_per_s']:.4g} | "
            f"{r['e2e_vs_bare']:.2f} |" for r in rows]
  text = "\n".join(lines) + "\n"
  (out / "results.md").write_text(text)
  print(text)
  return 0


if __name__ == "__main__":
  raise SystemExit(main())
