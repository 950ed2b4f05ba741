"""A TCP proxy on 127.0.0.1 that adds a bucket's latency, or stalls, in front of a local server.

Local test servers (fake-gcs-server) answer in well under a millisecond, so a reader that waits
for every request in turn looks fast against them and is starved by a real bucket, whose first
byte comes tens of milliseconds after the request. The proxy makes that visible on one machine:

- ``latency_s``: every chunk the client sends reaches the server that much later (a request
  waits once, however large its answer), and a new connection opens that much later (the
  handshake). Chunks keep their order and are delayed independently, so requests in flight on
  many connections overlap as they would against a bucket.
- :meth:`LatencyProxy.pause` holds all traffic both ways, connections open, until
  :meth:`LatencyProxy.resume`: a bucket that stops answering, then recovers.

Counters (``bytes_up``, ``bytes_down``, ``connections``, ``requests``: HTTP/1.x request lines
seen going up) let benchmarks report bytes and requests per clip.

  python -m dwm_jax.testing.tcp_proxy --target 127.0.0.1:4443 --latency-ms 30
  # prints "listening on 127.0.0.1:PORT"; SIGUSR1 pauses, SIGUSR2 resumes, SIGTERM stops
"""
from __future__ import annotations

import argparse
import asyncio
import re
import signal
import socket
import threading
import time

_REQUEST_LINE = re.compile(rb"(?:^|\r\n)[A-Z]+ \S+ HTTP/1\.[01]\r\n")


class LatencyProxy:
  """Forwards ``127.0.0.1:self.port`` to ``target_host:target_port`` in a background thread."""

  def __init__(self, target_host: str, target_port: int, *, latency_s: float = 0.0,
               port: int = 0):
    self.target = (target_host, int(target_port))
    self.latency_s = float(latency_s)
    self.bytes_up = self.bytes_down = self.connections = self.requests = 0
    self._loop = asyncio.new_event_loop()
    self._running = asyncio.Event()
    self._running.set()
    self._tasks: set[asyncio.Task] = set()
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", port))
    self.port = sock.getsockname()[1]
    self.url = f"http://127.0.0.1:{self.port}"
    started = threading.Event()
    self._thread = threading.Thread(target=self._serve, args=(sock, started), daemon=True,
                                    name="latency-proxy")
    self._thread.start()
    started.wait()

  # Control, from any thread.
  def pause(self) -> None:
    """Stop forwarding (both ways); connections stay open and what arrives is held."""
    self._loop.call_soon_threadsafe(self._running.clear)

  def resume(self) -> None:
    self._loop.call_soon_threadsafe(self._running.set)

  def set_latency(self, seconds: float) -> None:
    self.latency_s = float(seconds)

  def reset_counters(self) -> None:
    self.bytes_up = self.bytes_down = self.connections = self.requests = 0

  def stop(self) -> None:
    if self._loop.is_closed():
      return
    self._loop.call_soon_threadsafe(self._loop.stop)
    self._thread.join(timeout=10)

  def __enter__(self) -> "LatencyProxy":
    return self

  def __exit__(self, *exc) -> None:
    self.stop()

  # The event loop.
  def _serve(self, sock: socket.socket, started: threading.Event) -> None:
    asyncio.set_event_loop(self._loop)
    server = self._loop.run_until_complete(
        asyncio.start_server(self._handle, sock=sock, backlog=1024))
    started.set()
    try:
      self._loop.run_forever()
    finally:
      server.close()
      tasks = list(self._tasks)
      for task in tasks:
        task.cancel()
      # Wait for the cancelled connections to unwind (a closed loop with tasks still pending
      # prints "Task was destroyed but it is pending!" for each).
      self._loop.run_until_complete(asyncio.gather(*tasks, return_exceptions=True))
      self._loop.close()

  async def _handle(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter):
    self.connections += 1
    task = asyncio.current_task()
    self._tasks.add(task)
    try:
      await asyncio.sleep(self.latency_s)
      await self._running.wait()
      try:
        server_r, server_w = await asyncio.open_connection(*self.target)
      except OSError:
        client_w.close()
        return
      await asyncio.gather(self._pump(client_r, server_w, up=True),
                           self._pump(server_r, client_w, up=False),
                           return_exceptions=True)
    except asyncio.CancelledError:
      pass  # stop() drops the connection; ending quietly keeps asyncio from logging each one
    finally:
      self._tasks.discard(task)

  async def _pump(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, *,
                  up: bool) -> None:
    """Copies ``reader`` to ``writer``; upstream chunks are each delivered ``latency_s`` after
    they arrived (in order), and nothing moves while paused."""
    queue: asyncio.Queue = asyncio.Queue()

    async def deliver():
      while True:
        due, data = await queue.get()
        if data is None:
          break
        delay = due - time.monotonic()
        if delay > 0:
          await asyncio.sleep(delay)
        await self._running.wait()
        writer.write(data)
        await writer.drain()
      if writer.can_write_eof():
        writer.write_eof()

    sender = asyncio.ensure_future(deliver())
    try:
      while True:
        data = await reader.read(1 << 16)
        if not data:
          break
        if up:
          self.bytes_up += len(data)
          self.requests += len(_REQUEST_LINE.findall(data))
        else:
          self.bytes_down += len(data)
        queue.put_nowait((time.monotonic() + (self.latency_s if up else 0.0), data))
    except (ConnectionError, OSError):
      pass
    finally:
      queue.put_nowait((0.0, None))
      try:
        await sender
      except (ConnectionError, OSError):
        pass
      if not up:
        writer.close()


def main(argv: list[str] | None = None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--target", required=True, help="HOST:PORT of the server")
  parser.add_argument("--latency-ms", type=float, default=0.0)
  parser.add_argument("--port", type=int, default=0, help="listen port (0: a free one)")
  args = parser.parse_args(argv)
  host, _, port = args.target.rpartition(":")
  proxy = LatencyProxy(host or "127.0.0.1", int(port), latency_s=args.latency_ms / 1000,
                       port=args.port)
  done = threading.Event()
  signal.signal(signal.SIGUSR1, lambda *_: proxy.pause())
  signal.signal(signal.SIGUSR2, lambda *_: proxy.resume())
  signal.signal(signal.SIGTERM, lambda *_: done.set())
  print(f"listening on 127.0.0.1:{proxy.port}", flush=True)
  try:
    done.wait()
  except KeyboardInterrupt:
    pass
  proxy.stop()
  return 0


if __name__ == "__main__":
  raise SystemExit(main())
