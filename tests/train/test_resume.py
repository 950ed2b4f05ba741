"""Interrupted runs end exactly where uninterrupted ones do: SIGTERM, a hard kill, a torn save."""
import glob
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dwm_jax.train import loop
from dwm_jax.train import step as step_lib

from .conftest import REPO, TINY, assert_same_tree, saved_state, tiny_config

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("compile_cache")]


def _steps(workdir):
  return sorted(int(os.path.basename(p)) for p in glob.glob(os.path.join(workdir, "checkpoints",
                                                                         "*"))
                if os.path.basename(p).isdigit())


def _signal_at(step, sig):
  def hook(done):
    if done == step:
      os.kill(os.getpid(), sig)
  return hook


def test_sigterm_saves_then_resume_matches_uninterrupted(reference_run, tmp_path):
  _, reference = reference_run
  workdir = str(tmp_path)
  first = loop.train(tiny_config(), workdir, on_step=_signal_at(3, signal.SIGTERM))
  # The signal lands after step 3; the loop finishes step 4, saves it and returns.
  assert first["preempted"] and first["step"] == 4
  assert _steps(workdir) == [2, 4]
  second = loop.train(tiny_config(), workdir)
  assert second["resumed_from"] == 4 and second["step"] == 8
  assert_same_tree(saved_state(workdir)[1], reference)


def test_sigint_also_saves_and_stops(tmp_path):
  summary = loop.train(tiny_config(), str(tmp_path), on_step=_signal_at(1, signal.SIGINT))
  assert summary["preempted"] and summary["step"] == 2
  assert _steps(str(tmp_path)) == [2]


def test_hard_kill_then_resume_matches_uninterrupted(reference_run, tmp_path):
  """SIGKILL (no handler can run) right after step 5, while step 4's async save may be in flight."""
  _, reference = reference_run
  workdir = str(tmp_path)
  script = textwrap.dedent(f"""
      import os, signal, sys
      sys.path.insert(0, {os.path.dirname(TINY)!r})
      import tiny
      from dwm_jax.train import loop
      def hook(done):
        if done == 5:
          os.kill(os.getpid(), signal.SIGKILL)
      loop.train(tiny.get_config(), {workdir!r}, on_step=hook)
      """)
  proc = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True,
                        timeout=300)
  assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
  assert max(_steps(workdir)) in (2, 4)
  summary = loop.train(tiny_config(), workdir)
  assert summary["resumed_from"] in (2, 4) and summary["step"] == 8
  assert_same_tree(saved_state(workdir)[1], reference)


def test_torn_save_is_ignored_on_restart(reference_run, tmp_path):
  """A save killed mid-write leaves orbax's temporary folder: the restart must not trip on it."""
  ref_dir, reference = reference_run
  workdir = str(tmp_path / "run")
  shutil.copytree(ref_dir, workdir)
  ckpts = os.path.join(workdir, "checkpoints")
  for step in (6, 8):
    shutil.rmtree(os.path.join(ckpts, str(step)))
  # What a kill during the save of step 6 leaves behind: a temp folder with part of the items,
  # one of them truncated.
  torn = os.path.join(ckpts, "6.orbax-checkpoint-tmp-1700000000000000")
  shutil.copytree(os.path.join(ckpts, "4"), torn)
  os.remove(os.path.join(torn, "commit_success.txt"))
  shutil.rmtree(os.path.join(torn, "config"))
  for path in glob.glob(os.path.join(torn, "state", "**", "*"), recursive=True):
    if os.path.isfile(path):
      with open(path, "r+b") as f:
        f.truncate(max(0, os.path.getsize(path) // 2))
  summary = loop.train(tiny_config(), workdir)
  assert summary["resumed_from"] == 4 and summary["step"] == 8
  assert not os.path.exists(torn)
  assert_same_tree(saved_state(workdir)[1], reference)


def test_a_large_torn_save_is_removed_once_before_the_first_save(reference_run, tmp_path):
  """A kill during the first save leaves a temporary folder with many files (here 4000) and no
  earlier checkpoint: the restart removes it in one thread and saves (two managers each removing
  it raced: FileNotFoundError at the first save, which then could not be written)."""
  _, reference = reference_run
  workdir = str(tmp_path / "run")
  torn = os.path.join(workdir, "checkpoints", "2.orbax-checkpoint-tmp-1700000000000000")
  for i in range(40):
    folder = os.path.join(torn, "data.orbax-checkpoint-tmp", f"d{i}")
    os.makedirs(folder)
    for j in range(100):
      with open(os.path.join(folder, f"f{j}"), "wb") as f:
        f.write(b"x")
  summary = loop.train(tiny_config(), workdir)
  assert summary["resumed_from"] is None and summary["step"] == 8
  assert not os.path.exists(torn)
  assert_same_tree(saved_state(workdir)[1], reference)


def test_nan_loss_stops_with_message_and_keeps_last_good_checkpoint(tmp_path, monkeypatch):
  real = step_lib.train_step

  def nan_from_step_5(state, batch, key, **kwargs):
    """The real step fed NaN log-mels from the 5th step on (its loss diverges there)."""
    batch = {**batch, "logmel": jnp.where(state.step >= 4, jnp.nan, batch["logmel"])}
    return real(state, batch, key, **kwargs)

  monkeypatch.setattr(step_lib, "train_step", nan_from_step_5)
  workdir = str(tmp_path)
  with pytest.raises(loop.NonFiniteLossError, match=r"NaN/Inf at step 5.*step 4\)"):
    loop.train(tiny_config(), workdir)
  assert _steps(workdir) == [2, 4]
  step, state = saved_state(workdir)
  assert step == 4 and int(state["train"]["step"]) == 4
  floats = [x for x in jax.tree.leaves(state) if x.dtype.kind == "f"]
  assert floats and all(np.isfinite(x).all() for x in floats)


def test_cli_sigterm_exits_zero_after_saving(tmp_path):
  """The real command: SIGTERM mid-run -> a checkpoint at the step it stopped, exit status 0."""
  workdir = str(tmp_path)
  cmd = [sys.executable, "-m", "dwm_jax.main", "--config", TINY, "--workdir", workdir,
         "--config.total_steps=100000", "--config.checkpoint.every_steps=1000"]
  proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True)
  metrics = os.path.join(workdir, "metrics.jsonl")
  deadline = time.monotonic() + 240
  while time.monotonic() < deadline and proc.poll() is None:
    if os.path.exists(metrics) and sum(1 for _ in open(metrics)) >= 3:
      break
    time.sleep(0.1)
  assert proc.poll() is None, proc.stdout.read()[-3000:]
  proc.send_signal(signal.SIGTERM)
  out, _ = proc.communicate(timeout=120)
  assert proc.returncode == 0, out[-3000:]
  (step,) = _steps(workdir)
  assert 3 <= step < 1000
  with open(os.path.join(workdir, "summary.json")) as f:
    summary = json.load(f)
  assert summary["preempted"] and summary["step"] == step
  assert "received SIGTERM" in out
