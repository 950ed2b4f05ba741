"""Fault soak (issue 28): a two-process ``dwm-jax pretrain`` hit again and again, at random
points (seeded), by the faults a multi-host job meets, each followed by a restart of both
processes with the same command, as a scheduler would. At the end the final parameters must
equal those of an uninterrupted run of that command, and no restart may have trained over a
checkpoint.

Two arms, one per kind of workdir, each with its own uninterrupted run:

- ``local`` (a shared file system; here a small tmpfs): ``kill9`` (``kill -9`` of either process:
  its supervisor, the trainer dies with it), ``sigterm`` (SIGTERM to one process: every process
  saves at one step and exits 0) and ``disk_full`` (a ballast file fills the disk before a save);
- ``bucket`` (``gs://`` on fake-gcs-server behind :class:`LatencyProxy`): ``kill9``, ``sigterm``
  and ``stall`` (the proxy stops forwarding for a random 5-40 s, then forwards again). A full
  disk is not a bucket fault: the server then answers 5xx and the client retries, a stall again.

Saves are synchronous (``checkpoint.async_save=False``): with asynchronous saves, a write that
fails in one process's background thread leaves the other processes in orbax's commit barrier
until orbax's 20-minute async timeout (see docs/faults.md). Faults come in a seeded shuffled
rotation. One is injected once process 0 logged a random step past the one the attempt resumed
from; an attempt ends when both processes exit, or goes on, hit by the next fault, if it rode
the fault out (a stall after which process 0 logs new steps). Per fault it records the step
reached, both exit statuses and last lines, the seconds from the fault until both processes
exited, the step the next attempt resumed from and the steps repeated. Wall time lost is the
arm's wall time minus its uninterrupted run's.

  python experiments/fault_soak/run.py                    # 2 x 10 faults (about 45 min here)
  python experiments/fault_soak/run.py --arms bucket --faults 3 --steps 80 --out /tmp/soak

Needs root for the tmpfs (without it the local arm leaves disk_full out, and says so). Writes
faults.csv, results.md and results.json under --out.
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

import jax
import numpy as np

from dwm_jax import paths
from dwm_jax.testing import gcs_server, tcp_proxy
from dwm_jax.train import checkpoint as ckpt

REPO = Path(__file__).resolve().parents[2]
TINY = REPO / "tests" / "configs" / "tiny.py"
ARMS = {"local": ("kill9", "sigterm", "disk_full"), "bucket": ("kill9", "sigterm", "stall")}
HEARTBEAT = 5          # --heartbeat_timeout_seconds of the soak's runs
COLLECTIVE = 20        # --collective_timeout_seconds (CPU gloo)
STALL_SECONDS = (5.0, 40.0)
RIDE_OUT = HEARTBEAT + COLLECTIVE + 30  # still running this long after a fault: it rode it out
_STEP = re.compile(r"\] step (\d+)/(\d+) ")
_RESUMED = re.compile(r"resumed from step (\d+)")
# The checkpoint an attempt's stop lines name for the restart (a cross-check of the listing).
_NAMED = re.compile(r"resumes from checkpoint (\d+)|checkpoint (\d+) is intact|"
                    r"stopped by preemption at step (\d+)")
_AT_STEP = re.compile(r" at step (\d+)")  # the stop lines: "stopped by preemption at step 21/200",
                                          # "lost process 1 of 2 (...) at step 37; ..."


class Pair:
  """Both processes of one attempt (``dwm-jax pretrain`` each), their stderr read as it comes."""

  def __init__(self, command: list[str], env: dict[str, str], port: int):
    self.procs = [subprocess.Popen(
        command + ["--coordinator_address", f"localhost:{port}", "--num_processes", "2",
                   "--process_id", str(i)], cwd=REPO, env=env, stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE, text=True) for i in range(2)]
    self.lines: list[list[str]] = [[], []]
    self.step = 0            # the last step process 0 logged
    self.resumed_from: int | None = None
    self.ended_at: list[float | None] = [None, None]
    self._readers = [threading.Thread(target=self._read, args=(i,), daemon=True) for i in (0, 1)]
    for r in self._readers:
      r.start()

  def _read(self, i: int) -> None:
    for line in self.procs[i].stderr:
      self.lines[i].append(line.rstrip("\n"))
      if i == 0:
        if m := _STEP.search(line):
          self.step = int(m.group(1))
        elif m := _RESUMED.search(line):
          self.resumed_from = int(m.group(1))
    self.procs[i].wait()
    self.ended_at[i] = time.monotonic()

  def running(self) -> bool:
    return any(p.poll() is None for p in self.procs)

  def wait(self, timeout: float, progress_past: int | None = None) -> bool:
    """Whether both exited within ``timeout`` seconds; with ``progress_past``, stops waiting
    (False) once process 0 logs a step 3 past it: the run went on."""
    deadline = time.monotonic() + timeout
    while self.running() and time.monotonic() < deadline:
      if progress_past is not None and self.step > progress_past + 3:
        return False
      time.sleep(0.05)
    if self.running():
      return False
    for r in self._readers:
      r.join(timeout=30)
    return True

  def last_line(self, i: int) -> str:
    return self.lines[i][-1] if self.lines[i] else ""

  def kill(self) -> None:
    for p in self.procs:
      if p.poll() is None:
        p.kill()
    self.wait(60)


class Disk:
  """The local arm's disk: a small tmpfs, and a ballast file that fills it."""

  def __init__(self, root: Path, size_mb: int):
    self.root = root
    root.mkdir(parents=True, exist_ok=True)
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_mb}m", "tmpfs", str(root)],
                          capture_output=True, text=True)
    self.mounted = proc.returncode == 0
    self.why_not = proc.stderr.strip()
    self.ballast = root / "ballast"

  def fill(self, leave_bytes: int) -> None:
    st = os.statvfs(self.root)
    size = max(st.f_bavail * st.f_frsize - leave_bytes, 0)
    fd = os.open(self.ballast, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    try:
      while size > 0:
        size -= os.write(fd, b"\0" * min(size, 1 << 20))
    except OSError:
      pass  # full already
    finally:
      os.close(fd)

  def free(self) -> None:
    self.ballast.unlink(missing_ok=True)

  def unmount(self) -> None:
    if self.mounted:
      subprocess.run(["umount", "-l", str(self.root)], check=False)


def command(workdir: str, steps: int) -> list[str]:
  return [sys.executable, "-m", "dwm_jax.main", "--config", str(TINY), "--workdir", workdir,
          f"--config.epochs={steps // 4}", "--config.checkpoint.every_steps=10",
          "--config.checkpoint.keep=3", "--config.checkpoint.async_save=False",
          "--heartbeat_timeout_seconds", str(HEARTBEAT),
          "--collective_timeout_seconds", str(COLLECTIVE)]


def reached(pair: Pair) -> int:
  """The step the attempt got to: process 0's last progress line, or a later step named by a
  stop line of either process (process 0's last second of log dies with a killed supervisor)."""
  named = [int(m) for i in (0, 1) for line in pair.lines[i][-3:] for m in _AT_STEP.findall(line)]
  return max([pair.step, *named])


def final_state(workdir: str) -> tuple[int, dict]:
  import orbax.checkpoint as ocp  # pylint: disable=import-outside-toplevel
  _forget_listings()
  manager = ckpt.make_manager(workdir, read_only=True)
  step = manager.latest_step()
  out = manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore()))
  manager.close()
  return step, jax.tree.map(np.asarray, out["state"]["train"])


def _forget_listings() -> None:
  """gcsfs keeps every folder listing of a long-lived process: this one lists the bucket before
  the trainers write it, and would not see their checkpoints."""
  try:
    import gcsfs  # pylint: disable=import-outside-toplevel
  except ImportError:
    return
  for fs in list(getattr(gcsfs.GCSFileSystem, "_cache", {}).values()):
    fs.invalidate_cache()


def same_tree(a, b) -> bool:
  la, lb = jax.tree.leaves(a), jax.tree.leaves(b)
  return (jax.tree.structure(a) == jax.tree.structure(b)
          and all(np.array_equal(x, y) for x, y in zip(la, lb)))


class Storage:
  """Where an arm's workdirs live, and the faults that hit it (``fill`` / ``stall``)."""

  def __init__(self, arm: str, root: Path, disk_mb: int):
    self.arm, self.root = arm, root
    self.disk = Disk(root / "disk", disk_mb) if arm == "local" else None
    self.server = self.proxy = None
    self.env: dict[str, str] = {}
    if arm == "bucket":
      self.server = gcs_server.FakeGcs(str(root / "gcs"))
      self.proxy = tcp_proxy.LatencyProxy("127.0.0.1", self.server.port)
      self.env = {paths.EMULATOR_ENV: self.proxy.url}
      os.environ[paths.EMULATOR_ENV] = self.proxy.url  # this process reads the bucket too
      paths.configure_emulator()
      self.base = self.server.make_bucket("soak")
    else:
      self.base = str(self.disk.root)

  def finished_steps(self, workdir: str) -> list[int]:
    """The committed checkpoints, read afresh: on the bucket from the server itself (not through
    the proxy, which may be paused, nor gcsfs, whose listings a long-lived process caches)."""
    if self.server is None:
      return ckpt.finished_steps(workdir)
    bucket, prefix = workdir.split("://", 1)[1].split("/", 1)
    names, token = [], ""
    while True:
      url = (f"{self.server.url}/storage/v1/b/{bucket}/o?prefix={prefix}/checkpoints/"
             f"&pageToken={token}")
      with urllib.request.urlopen(url, timeout=30) as r:
        page = json.load(r)
      names += [item["name"] for item in page.get("items", [])]
      token = page.get("nextPageToken", "")
      if not token:
        break
    marker = re.compile(rf"^{re.escape(prefix)}/checkpoints/(\d+)/commit_success\.txt$")
    return sorted(int(m.group(1)) for m in map(marker.match, names) if m)

  def kinds(self) -> list[str]:
    return [k for k in ARMS[self.arm] if k != "disk_full" or self.disk.mounted]

  def left_out(self) -> str | None:
    if self.disk is not None and not self.disk.mounted:
      return f"disk_full (no tmpfs: {self.disk.why_not})"
    return None

  def close(self) -> None:
    if self.proxy is not None:
      self.proxy.resume()
      self.proxy.stop()
      self.server.stop()
    if self.disk is not None:
      self.disk.free()
      self.disk.unmount()


def soak(arm: str, args) -> dict:
  rng = random.Random(f"{args.seed}-{arm}")
  work = Path(tempfile.mkdtemp(prefix=f"fault_soak_{arm}_"))
  storage = Storage(arm, work, args.disk_mb)
  env = {**os.environ, **storage.env, "XLA_FLAGS": "--xla_force_host_platform_device_count=1",
         "JAX_COMPILATION_CACHE_DIR": str(Path(tempfile.gettempdir()) / "fault_soak_jax_cache"),
         "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
         "PYTHONPATH": f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
  kinds = storage.kinds()
  faults, attempts, pairs = [], [], []
  try:
    # The uninterrupted run (its wall time includes one start, as the soak's first attempt does).
    t0 = time.monotonic()
    reference_dir = paths.join(storage.base, "reference")
    ref = Pair(command(reference_dir, args.steps), env, gcs_server.free_port())
    pairs.append(ref)
    assert ref.wait(3600) and [p.returncode for p in ref.procs] == [0, 0], ref.lines[0][-20:]
    reference_seconds = time.monotonic() - t0
    _, reference = final_state(reference_dir)
    print(f"{arm}: uninterrupted run {reference_seconds:.0f} s", flush=True)

    workdir = paths.join(storage.base, "run")
    rotation: list[str] = []
    ended_by: dict | None = None   # the fault that ended the previous attempt
    soak_start = time.monotonic()
    while True:
      finished = storage.finished_steps(workdir)
      attempt = {"number": len(attempts) + 1, "expected_resume": finished[-1] if finished else 0}
      attempts.append(attempt)
      pair = Pair(command(workdir, args.steps), env, gcs_server.free_port())
      pairs.append(pair)
      hit = None
      while len(faults) < args.faults:
        if not rotation:
          rotation = rng.sample(kinds, len(kinds))
        base = max(pair.step, attempt["expected_resume"])
        trigger = rng.randint(base + 1, max(base + 1, min(base + args.max_gap, args.steps - 2)))
        while pair.running() and pair.step < trigger:
          time.sleep(0.02)
        if not pair.running():
          break
        hit = inject(rotation.pop(), pair, rng, storage)
        hit["attempt"] = attempt["number"]
        faults.append(hit)
        print(f"{time.strftime('%H:%M:%S')} fault {len(faults)}: {hit['kind']} "
              f"({hit['target']}) at step {hit['step']}", flush=True)
        if pair.wait(RIDE_OUT, progress_past=hit["step"] if hit["kind"] == "stall" else None):
          hit["exit_seconds"] = round(max(pair.ended_at) - hit["t"], 1)
          break
        hit["outcome"] = "rode it out"
      if not pair.wait(3600):
        pair.kill()
        raise RuntimeError(f"attempt {attempt['number']} hung; process 0's last lines: "
                           f"{pair.lines[0][-5:]}")
      if storage.disk is not None:
        storage.disk.free()  # the operator makes room before the restart
      attempt.update(resumed_from=pair.resumed_from or 0, reached=reached(pair),
                     statuses=[p.returncode for p in pair.procs],
                     last_lines=[pair.last_line(0), pair.last_line(1)])
      if ended_by is not None:
        ended_by["resumed_from"] = attempt["resumed_from"]
        ended_by["steps_repeated"] = ended_by["reached"] - attempt["resumed_from"]
      ended_by = None
      if hit is not None and hit.get("outcome") != "rode it out":
        hit.update(outcome="ended the attempt", reached=attempt["reached"],
                   statuses=attempt["statuses"],
                   last_lines=attempt["last_lines"])
        ended_by = hit
      print(f"{time.strftime('%H:%M:%S')} attempt {attempt['number']}: resumed from {attempt['resumed_from']} (newest "
            f"finished checkpoint: {attempt['expected_resume']}), reached {attempt['reached']}, exit "
            f"statuses {attempt['statuses']}", flush=True)
      if attempt["statuses"] == [0, 0] and pair.step >= args.steps:
        break
      if len(attempts) > 3 * args.faults + 5:
        raise RuntimeError(f"the soak does not converge; last lines: {attempt['last_lines']}")
    soak_seconds = time.monotonic() - soak_start
    step, state = final_state(workdir)
    # What the restarts left: unfinished saves must be gone, and none taken for damage.
    _forget_listings()
    names = paths.listdir(ckpt.checkpoint_dir(workdir))
    leftovers = [n for n in names if not n.isdigit() or n not in
                 {str(s) for s in storage.finished_steps(workdir)}]
    leftovers += [f"damaged_checkpoints/{n}" for n in ckpt.damaged_checkpoints(workdir)]
    return {"arm": arm, "faults": faults, "attempts": attempts, "steps": args.steps,
            "seed": args.seed,
            "reference_seconds": round(reference_seconds, 1),
            "soak_seconds": round(soak_seconds, 1), "final_step": step,
            "equal_to_uninterrupted": same_tree(state, reference),
            "no_checkpoint_trained_over": all(a["resumed_from"] == a["expected_resume"]
                                              for a in attempts),
            "leftover_folders": leftovers,
            "kinds": kinds, "left_out": storage.left_out()}
  finally:
    for pair in pairs:
      pair.kill()
    storage.close()
    shutil.rmtree(work, ignore_errors=True)


def inject(kind: str, pair: Pair, rng: random.Random, storage: Storage) -> dict:
  """Hits ``pair`` with one fault; returns its record (``t``: when it hit)."""
  fault = {"kind": kind, "step": pair.step, "t": time.monotonic()}
  if kind in ("kill9", "sigterm"):
    victim = rng.randint(0, 1)
    fault["target"] = f"process {victim}"
    pair.procs[victim].send_signal(signal.SIGKILL if kind == "kill9" else signal.SIGTERM)
  elif kind == "stall":
    seconds = rng.uniform(*STALL_SECONDS)
    fault["target"] = f"bucket, {seconds:.0f} s"
    storage.proxy.pause()
    time.sleep(seconds)
    storage.proxy.resume()
  elif kind == "disk_full":
    fault["target"] = "the workdir's disk"
    storage.disk.fill(leave_bytes=100_000)  # a tiny checkpoint takes about 0.5 MiB
  return fault


def _recount(result: dict) -> None:
  """Steps reached and repeated from the records (for results.json written before ``reached``
  read the stop lines)."""
  attempts = result["attempts"]
  for a in attempts:
    named = [int(m) for line in a.get("last_lines", []) for m in _AT_STEP.findall(line)]
    a["reached"] = max([a.get("reached", 0), *named])
  for before, a in zip(attempts, attempts[1:]):
    named = [int(n) for line in before.get("last_lines", []) for m in _NAMED.findall(line)
             for n in m if n]
    a["named_resume"] = max(named) if named else None
  # What the stop lines name is what the processes saw (the harness listing of a bucket through
  # gcsfs was stale in the first bucket run: it caches listings in a long-lived process).
  result["no_checkpoint_trained_over"] = all(
      a["resumed_from"] == (a["named_resume"] if a.get("named_resume") is not None
                            else a["expected_resume"]) for a in attempts)
  for x in result["faults"]:
    if x.get("outcome") != "ended the attempt":
      continue
    n = x["attempt"]
    x["reached"] = attempts[n - 1]["reached"]
    if n < len(attempts):
      x["resumed_from"] = attempts[n]["resumed_from"]
      x["steps_repeated"] = x["reached"] - x["resumed_from"]


def report(results: list[dict], out: Path) -> str:
  out.mkdir(parents=True, exist_ok=True)
  for r in results:
    _recount(r)
  fields = ["arm", "n", "kind", "target", "step", "outcome", "statuses", "exit_seconds",
            "reached", "resumed_from", "steps_repeated", "last_line_0", "last_line_1"]
  with open(out / "faults.csv", "w", newline="") as f:
    w = csv.DictWriter(f, fieldnames=fields)
    w.writeheader()
    for r in results:
      for n, x in enumerate(r["faults"], 1):
        lines = x.get("last_lines") or ["", ""]
        w.writerow({**{k: x.get(k, "") for k in fields}, "arm": r["arm"], "n": n,
                    "last_line_0": lines[0], "last_line_1": lines[1]})
  for r in results:
    for x in r["faults"]:
      x.pop("t", None)
  (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
  faults = sum(len(r["faults"]) for r in results)
  restarts = sum(len(r["attempts"]) - 1 for r in results)
  text = [f"# Fault soak: {faults} faults, {restarts} restarts (seed {results[0]['seed']})", "",
          "| arm | steps | faults | restarts | final parameters = uninterrupted run's | no "
          "checkpoint trained over | unfinished saves left | wall time: uninterrupted, soak, "
          "lost per fault |", "|---|---|---|---|---|---|---|---|"]
  for r in results:
    lost = r["soak_seconds"] - r["reference_seconds"]
    text.append(f"| {r['arm']} | {r['steps']} | {len(r['faults'])} | {len(r['attempts']) - 1} | "
                f"{r['equal_to_uninterrupted']} | {r['no_checkpoint_trained_over']} | "
                f"{', '.join(r['leftover_folders']) or 'none'} | "
                f"{r['reference_seconds']:.0f} s, {r['soak_seconds']:.0f} s, "
                f"{lost / max(len(r['faults']), 1):.0f} s |")
  text += ["", "| arm | kind | faults | ended the attempt | exit statuses (process 0, 1) | "
           "seconds to exit (mean, max) | steps repeated (mean, max) |",
           "|---|---|---|---|---|---|---|"]
  for r in results:
    for kind in r["kinds"]:
      xs = [x for x in r["faults"] if x["kind"] == kind]
      ended = [x for x in xs if x.get("outcome") == "ended the attempt"]
      secs = [x["exit_seconds"] for x in ended if "exit_seconds" in x]
      reps = [x["steps_repeated"] for x in ended if "steps_repeated" in x]
      statuses = sorted({tuple(x["statuses"]) for x in ended})
      text.append(f"| {r['arm']} | {kind} | {len(xs)} | {len(ended)} | "
                  f"{', '.join(str(list(st)) for st in statuses) or '-'} | {_mean_max(secs)} | "
                  f"{_mean_max(reps)} |")
  text += [""] + [f"{r['arm']}: left out {r['left_out']}" for r in results if r["left_out"]]
  (out / "results.md").write_text("\n".join(text).rstrip() + "\n")
  return "\n".join(text)


def _mean_max(xs: list[float]) -> str:
  return f"{sum(xs) / len(xs):.1f}, {max(xs):.1f}" if xs else "-"


def main(argv: list[str] | None = None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--arms", default="local,bucket", help="local, bucket or both")
  parser.add_argument("--faults", type=int, default=10, help="per arm")
  parser.add_argument("--steps", type=int, default=200, help="the run's length (4 per epoch)")
  parser.add_argument("--max-gap", type=int, default=12,
                      help="a fault hits at most this many steps after the last one")
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--disk-mb", type=int, default=24, help="the local arm's tmpfs")
  parser.add_argument("--out", default=str(Path(__file__).parent / "results"))
  parser.add_argument("--report-only", action="store_true",
                      help="rewrite results.md and faults.csv from --out's results.json")
  args = parser.parse_args(argv)
  signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))  # clean up (processes, tmpfs) on SIGTERM
  if args.report_only:
    results = json.loads((Path(args.out) / "results.json").read_text())
  else:
    results = [soak(arm, args) for arm in args.arms.split(",")]
  print(report(results, Path(args.out)))
  ok = all(r["equal_to_uninterrupted"] and r["no_checkpoint_trained_over"] for r in results)
  return 0 if ok else 1


if __name__ == "__main__":
  sys.exit(main())
