"""Poll each fleet node's own fleet view (``GET /status`` of its metrics endpoint) from inside the
rig: when did each node first see all the others? Standard library only; run in a host namespace
that reaches every node.

    python viewpoll.py --want 49 --port 9464 --duration 60 n00=10.78.0.1 n01=10.78.0.2 ...

Prints one JSON object per line: ``{"t": T, "node": NAME, "fleet": K}`` whenever a node's count of
fresh nodes in its view changes, and ``{"t": T, "node": NAME, "complete": true}`` the first time it
reaches ``--want`` (after which that node is no longer polled). T is ``time.monotonic()``: the
machine's clock, the same in every namespace. ``--once``: poll every node once, print its count,
exit. Each poll is one small HTTP request (the agent builds its status message); a node is polled
every ``--interval`` seconds at most, by ``--workers`` threads, with a short timeout so a busy node
delays only its own line.
"""

from __future__ import annotations

import argparse
import json
import queue
import sys
import threading
import time
import urllib.request


def fleet_of(ip: str, port: int, timeout: float) -> int | None:
    try:
        with urllib.request.urlopen(f"http://{ip}:{port}/status", timeout=timeout) as resp:
            body = json.loads(resp.read())
    except (OSError, ValueError):
        return None
    status = body.get("status") or {}
    fleet = status.get("fleet")
    return fleet if isinstance(fleet, int) else None


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--want", type=int, required=True, help="the count that makes a view complete")
    ap.add_argument("--port", type=int, default=9464)
    ap.add_argument("--interval", type=float, default=0.5)
    ap.add_argument("--duration", type=float, default=120.0)
    ap.add_argument("--timeout", type=float, default=2.0)
    ap.add_argument("--workers", type=int, default=8)
    ap.add_argument("--once", action="store_true")
    ap.add_argument("nodes", nargs="+", metavar="NAME=IP")
    args = ap.parse_args()
    nodes = [tuple(item.split("=", 1)) for item in args.nodes]
    lock = threading.Lock()

    def out(obj: dict) -> None:
        with lock:
            print(json.dumps(obj), flush=True)

    if args.once:
        for name, ip in nodes:
            out({"t": time.monotonic(), "node": name, "fleet": fleet_of(ip, args.port, args.timeout)})
        return 0

    deadline = time.monotonic() + args.duration
    todo: queue.Queue[tuple[float, str, str]] = queue.Queue()
    for name, ip in nodes:
        todo.put((0.0, name, ip))
    last: dict[str, int | None] = {}
    left = [len(nodes)]

    def worker() -> None:
        while time.monotonic() < deadline:
            try:
                due, name, ip = todo.get(timeout=0.2)
            except queue.Empty:
                with lock:
                    if left[0] == 0:
                        return
                continue
            wait = due - time.monotonic()
            if wait > 0:
                time.sleep(wait)
            fleet = fleet_of(ip, args.port, args.timeout)
            now = time.monotonic()
            if fleet is not None and fleet != last.get(name):
                last[name] = fleet
                out({"t": now, "node": name, "fleet": fleet})
            if fleet is not None and fleet >= args.want:
                out({"t": now, "node": name, "complete": True})
                with lock:
                    left[0] -= 1
                continue
            todo.put((now + args.interval, name, ip))

    threads = [threading.Thread(target=worker, daemon=True) for _ in range(args.workers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return 0


if __name__ == "__main__":
    sys.exit(main())
