"""A bucket on 127.0.0.1 for the input-pipeline runs: fake-gcs-server behind a latency proxy.

The proxy (``dwm_jax.testing.tcp_proxy.LatencyProxy``) runs in its own process, so the CPU time
measured in the loader's process is the loader's alone; its counters (bytes and requests) and
its latency are read and set through a pipe. Every client of this process and its children
(grain workers, tensorstore, gcsfs) talks to the bucket through the proxy.
"""
from __future__ import annotations

import multiprocessing
import os
import shutil
from pathlib import Path

from dwm_jax import paths
from dwm_jax.testing.gcs_server import FakeGcs

_DERIVED = ("TENSORSTORE_GCS_HTTP_URL", "EPATH_USE_TF", "GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT",
            "NO_GCE_CHECK", "GOOGLE_AUTH_TOKEN_FOR_TESTING")


def _proxy_main(conn, target_port: int) -> None:
  from dwm_jax.testing.tcp_proxy import LatencyProxy  # pylint: disable=import-outside-toplevel
  proxy = LatencyProxy("127.0.0.1", target_port)
  conn.send(proxy.port)
  while True:
    command, arg = conn.recv()
    if command == "latency":
      proxy.set_latency(arg)
    elif command == "reset":
      proxy.reset_counters()
    elif command == "stop":
      proxy.stop()
      conn.send(None)
      return
    conn.send({"bytes_down": proxy.bytes_down, "bytes_up": proxy.bytes_up,
               "requests": proxy.requests, "connections": proxy.connections})


class Bucket:
  """``gs://NAME`` on a fake-gcs-server under ``root``, reached through a latency proxy.

  It points this process's storage clients at the proxy for the rest of the process (tensorstore
  reads the address once): one bucket per benchmark process.
  """

  def __init__(self, root: Path, name: str = "audio-data"):
    shutil.rmtree(root, ignore_errors=True)  # a new, empty bucket
    self.server = FakeGcs(str(root))
    try:
      self._conn, child = multiprocessing.get_context("spawn").Pipe()
      self._proc = multiprocessing.get_context("spawn").Process(
          target=_proxy_main, args=(child, self.server.port), daemon=True)
      self._proc.start()
      port = self._conn.recv()
      self.pids = {self.server._proc.pid, self._proc.pid}  # pylint: disable=protected-access
      for var in _DERIVED:
        os.environ.pop(var, None)
      os.environ[paths.EMULATOR_ENV] = f"http://127.0.0.1:{port}"
      paths.configure_emulator()
      self.url = self.server.make_bucket(name)
    except BaseException:
      self.server.stop()  # no server left behind
      raise

  def _call(self, command: str, arg=None) -> dict:
    self.check()
    self._conn.send((command, arg))
    return self._conn.recv()

  def check(self) -> None:
    """Raises if the server or the proxy has exited (a loader would wait on its retries)."""
    # pylint: disable=protected-access
    if self.server._proc.poll() is not None or not self._proc.is_alive():
      raise RuntimeError(f"the test bucket's server or proxy exited; see {self.server._log.name}")

  def cpu_seconds(self) -> float:
    """CPU time the server and the proxy have used so far."""
    import psutil  # pylint: disable=import-outside-toplevel
    total = 0.0
    for pid in self.pids:
      t = psutil.Process(pid).cpu_times()
      total += t.user + t.system
    return total

  def set_latency(self, seconds: float) -> None:
    self._call("latency", seconds)

  def reset(self) -> None:
    self._call("reset")

  def counters(self) -> dict:
    return self._call("counters")

  def upload(self, local: Path, prefix: str) -> str:
    """Copies the folder ``local`` to ``gs://NAME/prefix`` (all objects in flight at once)."""
    import tensorstore as ts  # pylint: disable=import-outside-toplevel
    dest = f"{self.url}/{prefix}"
    store = ts.KvStore.open(paths.kvstore_spec(dest)).result()
    files = paths.walk_files(str(local))
    for start in range(0, len(files), 256):
      batch = files[start:start + 256]
      for future in [store.write(rel, (local / rel).read_bytes()) for rel in batch]:
        future.result()
    return dest

  def stop(self) -> None:
    self._call("stop")
    self._proc.join(timeout=10)
    self.server.stop()
