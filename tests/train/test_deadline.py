"""The bound on waits for a bucket: a guarded wait that outlasts it ends the run with one line."""
import threading
import time

from dwm_jax.train import deadline as deadline_lib


def _deadline(seconds):
  fired = []
  done = threading.Event()

  def on_expire(message):
    fired.append((time.monotonic(), message))
    done.set()

  d = deadline_lib.Deadline(seconds, state=lambda: "checkpoint 4 is the last good one",
                            on_expire=on_expire, poll_seconds=0.05)
  return d, fired, done


def test_a_wait_on_a_bucket_that_outlasts_the_bound_fires_once_with_one_line():
  d, fired, done = _deadline(0.3)
  t0 = time.monotonic()
  with d.guard("saving checkpoint 6 to", "gs://bkt/run/checkpoints"):
    assert done.wait(5)
  assert len(fired) == 1
  at, message = fired[0]
  assert 0.3 <= at - t0 < 1.5
  assert "\n" not in message
  assert message.startswith("saving checkpoint 6 to gs://bkt/run/checkpoints did not finish: "
                            "the bucket has not answered for ")
  assert ("(storage.timeout_seconds=0.3); checkpoint 4 is the last good one. Rerun the same "
          "command once the bucket answers (it resumes)") in message
  d.close()


def test_waits_within_the_bound_and_local_paths_never_fire():
  d, fired, _ = _deadline(0.3)
  for _ in range(5):
    with d.guard("reading the next batch from", "gs://bkt/data"):
      time.sleep(0.1)
  with d.guard("saving checkpoint 2 to", "/local/disk/run"):
    time.sleep(0.6)  # local storage reports its own errors; no bound here
  time.sleep(0.3)
  assert fired == []
  d.close()
