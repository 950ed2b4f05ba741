"""The latency / stall proxy in front of a plain local TCP echo-like HTTP server."""
import http.server
import threading
import time
import urllib.request

import pytest

from dwm_jax.testing.tcp_proxy import LatencyProxy


class _Handler(http.server.BaseHTTPRequestHandler):
  protocol_version = "HTTP/1.1"

  def do_GET(self):  # noqa: N802
    body = b"x" * 1000
    self.send_response(200)
    self.send_header("Content-Length", str(len(body)))
    self.end_headers()
    self.wfile.write(body)

  def log_message(self, *args):
    del args


@pytest.fixture(scope="module")
def server():
  srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
  threading.Thread(target=srv.serve_forever, daemon=True).start()
  yield srv
  srv.shutdown()


def _get(url: str) -> bytes:
  with urllib.request.urlopen(url, timeout=10) as r:
    return r.read()


def test_latency_is_added_per_request_and_overlaps(server):
  latency = 0.3
  with LatencyProxy("127.0.0.1", server.server_port, latency_s=latency) as proxy:
    t = time.perf_counter()
    assert _get(proxy.url + "/a") == b"x" * 1000
    one = time.perf_counter() - t
    assert one >= 2 * latency  # the connection's handshake and the request each wait
    threads = [threading.Thread(target=_get, args=(proxy.url + f"/{i}",)) for i in range(16)]
    t = time.perf_counter()
    for th in threads:
      th.start()
    for th in threads:
      th.join()
    # In flight together (about 2 * latency), not one after another (16 * 2 * latency); the
    # margin is for a loaded machine starting 16 threads.
    assert time.perf_counter() - t < 16 * 2 * latency / 3
    assert proxy.requests == 17 and proxy.connections == 17
    assert proxy.bytes_down >= 17 * 1000


def test_pause_holds_traffic_until_resume(server):
  with LatencyProxy("127.0.0.1", server.server_port) as proxy:
    proxy.pause()
    got = []
    th = threading.Thread(target=lambda: got.append(_get(proxy.url + "/p")))
    th.start()
    time.sleep(0.5)
    assert not got
    proxy.resume()
    th.join(timeout=10)
    assert got == [b"x" * 1000]
