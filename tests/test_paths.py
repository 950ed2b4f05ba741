"""The path layer: the same operations on local paths and on a real GCS-protocol server."""
import os
import uuid

import pytest

from dwm_jax import paths


def test_names_never_mangle_urls(tmp_path):
  assert paths.is_remote("gs://b/x") and paths.is_remote("s3://b") and not paths.is_remote("/x")
  assert paths.absolute("gs://b/run/") == "gs://b/run"  # os.path.abspath would give $PWD/gs:/b
  assert paths.absolute("run") == os.path.join(os.getcwd(), "run")
  assert paths.join("gs://b/run", "checkpoints", "4") == "gs://b/run/checkpoints/4"
  assert paths.parent("gs://b/run/files.csv") == "gs://b/run" and paths.name("gs://b/a/") == "a"
  assert paths.bucket_of("gs://b/run/x") == "gs://b" and paths.bucket_of(str(tmp_path)) == ""


def test_emulator_environment_is_derived_from_the_host_alone():
  env = paths.emulator_environment({"STORAGE_EMULATOR_HOST": "127.0.0.1:4443"})
  assert env == {"TENSORSTORE_GCS_HTTP_URL": "http://127.0.0.1:4443", "EPATH_USE_TF": "false",
                 "GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT": "false", "NO_GCE_CHECK": "true",
                 "GOOGLE_AUTH_TOKEN_FOR_TESTING": "emulator"}
  given = {"STORAGE_EMULATOR_HOST": "http://h:1", "TENSORSTORE_GCS_HTTP_URL": "http://other:2"}
  assert "TENSORSTORE_GCS_HTTP_URL" not in paths.emulator_environment(given)  # never overridden
  assert paths.emulator_environment({}) == {}
  environ = {"STORAGE_EMULATOR_HOST": "http://h:1"}
  assert paths.configure_emulator(environ)["EPATH_USE_TF"] == "false"
  assert environ["TENSORSTORE_GCS_HTTP_URL"] == "http://h:1"


def test_local_writes_are_atomic_and_make_parents(tmp_path):
  target = tmp_path / "a" / "b" / "c.json"
  paths.write_text(target, "one")
  paths.write_text(target, "two")
  assert paths.read_text(target) == "two" and os.listdir(target.parent) == ["c.json"]
  with pytest.raises(IsADirectoryError):  # a failed write leaves no temporary file behind
    paths.write_bytes(tmp_path / "a", b"x")
  assert sorted(os.listdir(tmp_path)) == ["a"] and os.listdir(tmp_path / "a") == ["b"]
  paths.move_dir(tmp_path / "a", tmp_path / "moved" / "a-1")
  assert paths.walk_files(tmp_path) == ["moved/a-1/b/c.json"]


@pytest.fixture
def bucket(gcs):
  return gcs.make_bucket(f"paths-{uuid.uuid4().hex[:8]}")


def test_bucket_reads_writes_and_listings(bucket):
  run = f"{bucket}/run"
  paths.write_text(f"{run}/a/b.txt", "hi\r\n")  # line endings kept (CSV readers rely on it)
  paths.write_bytes(f"{run}/c.bin", bytes(range(256)))
  assert paths.read_text(f"{run}/a/b.txt") == "hi\r\n"
  with paths.open(f"{run}/c.bin") as f:
    f.seek(250)
    assert f.read() == bytes(range(250, 256))
  assert paths.exists(run) and paths.isdir(run) and paths.isdir(f"{run}/a")
  assert paths.isfile(f"{run}/c.bin") and not paths.isfile(f"{run}/a")
  assert not paths.exists(f"{run}/nothing")
  assert paths.listdir(run) == ["a", "c.bin"]
  assert paths.walk_files(run) == ["a/b.txt", "c.bin"]
  assert paths.glob(f"{run}/*.bin") == [f"{run}/c.bin"] and paths.glob(f"{bucket}/no/*") == []
  paths.copy_file(f"{run}/c.bin", f"{run}/copy.bin")
  assert paths.read_bytes(f"{run}/copy.bin") == bytes(range(256))
  paths.remove(f"{run}/copy.bin")
  assert not paths.exists(f"{run}/copy.bin")


def test_move_dir_on_a_bucket_copies_then_deletes(bucket):
  src, dst = f"{bucket}/ckpt/8", f"{bucket}/damaged/8-1"
  for rel in ("state/d/x", "state/manifest.ocdbt", "commit_success.txt"):
    paths.write_text(f"{src}/{rel}", rel)
  paths.move_dir(src, dst)  # the target folder does not exist: buckets have no folders
  assert not paths.exists(src)
  assert paths.walk_files(dst) == ["commit_success.txt", "state/d/x", "state/manifest.ocdbt"]
  assert paths.read_text(f"{dst}/state/d/x") == "state/d/x"
  paths.write_text(f"{src}/again", "x")
  with pytest.raises(FileExistsError):
    paths.move_dir(src, dst)


def test_bucket_checks(gcs, bucket, monkeypatch):
  paths.check_writable(f"{bucket}/run")
  assert paths.walk_files(bucket) == []  # the probe object is gone again
  with pytest.raises(paths.StorageError, match=r"^bucket gs://no-bucket-\w+ does not exist"):
    paths.check_writable(f"gs://no-bucket-{uuid.uuid4().hex[:6]}/run")
  with pytest.raises(paths.StorageError, match="does not exist"):
    paths.exists(f"gs://no-bucket-{uuid.uuid4().hex[:6]}/x")  # every operation checks first
  from dwm_jax.testing.gcs_server import free_port
  dead = f"http://127.0.0.1:{free_port()}"
  monkeypatch.setenv("STORAGE_EMULATOR_HOST", dead)
  monkeypatch.setenv("TENSORSTORE_GCS_HTTP_URL", dead)
  with pytest.raises(paths.StorageError, match=f"cannot reach the storage endpoint {dead} "):
    paths.check_bucket(f"gs://not-checked-yet-{uuid.uuid4().hex[:6]}")
  paths.check_bucket(bucket)  # a bucket that passed once is not asked again


def test_put_file_moves_a_finished_file_into_place(tmp_path, bucket):
  for dst in (str(tmp_path / "out" / "a" / "f.npy"), f"{bucket}/out/a/f.npy"):
    for content in (b"first", bytes(range(256)) * 4096):  # the second replaces the first
      local = tmp_path / "staged.npy"
      local.write_bytes(content)
      paths.put_file(local, dst)
      assert not local.exists() and paths.read_bytes(dst) == content
  assert paths.walk_files(f"{bucket}/out") == ["a/f.npy"]  # no temporary object left
  assert os.listdir(tmp_path / "out" / "a") == ["f.npy"]


_STALLED_READ = """
import logging, sys, time
from dwm_jax import paths
logging.basicConfig(level=logging.WARNING)
logging.getLogger("gcsfs").setLevel(logging.DEBUG)  # it logs each retry at DEBUG
paths.set_request_timeout(1.0)
path = sys.argv[1]
paths.write_text(path, "answer")
print("ready", flush=True)
sys.stdin.readline()  # the test has stopped the bucket
t = time.monotonic()
text = paths.read_text(path)
print("read", text, round(time.monotonic() - t, 1), flush=True)
"""


@pytest.mark.slow
def test_a_stalled_request_times_out_and_is_retried_until_the_bucket_answers(gcs, bucket):
  """Through a proxy that holds all traffic for 4 s: the read gives up after the 1 s request
  timeout, retries with backoff and succeeds once the bucket answers again."""
  import subprocess  # pylint: disable=import-outside-toplevel
  import sys  # pylint: disable=import-outside-toplevel
  import time  # pylint: disable=import-outside-toplevel
  from dwm_jax.testing.tcp_proxy import LatencyProxy  # pylint: disable=import-outside-toplevel
  with LatencyProxy("127.0.0.1", gcs.port) as proxy:
    env = {k: v for k, v in os.environ.items()
           if k not in paths.emulator_environment({paths.EMULATOR_ENV: gcs.url})}
    env[paths.EMULATOR_ENV] = proxy.url
    proc = subprocess.Popen([sys.executable, "-c", _STALLED_READ, f"{bucket}/stall.txt"],
                            env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
      assert proc.stdout.readline().strip() == "ready", proc.stderr.read()[-2000:]
      proxy.pause()
      proc.stdin.write("go\n")
      proc.stdin.flush()
      time.sleep(4.0)
      proxy.resume()
      out, err = proc.communicate(timeout=60)
    finally:
      proc.kill()
  _, text, seconds = out.split()
  assert proc.returncode == 0 and text == "answer", err[-2000:]
  retries = [line for line in err.splitlines() if "retrying after exception" in line]
  assert retries and all("Timeout" in line for line in retries), err[-2000:]
  assert 4.0 <= float(seconds) < 40


def test_kvstore_spec_names_folders_for_tensorstore(tmp_path, bucket):
  import tensorstore as ts  # pylint: disable=import-outside-toplevel
  local = paths.kvstore_spec(tmp_path / "d")
  assert local == {"driver": "file", "path": str(tmp_path / "d") + "/"}
  assert paths.kvstore_spec(f"{bucket}/a/b/") == {"driver": "gcs", "bucket": bucket[5:],
                                                  "path": "a/b/"}
  assert paths.kvstore_spec(bucket) == {"driver": "gcs", "bucket": bucket[5:], "path": ""}
  paths.write_text(f"{bucket}/a/b/x.txt", "hello")  # keys are relative to the folder
  store = ts.KvStore.open(paths.kvstore_spec(f"{bucket}/a")).result()
  assert store.read("b/x.txt").result().value == b"hello"
  with pytest.raises(ValueError, match="local folders and gs:// buckets only"):
    paths.kvstore_spec("s3://bucket/x")
