"""Profiles on request: the trace of the chosen steps, in the files XProf / TensorBoard's profile
plugin (XSpace protobuf) and Perfetto (Chrome trace JSON) read, and a profiled run trains the
same parameters as an unprofiled one."""
import glob
import gzip
import json
import logging
import os

import jax
import ml_collections
import pytest

from dwm_jax.train import loop
from dwm_jax.train import profile as profile_lib

from .conftest import assert_same_tree, saved_state, tiny_config


@pytest.mark.slow
@pytest.mark.usefixtures("compile_cache")
def test_trace_of_two_steps_and_the_same_parameters(reference_run, tmp_path):
  config = tiny_config()
  config.profile.start_step, config.profile.num_steps = 3, 2  # steps 4 and 5
  workdir = str(tmp_path)
  loop.train(config, workdir)
  assert_same_tree(saved_state(workdir)[1], reference_run[1])

  (run,) = glob.glob(os.path.join(workdir, "profile", "plugins", "profile", "*"))
  names = sorted(os.listdir(run))
  (xplane,) = [n for n in names if n.endswith(".xplane.pb")]
  assert "perfetto_trace.json.gz" in names
  assert sorted(profile_lib.trace_files(workdir)) == sorted(
      os.path.relpath(os.path.join(run, n), os.path.join(workdir, "profile")) for n in names)
  # The XSpace protobuf XProf reads: the two steps' markers, and the compiled step ran twice.
  host = jax.profiler.ProfileData.from_file(os.path.join(run, xplane)).find_plane_with_name(
      "/host:CPU")
  events = [e for line in host.lines for e in line.events]
  assert sorted(dict(e.stats)["step_num"] for e in events if e.name == "train") == [4, 5]
  runs = [e for e in events if e.name.startswith("CommonPjRtLoadedExecutable::Execute (jit_")
          and "traced_step" in e.name]
  assert len(runs) == 2
  # The Chrome trace-event JSON Perfetto opens.
  trace = json.load(gzip.open(os.path.join(run, "perfetto_trace.json.gz")))
  marks = [e for e in trace["traceEvents"] if e.get("name") == "train"]
  assert sorted(int(e["args"]["step_num"]) for e in marks) == [4, 5]
  assert all(e["ph"] == "X" and e["dur"] > 0 for e in marks)


def test_no_trace_when_a_launch_starts_past_the_window(tmp_path, caplog):
  cfg = ml_collections.ConfigDict({"start_step": 3, "num_steps": 2, "processes": (0,)})
  with caplog.at_level(logging.WARNING):
    late = profile_lib.Profiler(cfg, str(tmp_path), first_step=4, total_steps=8)
  assert not late.active and "profile: not tracing, this run starts at step 4" in caplog.text
  on_time = profile_lib.Profiler(cfg, str(tmp_path), first_step=2, total_steps=8)
  assert on_time.active and (on_time.start, on_time.stop) == (3, 5)
  other = ml_collections.ConfigDict({**cfg, "processes": (1,)})
  assert not profile_lib.Profiler(other, str(tmp_path), first_step=0, total_steps=8).active
  off = ml_collections.ConfigDict({**cfg, "num_steps": 0})
  assert not profile_lib.Profiler(off, str(tmp_path), first_step=0, total_steps=8).active
