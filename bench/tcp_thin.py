"""TCP for a thin real-time stream: what Linux offers, measured on the namespace rig.

A sender writes one small message (``--size`` bytes, default 200: an Opus packet with our
framing) every ``--period-ms`` (40) over plain TCP to a receiver on another rig host, with
random loss on the receiver's link in both directions (nftables). The receiver takes the
one-way delay of each message (both ends share CLOCK_MONOTONIC: one machine). Per setting:
delay p50 / p95 / p99 / max and the share of messages later than 100 / 200 ms: a jitter
buffer has to wait that long, or conceal.

Settings compared (each on a fresh connection, same loss):
- default: what py-libp2p gets (trio sets TCP_NODELAY already)
- thin-linear: TCP_THIN_LINEAR_TIMEOUTS=1 on the sender (linear, not exponential, back-off of
  the first RTOs while fewer than 4 segments are in flight)
- sockopt-rto-min: TCP_RTO_MIN_US socket option (Linux >= 6.15) on both ends
- route-rto-min: `ip route replace ... rto_min 20ms` on both hosts (needs CAP_NET_ADMIN: what a
  --root install could configure; works on every kernel the Pi runs)
- route-rto-min + thin-linear
- ... + drop-stale: the sender keeps messages in its own queue while the socket holds unsent
  bytes (SIOCOUTQNSD), and drops those older than 200 ms instead of sending them (what a
  sender-side "do not queue what can no longer be played" would do); a message is then
  either on time-ish or never sent. The dump marks the messages never delivered.

Needs root. ``.venv/bin/python bench/tcp_thin.py [--loss 10] [--seconds 20]``
"""

from __future__ import annotations

import argparse
import json
import math
import os
import socket
import struct
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

TCP_THIN_LINEAR_TIMEOUTS = 16  # linux/tcp.h
TCP_RTO_MIN_US = 45            # linux/tcp.h, Linux 6.15+
SIOCOUTQNSD = 0x894B           # linux/sockios.h: bytes in the send queue not sent yet
HDR = struct.Struct("<QI")


def apply(sock: socket.socket, opts: list[str]) -> list[str]:
    done = []
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    for o in opts:
        try:
            if o == "thin":
                sock.setsockopt(socket.IPPROTO_TCP, TCP_THIN_LINEAR_TIMEOUTS, 1)
            elif o.startswith("stale="):
                pass  # the sender's own queue, see sender()
            elif o.startswith("rtomin="):
                sock.setsockopt(socket.IPPROTO_TCP, TCP_RTO_MIN_US, int(o.split("=")[1]))
            done.append(o)
        except OSError as exc:
            done.append(f"{o}:FAILED({exc.strerror})")
    return done


def receiver(host: str, port: int, opts: list[str]) -> None:
    srv = socket.socket()
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind((host, port))
    srv.listen(1)
    print("ready", flush=True)
    conn, _ = srv.accept()
    applied = apply(conn, opts)
    buf = b""
    delays: list[float] = []
    stamps: list[int] = []
    while True:
        data = conn.recv(65536)
        if not data:
            break
        now = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        buf += data
        while len(buf) >= HDR.size:
            ts, n = HDR.unpack_from(buf)
            if len(buf) < HDR.size + n:
                break
            buf = buf[HDR.size + n:]
            delays.append((now - ts) / 1000)
            stamps.append(ts)
    print(json.dumps({"delays_ms": delays, "ts_us": stamps, "applied": applied}), flush=True)


def tcp_info(sock: socket.socket) -> dict[str, int]:
    """A few counters of the kernel's struct tcp_info (linux/tcp.h offsets, Linux >= 5.4)."""
    raw = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 256)
    def u32(off: int) -> int:
        return struct.unpack_from("<I", raw, off)[0] if len(raw) >= off + 4 else -1
    def u64(off: int) -> int:
        return struct.unpack_from("<Q", raw, off)[0] if len(raw) >= off + 8 else -1
    return {"total_retrans": u32(100), "data_segs_out": u32(156), "bytes_sent": u64(200),
            "bytes_retrans": u64(208), "dsack_dups": u32(216)}


def sender(host: str, port: int, opts: list[str], seconds: float, period_ms: float, size: int) -> None:
    s = socket.create_connection((host, port))
    applied = apply(s, opts)
    n = int(seconds * 1000 / period_ms)
    stale_us = next((int(o.split("=")[1]) for o in opts if o.startswith("stale=")), 0)
    t0 = time.monotonic()
    if not stale_us:
        for i in range(n):
            time.sleep(max(0.0, t0 + i * period_ms / 1000 - time.monotonic()))
            ts = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
            s.sendall(HDR.pack(ts, size) + bytes(size))
        dropped = 0
    else:
        import fcntl
        from collections import deque

        queue: deque[int] = deque()
        dropped = i = 0
        while i < n or queue:
            now = time.monotonic()
            if i < n and now >= t0 + i * period_ms / 1000:
                queue.append(time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000)
                i += 1
            unsent = struct.unpack("i", fcntl.ioctl(s.fileno(), SIOCOUTQNSD, b"\0\0\0\0"))[0]
            if unsent == 0:
                now_us = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
                while queue and now_us - queue[0] > stale_us:
                    queue.popleft()
                    dropped += 1
                if queue:
                    s.sendall(b"".join(HDR.pack(ts, size) + bytes(size) for ts in queue))
                    queue.clear()
            time.sleep(0.002)
    time.sleep(1.0)
    info = tcp_info(s)
    s.close()
    print(json.dumps({"sent": n, "dropped": dropped, "applied": applied, "info": info}), flush=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--loss", type=float, action="append", help="percent, both directions (repeatable)")
    ap.add_argument("--seconds", type=float, default=20.0)
    ap.add_argument("--period-ms", type=float, default=40.0)
    ap.add_argument("--size", type=int, default=200)
    ap.add_argument("--dump", type=Path, help="write each setting's one-way delays (ms, in send order) "
                    "to this JSON file, for bench/playout_replay.py")
    ap.add_argument("--only", default="", help="comma-separated setting names (default: all)")
    ap.add_argument("--role", choices=["send", "recv"], help=argparse.SUPPRESS)
    ap.add_argument("--addr", help=argparse.SUPPRESS)
    ap.add_argument("--opts", default="", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.role:
        host, port = a.addr.rsplit(":", 1)
        opts = [o for o in a.opts.split(",") if o]
        if a.role == "recv":
            receiver(host, int(port), opts)
        else:
            sender(host, int(port), opts, a.seconds, a.period_ms, a.size)
        return 0
    from agent.measure import percentile
    from tests.netrig import Rig
    from tests.netrig.procs import read_line

    settings = [
        ("default", [], False),
        ("thin-linear", ["thin"], False),
        ("sockopt-rto-min 20ms", ["rtomin=20000"], False),
        ("route-rto-min 20ms", [], True),
        ("route-rto-min + thin-linear", ["thin"], True),
        ("sockopt-rto-min 20ms + thin-linear", ["rtomin=20000", "thin"], False),
        ("sockopt-rto-min 30ms", ["rtomin=30000"], False),
        ("sockopt-rto-min 40ms", ["rtomin=40000"], False),
        ("sockopt-rto-min 50ms", ["rtomin=50000"], False),
        ("sockopt-rto-min 20ms + drop-stale", ["rtomin=20000", "stale=200000"], False),
    ]
    if a.only:
        settings = [s for s in settings if s[0] in a.only.split(",")]
    losses = a.loss or [10.0]
    print(f"{a.size} B every {a.period_ms:g} ms for {a.seconds:g} s per setting; kernel {os.uname().release}; "
          f"load {' '.join(f'{x:.1f}' for x in os.getloadavg())}")
    print("| loss | setting | delivered | p50 | p95 | p99 | max ms | > 100 ms | > 200 ms "
          "| segments sent per message | of them spurious (D-SACKed) |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    traces: list[dict[str, object]] = []
    with Rig(2, "10.80.0.0/24") as rig:
        tx, rx = rig[0], rig[1]
        port = 5100
        for loss in losses:
            for name, opts, route in settings:
                port += 1
                for h in (tx, rx):
                    extra = ["rto_min", "20ms"] if route else []
                    h.run(["ip", "route", "replace", "10.80.0.0/24", "dev", "eth0", *extra])
                rx.set_loss(loss)
                argv = [sys.executable, __file__, "--seconds", str(a.seconds), "--period-ms", str(a.period_ms),
                        "--size", str(a.size), "--addr", f"{rx.ip}:{port}", "--opts", ",".join(opts)]
                import subprocess

                r = rx.exec([*argv, "--role", "recv"], stdout=subprocess.PIPE, text=True)
                assert read_line(r, 10) == "ready"
                s = tx.exec([*argv, "--role", "send"], stdout=subprocess.PIPE, text=True)
                sent = json.loads(s.communicate(timeout=a.seconds + 60)[0])
                got = json.loads(r.communicate(timeout=180)[0])
                info = sent["info"]
                rx.set_loss(0)
                d = got["delays_ms"]
                traces.append({"loss": loss, "setting": name, "period_ms": a.period_ms, "delays_ms": d,
                               "ts_us": got["ts_us"], "dropped": sent.get("dropped", 0),
                               "load": os.getloadavg()[0]})
                late100 = sum(x > 100 for x in d) / max(1, len(d)) * 100
                late200 = sum(x > 200 for x in d) / max(1, len(d)) * 100
                applied = ",".join(sorted(set(sent["applied"] + got["applied"]))) or "-"
                p50, p95, p99 = (percentile(d, q, math.nan) for q in (50, 95, 99))
                print(f"| {loss:g} % | {name} ({applied}) | {len(d)}/{sent['sent']} | {p50:.1f} | "
                      f"{p95:.1f} | {p99:.1f} | {max(d):.0f} | {late100:.1f} % | {late200:.1f} % | "
                      f"{info['data_segs_out'] / sent['sent']:.2f} | {info['dsack_dups'] / sent['sent']:.2f} |",
                      flush=True)
        for h in (tx, rx):
            h.run(["ip", "route", "replace", "10.80.0.0/24", "dev", "eth0"])
    if a.dump:
        a.dump.write_text(json.dumps({"kernel": os.uname().release, "size": a.size, "traces": traces}))
        print(f"delays written to {a.dump}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
