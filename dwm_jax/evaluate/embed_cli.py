"""``dwm-jax embed``: embeddings of a whole audio collection, any length, resumable.

  dwm-jax embed --encoder m2d.msgpack ~/recordings --out ~/emb          # clip embeddings
  dwm-jax embed --workdir W files.csv --out emb --frames [--hop-ms 40] [--layers]
  dwm-jax embed --encoder m2d.msgpack tfds:NAME [--split test] --out emb
  dwm-jax embed --encoder gs://b/m2d.msgpack gs://b/audio --out gs://b/emb --shard 0/4  # 4 hosts

INPUT: a folder (every audio file ``prepare`` reads, recursively), a CSV with ``file_name``, one
file, ``tfds:NAME``, local or in a bucket. Outputs and how to load them: ``docs/embed.md``
(``dwm_jax.evaluate.embed_store``). Rerunning the same command continues where a run stopped.
Exit status 0 when every file of this process's share is done (unreadable ones are skipped and
listed in ``embed_report.json``), 1 when writing an output fails, 2 for a request that cannot
work (input, encoder, options, an ``--out`` holding other embeddings, memory).
"""
from __future__ import annotations

import argparse
import contextlib
import logging
import os
import signal
import sys
import threading
import time

from dwm_jax import console, distributed, faults, paths

log = logging.getLogger(__name__)
PROG = "dwm-jax embed"


class EmbedUsage(faults.UsageFault):
  """Arguments that cannot work together, or an encoder that cannot be loaded."""


def _parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n")[0])
  src = p.add_mutually_exclusive_group(required=True)
  src.add_argument("--workdir", help="pretraining workdir (its latest checkpoint)")
  src.add_argument("--encoder", help="encoder export file (dwm-jax export / import-torch)")
  p.add_argument("input", help="folder, CSV with file_name, audio file, or tfds:NAME")
  p.add_argument("--out", required=True, help="output folder (local or gs://...)")
  p.add_argument("--frames", action="store_true",
                 help="also write each file's frame embeddings: frames/<file>.npy [K, E]")
  p.add_argument("--layers", action="store_true",
                 help="also write every block's output: layers/<file>.npy [K, L, E]")
  p.add_argument("--hop-ms", type=float, default=None,
                 help="timestamp hop of frames / layers: 160 (one patch column, default), 80, "
                      "40, 20 or 10 (each finer hop embeds 160 / hop shifted windows)")
  p.add_argument("--dtype", choices=("float32", "float16"), default="float32",
                 help="dtype of frames / layers on disk (clip embeddings stay float32)")
  p.add_argument("--batch-size", type=int, default=32,
                 help="rows of windows per device call (rounded up to the local devices)")
  p.add_argument("--segments-per-row", type=int, default=4,
                 help="short windows (clip ends) packed into one row")
  p.add_argument("--workers", type=int, default=min(8, os.cpu_count() or 1),
                 help="reader threads decoding files (0: in the main thread)")
  p.add_argument("--split", action="append", default=None,
                 help="TFDS split to embed (repeatable; default every split)")
  p.add_argument("--tfds-data-dir", default=None)
  p.add_argument("--shard", default=None, metavar="I/N",
                 help="take the I-th of N disjoint shares of the files (independent processes)")
  p.add_argument("--distributed", action="store_true",
                 help="a multi-host JAX job: each process takes its share; process 0 writes the "
                      "index (jax.distributed from the environment, as pretrain)")
  p.add_argument("--no-progress", action="store_true")
  p.add_argument("--debug", action="store_true", help="show tracebacks of expected failures")
  return p


def _shard(text: str | None) -> tuple[int, int]:
  if text is None:
    return 0, 1
  try:
    i, n = (int(v) for v in text.split("/"))
  except ValueError:
    i, n = -1, 0
  if n < 1 or not 0 <= i < n:
    raise EmbedUsage(f"--shard must be I/N with 0 <= I < N, got {text!r}")
  return i, n


def _check_args(args: argparse.Namespace) -> None:
  for name, low in (("batch_size", 1), ("segments_per_row", 1), ("workers", 0)):
    if getattr(args, name) < low:
      raise EmbedUsage(f"--{name.replace('_', '-')} must be >= {low}, got "
                       f"{getattr(args, name)}")
  if args.hop_ms is not None and not (args.frames or args.layers):
    raise EmbedUsage("--hop-ms sets the timestamps of frame embeddings: add --frames or --layers")
  if args.shard and args.distributed:
    raise EmbedUsage("--shard and --distributed both split the files: give one")


def _encoder(args):
  from dwm_jax.evaluate.encoder import load_encoder  # pylint: disable=import-outside-toplevel
  where = args.workdir or args.encoder
  paths.check_bucket(where)
  try:
    return load_encoder(where), where
  except (FileNotFoundError, ValueError) as e:
    raise EmbedUsage(f"cannot load the encoder: {e}") from e


def settings_for(encoder, where: str, input_spec: str, args, hop_frames: int,
                 first_s: float) -> dict:
  """``embed.json``: what the outputs are, and what a rerun must keep."""
  return {
      "format": "dwm-jax-embeddings/1",
      "input": input_spec if input_spec.startswith("tfds:") else paths.absolute(input_spec),
      "splits": args.split,
      "encoder": {"source": paths.absolute(where), "fingerprint": encoder.fingerprint,
                  "model": encoder.model_cfg.to_dict(), "norm_mean": encoder.norm_mean,
                  "norm_std": encoder.norm_std, "embedding_size": encoder.embedding_size,
                  "depth": int(encoder.module.depth)},
      "outputs": {"clip": True, "frames": bool(args.frames), "layers": bool(args.layers),
                  "dtype": args.dtype},
      "timestamps": {"first_s": first_s, "hop_s": hop_frames * 0.01},
  }


def _compile(encoder, batch: int, segments: int, layers: bool, mesh):
  """The program, compiled once from shapes, and a refusal when it cannot fit."""
  from dwm_jax.evaluate import packed_encoder  # pylint: disable=import-outside-toplevel
  from dwm_jax.train import memory  # pylint: disable=import-outside-toplevel
  from dwm_jax.train import mesh as mesh_lib  # pylint: disable=import-outside-toplevel
  forward = packed_encoder.packed_forward(encoder, layers)
  args = packed_encoder.abstract_inputs(encoder, batch, segments, mesh_lib.replicated(mesh),
                                      mesh_lib.batch_sharded(mesh))
  compiled = forward.lower(*args).compile()
  plan = memory.plan_of(compiled, batch // mesh.devices.size, mesh.devices.flat[0])
  need, have = memory.human(plan.needed_bytes), plan.available_bytes
  if not plan.fits:
    raise memory.DoesNotFit(
        f"a batch of {batch} rows needs {need} per device, the device has "
        f"{memory.human(have)} ({plan.available_source}): lower --batch-size"
        f"{' or drop --layers' if layers else ''}")
  log.info("compiled once for batches of %d rows of %d columns on %d device(s): %s per device "
           "(%s of temporaries), %s available", batch, encoder.grid.time, mesh.devices.size, need,
           memory.human(plan.temp_bytes), "unknown" if have is None else memory.human(have))
  return compiled


@contextlib.contextmanager
def _stop_on_signals(stop: threading.Event):
  """SIGTERM / SIGINT: finish what is on the device, record it, stop (a second one aborts)."""
  if threading.current_thread() is not threading.main_thread():
    yield
    return

  def handler(signum, frame):
    del frame
    if stop.is_set():
      raise KeyboardInterrupt
    stop.set()
    log.warning("%s: stopping after the windows in flight; rerun the same command to continue",
                signal.Signals(signum).name)

  old = {s: signal.signal(s, handler) for s in (signal.SIGTERM, signal.SIGINT)}
  try:
    yield
  finally:
    for s, h in old.items():
      signal.signal(s, h)


class _Progress:
  """Files/s (with the ETA) on a tqdm bar, audio hours/s beside it."""

  def __init__(self, total: int, enabled: bool):
    from tqdm import tqdm  # pylint: disable=import-outside-toplevel
    self.bar = tqdm(total=total, unit="file", desc="embed", disable=not enabled,
                    file=sys.stderr, smoothing=0.1)
    self.t0 = time.perf_counter()
    self.seconds = 0.0
    self.ok = self.skipped = 0

  def __call__(self, key: str, seconds: float, ok: bool) -> None:
    del key
    self.seconds += seconds
    self.ok, self.skipped = self.ok + ok, self.skipped + (not ok)
    elapsed = max(time.perf_counter() - self.t0, 1e-9)
    self.bar.set_postfix_str(f"{self.seconds / 3600 / elapsed:.3g} audio h/s, "
                             f"{self.seconds / 3600:.2f} h", refresh=False)
    self.bar.update()


def _timestamps(patch_width: int, hop_ms: float | None) -> tuple[int, tuple[int, ...], float]:
  """``(hop in log-mel frames, first frame of each shifted stream, first centre in s)``: the
  HEAR module's (``dwm_jax.evaluate.hear.core``)."""
  from dwm_jax.evaluate.hear import core  # pylint: disable=import-outside-toplevel
  try:
    hop = core.hop_frames_for(patch_width, hop_ms)
  except ValueError as e:
    raise EmbedUsage(f"--hop-ms: {e}") from e
  first = core.first_start(patch_width, hop)
  starts = tuple(first + j * hop for j in range(patch_width // hop))
  return hop, starts, core.first_centre_ms(patch_width, hop) / 1000.0


def run(args: argparse.Namespace) -> dict:
  """The command; returns a summary of this run (and the report when it wrote the index)."""
  _check_args(args)
  process, count = _shard(args.shard)
  if args.distributed:
    distributed.initialize(distributed.resolve(auto=True))
  # pylint: disable=import-outside-toplevel  (JAX only after jax.distributed is set up)
  import jax
  from dwm_jax.evaluate import embed_inputs, embed_store, embed_stream
  from dwm_jax.train import mesh as mesh_lib
  if args.distributed:
    process, count = jax.process_index(), jax.process_count()
  t0 = time.perf_counter()
  paths.check_writable(args.out)  # a bad bucket fails before anything is loaded
  encoder, where = _encoder(args)
  hop, starts, first_s = _timestamps(encoder.patch_size[1], args.hop_ms)
  items = embed_inputs.find(args.input, splits=args.split, tfds_data_dir=args.tfds_data_dir)
  keys = [s.key for s in items]
  settings = settings_for(encoder, where, args.input, args, hop, first_s)
  progress = None
  store = embed_store.Store(args.out, settings, process=process)
  done = store.open()
  try:
    share = [s for i, s in enumerate(items) if i % count == process]
    todo = [s for s in share if s.key not in done]
    log.info("%s: %d files, %d in this share (%d of %d), %d already done", args.input,
             len(items), len(share), process, count, len(share) - len(todo))
    stats, stop = embed_stream.Stats(), threading.Event()
    if todo:
      store.clear_index()
      local = jax.local_devices()
      batch = -(-args.batch_size // len(local)) * len(local)
      mesh = mesh_lib.data_mesh(local)
      compiled = _compile(encoder, batch, args.segments_per_row, args.layers, mesh)
      progress = _Progress(len(todo), not args.no_progress)
      store.on_done = progress
      t_run = time.perf_counter()
      with _stop_on_signals(stop):
        stats = embed_stream.run(encoder, todo, store, batch_size=batch, starts=starts,
                                 layers=args.layers, segments=args.segments_per_row,
                                 workers=args.workers, mesh=mesh, forward=compiled, stop=stop)
  finally:
    store.close()
    if progress is not None:
      progress.bar.close()
  end = time.perf_counter()
  seconds, ok = (progress.seconds, progress.ok) if progress else (0.0, 0)
  running = end - t_run if progress else 0.0  # from the first file read, compiling excluded
  summary = {"files": len(items), "share": len(share), "embedded": ok,
             "skipped": progress.skipped if progress else 0, "audio_seconds": seconds,
             "wall_seconds": end - t0, "embed_seconds": running,
             "files_per_s": ok / running if running else 0.0,
             "audio_hours_per_s": seconds / 3600 / running if running else 0.0,
             "packing": stats.packing, "max_host_windows": stats.max_host_windows,
             "batches": stats.batches, "stopped": bool(todo) and stop.is_set()}
  if args.distributed and count > 1:
    from jax.experimental import multihost_utils  # pylint: disable=import-outside-toplevel
    multihost_utils.sync_global_devices("dwm-jax embed: every share done")
  if process == 0 or not args.distributed:
    report = embed_store.consolidate(args.out, keys, encoder.embedding_size,
                                     extra={"last_run": summary})
    if report is not None:
      summary["report"] = report
  return summary


def format_summary(args: argparse.Namespace, s: dict) -> str:
  line = (f"embedded {s['embedded']} files ({s['audio_seconds'] / 3600:.3f} h of audio) in "
          f"{s['embed_seconds']:.1f} s: {s['files_per_s']:.2f} files/s, "
          f"{s['audio_hours_per_s']:.3g} audio h/s ({s['wall_seconds']:.1f} s in all)")
  if s["skipped"]:
    line += f"; skipped {s['skipped']}"
  lines = [line]
  report = s.get("report")
  if report:
    lines.append(f"  {args.out}: {report['embedded']} of {report['files']} files in index.csv + "
                 f"clips.npy{' + frames/' if args.frames else ''}"
                 f"{' + layers/' if args.layers else ''}; embed_report.json")
    for reason, n in sorted(report["skipped_by_reason"].items()):
      examples = [f["file"] for f in report["skipped_files"] if f["reason"] == reason]
      lines.append(f"  skipped ({reason}): {n}, e.g. {faults.listing(examples)}")
  elif s["stopped"]:
    lines.append("  stopped before the end: rerun the same command to continue")
  else:
    lines.append(f"  {args.out}: files of other shares are not all done yet; the run that "
                 "finishes the last one writes index.csv (or rerun this command)")
  return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
  args = _parser().parse_args(argv)
  console.setup_logging()
  try:
    summary = run(args)
  except faults.Fault as e:
    return console.report_fault(PROG, e, debug=args.debug)
  print(format_summary(args, summary))
  return 0


if __name__ == "__main__":
  sys.exit(main())
