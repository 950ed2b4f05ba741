"""One process of a two-process CPU run, for tests/test_distributed.py.

usage: python distributed_worker.py WORKDIR PROCESS_ID PORT SIGTERM_AFTER_STEP (-1 = never)
Process 1 sends itself SIGTERM after the given step; both must stop at one step and save.
"""
import json
import os
import signal
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "configs"))


def main() -> None:
  workdir, pid, port, term_at = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4])
  from dwm_jax import distributed
  distributed.initialize(distributed.resolve(f"localhost:{port}", 2, pid))
  import tiny  # pylint: disable=import-outside-toplevel
  from dwm_jax.train import loop  # pylint: disable=import-outside-toplevel

  def hook(done: int) -> None:
    if done == term_at and pid == 1:
      os.kill(os.getpid(), signal.SIGTERM)
      # The notice reaches the other process through JAX's coordination service asynchronously;
      # give it time so the stop step doesn't depend on machine load (the run is only 8 steps).
      time.sleep(3)

  summary = loop.train(tiny.get_config(), workdir, on_step=hook)
  print("SUMMARY " + json.dumps({k: summary[k] for k in ("step", "preempted", "resumed_from")}))


if __name__ == "__main__":
  main()
