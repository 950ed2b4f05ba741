"""What the persistent compilation cache saves a launch: first and second launch, with and without.

For each size, three launches of ``dwm-jax pretrain``, each a fresh process and a fresh workdir
(nothing to resume), one device (``--xla_force_host_platform_device_count=1``):

- ``off``: ``--config.compile_cache=off``, the step compiled from scratch;
- ``first``: a new, empty cache folder: compiled, then written to the cache;
- ``second``: the same folder again: the step loaded from the cache.

Reported per launch, from its ``summary.json``: the step's compile time (lowering included), the
time to the first step (process start-up not included: from ``loop.train``'s start to the end of
the first step) and the process's wall time, plus whether the cache was hit and the final loss
(which must not differ between the three).

Sizes: ``quickstart`` (``configs/quickstart.py``) and ``base`` (the ViT-B M2D step of
``configs/m2d.py``, 80 x 608, at a small ``--base-batch``); each runs ``--steps`` steps.

  python experiments/compile_cache/run.py                       # both sizes (about 10 min here)
  python experiments/compile_cache/run.py --sizes quickstart --out /tmp/cc
Writes results.csv and results.md under --out (default experiments/compile_cache/results/).
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent


def size_args(size: str, steps: int, base_batch: int) -> list[str]:
  common = [f"--config.total_steps={steps}", f"--config.log_every_steps={steps}",
            "--config.mask_png_every_steps=0", "--config.probe.after_pretrain=False",
            "--config.data.stats_crops=0"]
  if size == "quickstart":
    return ["--config", str(REPO / "configs" / "quickstart.py"), *common]
  if size == "base":
    return ["--config", f"{REPO / 'configs' / 'm2d.py'}:model=base,data=synthetic",
            f"--config.batch_size={base_batch}", "--config.data.synthetic.num_clips=64",
            "--config.data.num_workers=0", *common]
  raise ValueError(f"unknown size {size!r}: quickstart or base")


def launch(args: list[str], workdir: str, cache: str) -> dict:
  env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
         "XLA_FLAGS": "--xla_force_host_platform_device_count=1"}
  env.pop("JAX_COMPILATION_CACHE_DIR", None)
  t = time.perf_counter()
  proc = subprocess.run([sys.executable, "-m", "dwm_jax.cli", "pretrain", *args, "--workdir",
                         workdir, f"--config.compile_cache={cache}"], cwd=REPO, env=env,
                        capture_output=True, text=True, timeout=3600)
  wall = time.perf_counter() - t
  if proc.returncode:
    raise RuntimeError(f"launch failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
  summary = json.loads(Path(workdir, "summary.json").read_text())
  record = summary["launches"][-1]
  return {"compile_s": record["compile_seconds"], "first_step_s": record["startup_seconds"],
          "wall_s": wall, "cache_hit": record["compile_cache_hit"],
          "final_loss": summary["final_loss"]}


def measure(size: str, steps: int, base_batch: int) -> list[dict]:
  args = size_args(size, steps, base_batch)
  rows = []
  with tempfile.TemporaryDirectory() as tmp:
    cache = os.path.join(tmp, "jax_cache")
    for name, setting in (("off", "off"), ("first", cache), ("second", cache)):
      row = {"size": size, "launch": name, **launch(args, os.path.join(tmp, name), setting)}
      print(row, flush=True)
      rows.append(row)
  return rows


def write(rows: list[dict], out: Path, header: list[str]) -> str:
  out.mkdir(parents=True, exist_ok=True)
  with open(out / "results.csv", "w", newline="") as f:
    w = csv.DictWriter(f, fieldnames=list(rows[0]))
    w.writeheader()
    w.writerows(rows)
  lines = header + ["", "| size | launch | cache hit | compile s | time to first step s | "
                    "process wall s | final loss |", "|---|---|---|---:|---:|---:|---:|"]
  for r in rows:
    lines.append(f"| {r['size']} | {r['launch']} | {r['cache_hit']} | {r['compile_s']:.1f} | "
                 f"{r['first_step_s']:.1f} | {r['wall_s']:.1f} | {r['final_loss']:.6f} |")
  lines.append("")
  for size in dict.fromkeys(r["size"] for r in rows):
    by = {r["launch"]: r for r in rows if r["size"] == size}
    same = len({r["final_loss"] for r in by.values()}) == 1
    lines.append(f"- {size}: the second launch compiled in {by['second']['compile_s']:.1f} s "
                 f"against {by['first']['compile_s']:.1f} s for the first "
                 f"({by['first']['compile_s'] / by['second']['compile_s']:.1f}x less), and "
                 f"reached its first step {by['first']['first_step_s'] - by['second']['first_step_s']:.1f} s "
                 f"sooner; final losses {'identical' if same else 'DIFFER'} across the 3 launches.")
  text = "\n".join(lines) + "\n"
  (out / "results.md").write_text(text)
  return text


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--sizes", default="quickstart,base")
  p.add_argument("--steps", type=int, default=2)
  p.add_argument("--base-batch", type=int, default=2)
  p.add_argument("--out", default=str(HERE / "results"))
  a = p.parse_args(argv)
  import jax  # pylint: disable=import-outside-toplevel
  header = ["# Persistent compilation cache: first and second launch", "",
            f"jax {jax.__version__}, {platform.platform()}, {os.cpu_count()} CPUs, "
            f"{time.strftime('%Y-%m-%d %H:%M:%S')}; load average before: "
            f"{os.getloadavg()[0]:.1f}; `python experiments/compile_cache/run.py "
            f"--sizes {a.sizes} --steps {a.steps} --base-batch {a.base_batch}`"]
  rows = []
  for size in a.sizes.split(","):
    rows += measure(size, a.steps, a.base_batch)
  header[-1] += f"; load average after: {os.getloadavg()[0]:.1f}"
  print(write(rows, Path(a.out), header))
  same = all(len({r["final_loss"] for r in rows if r["size"] == s}) == 1
             for s in {r["size"] for r in rows})
  return 0 if same else 1


if __name__ == "__main__":
  raise SystemExit(main())
