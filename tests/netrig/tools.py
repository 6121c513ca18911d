"""Small traffic tools the rig's tests run inside host namespaces (standard library only).

    python tools.py <command> [options]

Servers print `ready <ip>:<port>` once bound; clients print one JSON object as their last
line. Every wait is bounded by a timeout. Commands: ping, udp-recv, udp-send, tcp-echo,
tcp-sink, tcp-send, tcp-rtt, tcp-roundtrip, tcp-probe, mcast-recv, mcast-send.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import socket
import struct
import sys
import threading
import time


def _addr(text: str) -> tuple[str, int]:
    host, port = text.rsplit(":", 1)
    return host, int(port)


def _out(obj: dict) -> None:
    print(json.dumps(obj), flush=True)


def _ready(sock: socket.socket) -> None:
    ip, port = sock.getsockname()[:2]
    print(f"ready {ip}:{port}", flush=True)


def _recv_exactly(sock: socket.socket, n: int) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise EOFError(f"EOF after {len(buf)} of {n} bytes")
        buf += chunk
    return bytes(buf)


# -- ICMP ping (no ping binary on this machine) ---------------------------------------------


def _checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    total = (total >> 16) + (total & 0xFFFF)
    total += total >> 16
    return ~total & 0xFFFF


def cmd_ping(a: argparse.Namespace) -> int:
    sock = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
    ident = os.getpid() & 0xFFFF
    rtts: list[float] = []
    for seq in range(a.count):
        header = struct.pack("!BBHHH", 8, 0, 0, ident, seq)
        payload = b"netrig-ping"
        packet = struct.pack("!BBHHH", 8, 0, _checksum(header + payload), ident, seq) + payload
        t0 = time.monotonic()
        sock.sendto(packet, (a.to, 0))
        deadline = t0 + a.timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            sock.settimeout(left)
            try:
                data, (src, _) = sock.recvfrom(2048)
            except socket.timeout:
                break
            ihl = (data[0] & 0x0F) * 4
            typ, _, _, rid, rseq = struct.unpack("!BBHHH", data[ihl : ihl + 8])
            if typ == 0 and rid == ident and rseq == seq and src == a.to:
                rtts.append((time.monotonic() - t0) * 1000)
                break
        if seq + 1 < a.count:
            time.sleep(a.interval)
    _out({"sent": a.count, "received": len(rtts), "rtt_ms": rtts})
    return 0 if rtts else 1


# -- UDP ---------------------------------------------------------------------------------


def cmd_udp_recv(a: argparse.Namespace) -> int:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:  # root may exceed rmem_max: a burst must not be lost to a full socket buffer
        sock.setsockopt(socket.SOL_SOCKET, 33, a.rcvbuf)  # SO_RCVBUFFORCE
    except OSError:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, a.rcvbuf)
    sock.bind(_addr(a.bind))
    _ready(sock)
    count = nbytes = 0
    seqs: set[int] = set()
    end = time.monotonic() + a.max_time
    last = None
    while True:
        now = time.monotonic()
        limit = end if last is None else min(end, last + a.idle)
        if now >= limit:
            break
        sock.settimeout(limit - now)
        try:
            data = sock.recv(65536)
        except socket.timeout:
            break
        last = time.monotonic()
        count += 1
        nbytes += len(data)
        if len(data) >= 4:
            seqs.add(struct.unpack("!I", data[:4])[0])
    _out({"received": count, "bytes": nbytes, "distinct": len(seqs)})
    return 0


def cmd_udp_send(a: argparse.Namespace) -> int:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    dest = _addr(a.to)
    sent = errors = 0
    pad = b"x" * max(0, a.size - 4)
    for i in range(a.count):
        try:
            sock.sendto(struct.pack("!I", i) + pad, dest)
            sent += 1
        except OSError:
            errors += 1
        if a.pace_every and (i + 1) % a.pace_every == 0:
            time.sleep(a.pace_ms / 1000)
    _out({"sent": sent, "errors": errors})
    return 0


# -- TCP ---------------------------------------------------------------------------------


def _listener(bind: str) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(_addr(bind))
    sock.listen(64)
    return sock


def _serve(sock: socket.socket, handler) -> int:  # noqa: ANN001
    _ready(sock)
    while True:
        conn, _ = sock.accept()
        threading.Thread(target=handler, args=(conn,), daemon=True).start()


def _echo(conn: socket.socket) -> None:
    with conn:
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        while data := conn.recv(65536):
            conn.sendall(data)


def _sink(conn: socket.socket) -> None:
    with conn:
        while conn.recv(65536):
            pass


def cmd_tcp_echo(a: argparse.Namespace) -> int:
    return _serve(_listener(a.bind), _echo)


def cmd_tcp_sink(a: argparse.Namespace) -> int:
    return _serve(_listener(a.bind), _sink)


def cmd_tcp_send(a: argparse.Namespace) -> int:
    t0 = time.monotonic()
    sock = socket.create_connection(_addr(a.to), timeout=a.timeout)
    block = b"\xa5" * 65536
    left = a.bytes
    while left > 0:
        n = sock.send(block[: min(left, len(block))])
        left -= n
    sock.shutdown(socket.SHUT_WR)
    while sock.recv(65536):  # the sink closes once it has read everything
        pass
    _out({"bytes": a.bytes, "seconds": time.monotonic() - t0})
    return 0


def cmd_tcp_rtt(a: argparse.Namespace) -> int:
    sock = socket.create_connection(_addr(a.to), timeout=a.timeout)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    rtts = []
    for i in range(a.count):
        msg = struct.pack("!I", i) + b"r" * (a.size - 4)
        t0 = time.monotonic()
        sock.sendall(msg)
        if _recv_exactly(sock, len(msg)) != msg:
            _out({"error": f"echo mismatch at {i}", "rtt_ms": rtts})
            return 1
        rtts.append((time.monotonic() - t0) * 1000)
    sock.close()
    _out({"rtt_ms": rtts})
    return 0


def cmd_tcp_roundtrip(a: argparse.Namespace) -> int:
    """Send random bytes in random-sized pieces through an echo and check they come back intact."""
    rng = random.Random(a.seed)
    payload = rng.randbytes(a.bytes)
    sock = socket.create_connection(_addr(a.to), timeout=a.timeout)
    t0 = time.monotonic()

    def writer() -> None:
        i = 0
        while i < len(payload):
            n = rng.randint(1, 8192)
            sock.sendall(payload[i : i + n])
            i += n
        sock.shutdown(socket.SHUT_WR)

    t = threading.Thread(target=writer, daemon=True)
    t.start()
    got = bytearray()
    while chunk := sock.recv(65536):
        got += chunk
    t.join(a.timeout)
    _out({"ok": bytes(got) == payload, "sent": len(payload), "received": len(got),
          "seconds": time.monotonic() - t0})
    return 0 if bytes(got) == payload else 1


def cmd_tcp_probe(a: argparse.Namespace) -> int:
    t0 = time.monotonic()
    try:
        socket.create_connection(_addr(a.to), timeout=a.timeout).close()
    except OSError as exc:
        _out({"connected": False, "error": f"{type(exc).__name__}: {exc}", "seconds": time.monotonic() - t0})
        return 1
    _out({"connected": True, "seconds": time.monotonic() - t0})
    return 0


# -- multicast (the mDNS path) -----------------------------------------------------------


def cmd_mcast_recv(a: argparse.Namespace) -> int:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM, socket.IPPROTO_UDP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("", a.port))
    # Join on the interface address: with several interfaces (lo, eth0) the default
    # choice may not be the one the group traffic arrives on.
    mreq = socket.inet_aton(a.group) + socket.inet_aton(a.iface_ip)
    sock.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP, mreq)
    print(f"ready {a.group}:{a.port}", flush=True)
    messages, senders = [], set()
    end = time.monotonic() + a.timeout
    while len(messages) < a.count and time.monotonic() < end:
        sock.settimeout(max(0.01, end - time.monotonic()))
        try:
            data, (src, _) = sock.recvfrom(65536)
        except socket.timeout:
            break
        messages.append(data.decode(errors="replace"))
        senders.add(src)
    _out({"messages": messages, "senders": sorted(senders)})
    return 0 if messages else 1


def cmd_mcast_send(a: argparse.Namespace) -> int:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM, socket.IPPROTO_UDP)
    # Choose the outgoing interface explicitly (the mDNS note in facts.md).
    sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF, socket.inet_aton(a.iface_ip))
    sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_TTL, 255)
    sent = 0
    for i in range(a.count):
        sock.sendto(f"{a.message} {i}".encode(), (a.group, a.port))
        sent += 1
        time.sleep(a.interval)
    _out({"sent": sent})
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="command", required=True)

    p = sub.add_parser("ping")
    p.add_argument("--to", required=True)
    p.add_argument("--count", type=int, default=1)
    p.add_argument("--timeout", type=float, default=1.0)
    p.add_argument("--interval", type=float, default=0.05)
    p.set_defaults(fn=cmd_ping)

    p = sub.add_parser("udp-recv")
    p.add_argument("--bind", required=True)
    p.add_argument("--idle", type=float, default=0.5, help="stop this long after the last datagram")
    p.add_argument("--max-time", type=float, default=15.0)
    p.add_argument("--rcvbuf", type=int, default=8 << 20)
    p.set_defaults(fn=cmd_udp_recv)

    p = sub.add_parser("udp-send")
    p.add_argument("--to", required=True)
    p.add_argument("--count", type=int, default=1000)
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--pace-every", type=int, default=50)
    p.add_argument("--pace-ms", type=float, default=2.0)
    p.set_defaults(fn=cmd_udp_send)

    for name, fn in (("tcp-echo", cmd_tcp_echo), ("tcp-sink", cmd_tcp_sink)):
        p = sub.add_parser(name)
        p.add_argument("--bind", required=True)
        p.set_defaults(fn=fn)

    p = sub.add_parser("tcp-send")
    p.add_argument("--to", required=True)
    p.add_argument("--bytes", type=int, required=True)
    p.add_argument("--timeout", type=float, default=20.0)
    p.set_defaults(fn=cmd_tcp_send)

    p = sub.add_parser("tcp-rtt")
    p.add_argument("--to", required=True)
    p.add_argument("--count", type=int, default=20)
    p.add_argument("--size", type=int, default=32)
    p.add_argument("--timeout", type=float, default=10.0)
    p.set_defaults(fn=cmd_tcp_rtt)

    p = sub.add_parser("tcp-roundtrip")
    p.add_argument("--to", required=True)
    p.add_argument("--bytes", type=int, default=1 << 20)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--timeout", type=float, default=20.0)
    p.set_defaults(fn=cmd_tcp_roundtrip)

    p = sub.add_parser("tcp-probe")
    p.add_argument("--to", required=True)
    p.add_argument("--timeout", type=float, default=1.0)
    p.set_defaults(fn=cmd_tcp_probe)

    p = sub.add_parser("mcast-recv")
    p.add_argument("--group", default="224.0.0.251")
    p.add_argument("--port", type=int, default=5353)
    p.add_argument("--iface-ip", required=True)
    p.add_argument("--count", type=int, default=1)
    p.add_argument("--timeout", type=float, default=5.0)
    p.set_defaults(fn=cmd_mcast_recv)

    p = sub.add_parser("mcast-send")
    p.add_argument("--group", default="224.0.0.251")
    p.add_argument("--port", type=int, default=5353)
    p.add_argument("--iface-ip", required=True)
    p.add_argument("--count", type=int, default=5)
    p.add_argument("--interval", type=float, default=0.05)
    p.add_argument("--message", default="netrig")
    p.set_defaults(fn=cmd_mcast_send)

    a = ap.parse_args(argv)
    return a.fn(a)


if __name__ == "__main__":
    sys.exit(main())
