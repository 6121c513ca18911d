"""A TCP impairment relay: adds delay and jitter where the kernel cannot (no netem here).

Listens on an address, and for each connection opens one to the target and copies bytes
both ways. Each chunk read is held until `read time + delay + uniform(-jitter, +jitter)`,
but never released before the chunk read ahead of it: the stream stays a stream (TCP
semantics: delayed, never reordered). Half-closes pass through (EOF after the last
chunk); a reset on one side resets the other. Each direction holds at most QUEUE_CHUNKS
chunks in flight; beyond that the relay stops reading, so the sender feels backpressure.

Standard library only, so it can run by path inside a namespace:

    python relay.py --listen 10.77.0.1:0 --target 10.77.0.2:9000 --delay-ms 30 --jitter-ms 10

It prints `ready <ip>:<port>` once listening. Use it in-process with `Relay(...).start()`.
"""

from __future__ import annotations

import argparse
import queue
import random
import socket
import struct
import sys
import threading
import time
from dataclasses import dataclass

CHUNK = 64 * 1024
QUEUE_CHUNKS = 256


@dataclass(frozen=True)
class Delay:
    """Delay and jitter in milliseconds for one direction."""

    delay_ms: float = 0.0
    jitter_ms: float = 0.0

    def __post_init__(self) -> None:
        if self.delay_ms < 0 or self.jitter_ms < 0:
            raise ValueError("delay and jitter must not be negative")


_EOF = object()
_RESET = object()


def _hard_close(sock: socket.socket) -> None:
    """Close with RST rather than FIN, so the peer sees the reset it would have seen."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    except OSError:
        pass
    sock.close()


class _Failure:
    """Shared by the two pipes of a connection: the first reset shuts both sockets down,
    which unblocks every reader and writer of that connection."""

    def __init__(self, *socks: socket.socket) -> None:
        self.socks = socks
        self.tripped = False
        self._lock = threading.Lock()

    def trip(self) -> None:
        with self._lock:
            if self.tripped:
                return
            self.tripped = True
        for s in self.socks:
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


class _Pipe:
    """One direction of one connection: a reader thread stamps chunks, a writer releases them."""

    def __init__(
        self, src: socket.socket, dst: socket.socket, delay: Delay, rng: random.Random, fail: "_Failure"
    ) -> None:
        self.src, self.dst, self.delay, self.rng, self.fail = src, dst, delay, rng, fail
        self.q: queue.Queue = queue.Queue(maxsize=QUEUE_CHUNKS)
        self.threads = [
            threading.Thread(target=self._read, daemon=True),
            threading.Thread(target=self._write, daemon=True),
        ]

    def start(self) -> None:
        for t in self.threads:
            t.start()

    def join(self, timeout: float | None = None) -> None:
        for t in self.threads:
            t.join(timeout)

    def _release_time(self, last: float) -> float:
        d = self.delay
        jitter = self.rng.uniform(-d.jitter_ms, d.jitter_ms) if d.jitter_ms else 0.0
        return max(time.monotonic() + max(0.0, d.delay_ms + jitter) / 1000.0, last)

    def _read(self) -> None:
        last = 0.0
        while True:
            try:
                data = self.src.recv(CHUNK)
            except OSError:
                self.q.put((last, _RESET))
                return
            if not data:
                self.q.put((last, _EOF))
                return
            last = self._release_time(last)
            self.q.put((last, data))

    def _write(self) -> None:
        while True:
            release, item = self.q.get()
            wait = release - time.monotonic()
            if wait > 0:
                time.sleep(wait)
            if item is _EOF:
                try:
                    self.dst.shutdown(socket.SHUT_WR)
                except OSError:
                    pass
                return
            if item is _RESET:
                self.fail.trip()
                return
            try:
                self.dst.sendall(item)
            except OSError:
                self.fail.trip()
                self._drain()
                return

    def _drain(self) -> None:
        """Empty the queue so a reader blocked on put() can finish."""
        deadline = time.monotonic() + 5.0
        while time.monotonic() < deadline:
            try:
                _, item = self.q.get(timeout=0.1)
            except queue.Empty:
                if not self.threads[0].is_alive():
                    return
                continue
            if item is _EOF or item is _RESET:
                return


class Relay:
    """Forward TCP connections from `listen` to `target` with per-direction delay/jitter."""

    def __init__(
        self,
        listen: tuple[str, int],
        target: tuple[str, int],
        up: Delay = Delay(),
        down: Delay = Delay(),
        seed: int | None = None,
    ) -> None:
        self.target = target
        self.up, self.down = up, down
        self.rng = random.Random(seed)
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(listen)
        self.sock.listen(64)
        self.address: tuple[str, int] = self.sock.getsockname()
        self._closed = threading.Event()
        self._thread = threading.Thread(target=self.serve_forever, daemon=True)
        self.connections = 0

    def start(self) -> "Relay":
        self._thread.start()
        return self

    def close(self) -> None:
        self._closed.set()
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.sock.close()
        if self._thread.is_alive():
            self._thread.join(5.0)

    def serve_forever(self) -> None:
        while not self._closed.is_set():
            try:
                client, _ = self.sock.accept()
            except OSError:
                return
            self.connections += 1
            threading.Thread(target=self._handle, args=(client,), daemon=True).start()

    def _handle(self, client: socket.socket) -> None:
        try:
            server = socket.create_connection(self.target, timeout=5.0)
        except OSError:
            _hard_close(client)
            return
        server.settimeout(None)
        for s in (client, server):
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        # Each pipe gets its own generator so the two directions never share state.
        fail = _Failure(client, server)
        up = _Pipe(client, server, self.up, random.Random(self.rng.random()), fail)
        down = _Pipe(server, client, self.down, random.Random(self.rng.random()), fail)
        up.start()
        down.start()
        up.join()
        down.join()
        if fail.tripped:
            _hard_close(client)
            _hard_close(server)
        else:
            client.close()
            server.close()


def _addr(text: str) -> tuple[str, int]:
    host, port = text.rsplit(":", 1)
    return host, int(port)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--listen", type=_addr, required=True, help="ip:port (port 0 = any)")
    ap.add_argument("--target", type=_addr, required=True, help="ip:port")
    ap.add_argument("--delay-ms", type=float, default=0.0, help="both directions")
    ap.add_argument("--jitter-ms", type=float, default=0.0, help="both directions")
    ap.add_argument("--up-delay-ms", type=float, help="towards the target")
    ap.add_argument("--up-jitter-ms", type=float)
    ap.add_argument("--down-delay-ms", type=float, help="back from the target")
    ap.add_argument("--down-jitter-ms", type=float)
    ap.add_argument("--seed", type=int)
    a = ap.parse_args(argv)

    def pick(v: float | None, default: float) -> float:
        return default if v is None else v

    up = Delay(pick(a.up_delay_ms, a.delay_ms), pick(a.up_jitter_ms, a.jitter_ms))
    down = Delay(pick(a.down_delay_ms, a.delay_ms), pick(a.down_jitter_ms, a.jitter_ms))
    relay = Relay(a.listen, a.target, up, down, a.seed)
    print(f"ready {relay.address[0]}:{relay.address[1]}", flush=True)
    try:
        relay.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        relay.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
