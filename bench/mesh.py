"""Benchmark of the mesh layer against its floor: a table, all measured in one run on this machine.

    python bench/mesh.py            # full run, about 3 minutes
    python bench/mesh.py --quick    # about 1 minute, noisier figures

Rows (issue 3, "Benchmark"):
- one-way latency of 20 ms frames of 640 bytes at real-time pace, from the moment the sender
  hands a frame over to the moment the receiving application has it, with 1 and 4 concurrent
  streams: a raw trio TCP socket pair (the floor), a bare py-libp2p stream (new_host +
  new_stream, Noise + Yamux, for reference) and the mesh node (`send_audio` -> `AudioData`);
  sender and receiver in one process, and the same across two processes;
- the mesh's added latency over the floor against the goals (p50 <= 1.5 ms, p99 <= 5 ms);
- publish -> deliver latency across three nodes in a line (one and two hops);
- frames/s one stream carries flat out (8 frames in flight), for the three transports;
- RSS and CPU of an idle node process against a bare `import libp2p` process (goal: within
  15 MB, under 2 % of one core), both spawned and measured through /proc after settling.

Latencies use CLOCK_MONOTONIC (`time.monotonic_ns() // 1000`, as the node stamps frames), so the
two-process rows are comparable too. The first frames of each run (connection warm-up) are not
counted.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import struct
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import trio

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from agent.measure import percentile  # noqa: E402
from agent.mesh import now_us  # noqa: E402

FRAME = 640
FRAME_S = 0.020
WARMUP_FRAMES = 10
WINDOW = 8                      # frames in flight in the flat-out runs (the node buffers 16)
HDR = struct.Struct("!QI")      # raw TCP / bare stream framing: timestamp_us, payload length
BENCH_PROTO = "/avi-bench/1.0.0"
GOAL_P50_MS = 1.5
GOAL_P99_MS = 5.0
GOAL_RSS_MB = 15.0
GOAL_CPU_PCT = 2.0


# --- statistics -------------------------------------------------------------------------------
@dataclass
class Lat:
    n: int
    p50: float
    p99: float
    max: float
    lost: int = 0

    @classmethod
    def of(cls, samples_us: list[int], expected: int | None = None) -> Lat:
        if not samples_us:
            return cls(0, float("nan"), float("nan"), float("nan"), expected or 0)
        p50, p99 = (percentile(samples_us, q, math.nan) / 1000 for q in (50, 99))
        return cls(len(samples_us), p50, p99, max(samples_us) / 1000, max(0, (expected or 0) - len(samples_us)))

    def cells(self) -> str:
        lost = f"  lost {self.lost}" if self.lost else ""
        return f"{self.p50:7.2f} {self.p99:7.2f} {self.max:7.2f}  n={self.n}{lost}"


class FrameReader:
    """Reassemble HDR-framed payloads from a byte stream; yields (timestamp_us, payload) tuples."""

    def __init__(self) -> None:
        self.buf = bytearray()

    def feed(self, data: bytes) -> list[int]:
        self.buf += data
        stamps = []
        while len(self.buf) >= HDR.size:
            ts, length = HDR.unpack_from(self.buf)
            if len(self.buf) < HDR.size + length:
                break
            del self.buf[:HDR.size + length]
            stamps.append(ts)
        return stamps


def frame_bytes(ts: int) -> bytes:
    return HDR.pack(ts, FRAME) + bytes(FRAME)


async def paced(frames: int, send: Callable[[int], Awaitable[None]]) -> None:
    """Call `send(i)` every 20 ms on an absolute schedule (no drift)."""
    start = trio.current_time()
    for i in range(frames):
        await trio.sleep_until(start + i * FRAME_S)
        await send(i)


async def flat_out(seconds: float, send: Callable[[], Awaitable[None]], received: Callable[[], int],
                   progressed: Callable[[], trio.Event]) -> tuple[float, float]:
    """Send as fast as the receiver keeps up (WINDOW frames in flight); (frames/s, CPU ms/frame)."""
    sent = 0
    cpu0, t0 = time.process_time(), trio.current_time()
    deadline = t0 + seconds
    while trio.current_time() < deadline:
        while sent - received() >= WINDOW:
            with trio.move_on_at(deadline + 2):
                await progressed().wait()
            if trio.current_time() > deadline + 2:
                break
        await send()
        sent += 1
    with trio.move_on_after(2):
        while received() < sent:
            await progressed().wait()
    elapsed = trio.current_time() - t0
    got = received()
    cpu = time.process_time() - cpu0
    return got / elapsed, (cpu / got * 1000 if got else float("nan"))


class Progress:
    """A counter a waiter can sleep on."""

    def __init__(self) -> None:
        self.count = 0
        self.event = trio.Event()

    def bump(self, n: int = 1) -> None:
        self.count += n
        self.event.set()
        self.event = trio.Event()


# --- raw TCP (the floor) ----------------------------------------------------------------------
async def tcp_receiver(stream: trio.abc.ReceiveStream, out: list[int], progress: Progress | None = None) -> None:
    reader = FrameReader()
    while True:
        data = await stream.receive_some(65536)
        if not data:
            return
        arrived = now_us()
        stamps = reader.feed(data)
        out.extend(arrived - ts for ts in stamps)
        if progress is not None and stamps:
            progress.bump(len(stamps))


async def tcp_latency(streams: int, frames: int) -> Lat:
    per_stream: list[list[int]] = [[] for _ in range(streams)]
    [listener] = await trio.open_tcp_listeners(0, host="127.0.0.1")
    port = listener.socket.getsockname()[1]
    async with listener, trio.open_nursery() as readers:
        senders = []
        for i in range(streams):
            senders.append(await trio.open_tcp_stream("127.0.0.1", port))  # TCP_NODELAY is trio's default
            readers.start_soon(tcp_receiver, await listener.accept(), per_stream[i])
        async with trio.open_nursery() as tx:
            for s in senders:
                async def send(_: int, s: trio.SocketStream = s) -> None:
                    await s.send_all(frame_bytes(now_us()))
                tx.start_soon(paced, frames, send)
        for s in senders:
            await s.aclose()
    return Lat.of([x for ps in per_stream for x in ps[WARMUP_FRAMES:]], (frames - WARMUP_FRAMES) * streams)


async def tcp_flat(seconds: float) -> tuple[float, float]:
    progress = Progress()
    sink: list[int] = []
    [listener] = await trio.open_tcp_listeners(0, host="127.0.0.1")
    async with listener, trio.open_nursery() as nursery:
        s = await trio.open_tcp_stream("127.0.0.1", listener.socket.getsockname()[1])
        nursery.start_soon(tcp_receiver, await listener.accept(), sink, progress)
        result = await flat_out(seconds, lambda: s.send_all(frame_bytes(now_us())),
                                lambda: progress.count, lambda: progress.event)
        await s.aclose()
    return result


# --- bare py-libp2p stream --------------------------------------------------------------------
def bare_host():  # type: ignore[no-untyped-def]
    from libp2p import new_host
    from libp2p.crypto import x25519
    from libp2p.crypto.ed25519 import create_new_key_pair
    from libp2p.security.noise.transport import PROTOCOL_ID as NOISE
    from libp2p.security.noise.transport import Transport as NoiseTransport
    from libp2p.stream_muxer.yamux.yamux import PROTOCOL_ID as YAMUX
    from libp2p.stream_muxer.yamux.yamux import Yamux

    kp = create_new_key_pair()
    return new_host(key_pair=kp, sec_opt={NOISE: NoiseTransport(kp, noise_privkey=x25519.create_new_key_pair().private_key)},
                    muxer_opt={YAMUX: Yamux})


async def with_bare_pair(body: Callable[..., Awaitable[object]]) -> object:
    """Run `body(a, b, incoming)` with two connected bare hosts; `incoming` yields b's new streams."""
    import multiaddr
    from libp2p.custom_types import TProtocol
    from libp2p.peer.peerinfo import PeerInfo

    a, b = bare_host(), bare_host()
    send, incoming = trio.open_memory_channel(16)

    async def handler(stream) -> None:  # type: ignore[no-untyped-def]
        await send.send(stream)
        await trio.sleep_forever()  # the stream lives while the benchmark reads it

    b.set_stream_handler(TProtocol(BENCH_PROTO), handler)
    addr = [multiaddr.Multiaddr("/ip4/127.0.0.1/tcp/0")]
    async with a.run(addr), b.run(addr):
        try:
            await a.connect(PeerInfo(b.get_id(), b.get_addrs()))
            return await body(a, b, incoming)
        finally:
            with trio.CancelScope(shield=True), trio.move_on_after(5):
                await a.close()
                await b.close()


async def bare_reader(stream, out: list[int], progress: Progress | None = None) -> None:  # type: ignore[no-untyped-def]
    from libp2p.network.stream.exceptions import StreamClosed, StreamEOF, StreamReset

    reader = FrameReader()
    while True:
        try:
            data = await stream.read(65536)
        except (StreamEOF, StreamReset, StreamClosed):
            return
        if not data:
            return
        arrived = now_us()
        stamps = reader.feed(data)
        out.extend(arrived - ts for ts in stamps)
        if progress is not None and stamps:
            progress.bump(len(stamps))


async def bare_latency(streams: int, frames: int) -> Lat:
    from libp2p.custom_types import TProtocol

    per_stream: list[list[int]] = [[] for _ in range(streams)]

    async def body(a, b, incoming) -> None:  # type: ignore[no-untyped-def]
        outs = [await a.new_stream(b.get_id(), [TProtocol(BENCH_PROTO)]) for _ in range(streams)]
        async with trio.open_nursery() as nursery:
            for i in range(streams):
                nursery.start_soon(bare_reader, await incoming.receive(), per_stream[i])
            async with trio.open_nursery() as tx:
                for s in outs:
                    async def send(_: int, s=s) -> None:  # type: ignore[no-untyped-def]
                        await s.write(frame_bytes(now_us()))
                    tx.start_soon(paced, frames, send)
            await trio.sleep(0.2)
            nursery.cancel_scope.cancel()
        for s in outs:
            await s.close()

    await with_bare_pair(body)
    return Lat.of([x for ps in per_stream for x in ps[WARMUP_FRAMES:]], (frames - WARMUP_FRAMES) * streams)


async def bare_flat(seconds: float) -> tuple[float, float]:
    from libp2p.custom_types import TProtocol

    progress = Progress()
    sink: list[int] = []

    async def body(a, b, incoming):  # type: ignore[no-untyped-def]
        s = await a.new_stream(b.get_id(), [TProtocol(BENCH_PROTO)])
        async with trio.open_nursery() as nursery:
            await s.write(frame_bytes(now_us()))  # the handler only runs once data arrives
            nursery.start_soon(bare_reader, await incoming.receive(), sink, progress)
            with trio.fail_after(5):
                while progress.count < 1:
                    await progress.event.wait()
            progress.count = 0
            result = await flat_out(seconds, lambda: s.write(frame_bytes(now_us())),
                                    lambda: progress.count, lambda: progress.event)
            nursery.cancel_scope.cancel()
        await s.close()
        return result

    return await with_bare_pair(body)  # type: ignore[return-value]


# --- the mesh node ----------------------------------------------------------------------------
def mesh_config(**extra):  # type: ignore[no-untyped-def]
    from agent.mesh import AviP2pConfig

    return AviP2pConfig.local_only(**extra)


class MeshRx:
    """Consumes one node's events: accepts every audio stream, records latencies per stream."""

    def __init__(self, handle, events) -> None:  # type: ignore[no-untyped-def]
        self.handle = handle
        self.events = events
        self.lat: dict[int, list[int]] = {}
        self.closed: set[int] = set()
        self.progress = Progress()
        self.messages: list[int] = []
        self.changed = Progress()

    async def run(self) -> None:
        from agent.mesh import AudioData, AudioStreamClosed, AudioStreamRequested, Message

        async for ev in self.events:
            match ev:
                case AudioData(stream_id=sid, timestamp_us=ts):
                    self.lat.setdefault(sid, []).append(now_us() - ts)
                    self.progress.bump()
                case AudioStreamRequested(stream_id=sid):
                    self.lat.setdefault(sid, [])
                    await self.handle.accept_audio_stream(sid)
                    self.changed.bump()
                case AudioStreamClosed(stream_id=sid):
                    self.closed.add(sid)
                    self.changed.bump()
                case Message(data=d):
                    self.messages.append(now_us() - struct.unpack("!Q", d[:8])[0])
                    self.changed.bump()
                case _:
                    self.changed.bump()


class MeshTx:
    """Consumes the sending node's events: notes acceptances."""

    def __init__(self, events) -> None:  # type: ignore[no-untyped-def]
        self.events = events
        self.accepted: set[int] = set()
        self.changed = Progress()

    async def run(self) -> None:
        from agent.mesh import AudioStreamAccepted

        async for ev in self.events:
            if isinstance(ev, AudioStreamAccepted):
                self.accepted.add(ev.stream_id)
            self.changed.bump()


async def open_mesh_streams(handle, tx: MeshTx, peer: str, streams: int) -> list[int]:  # type: ignore[no-untyped-def]
    sids = [await handle.request_audio_stream(peer) for _ in range(streams)]
    with trio.fail_after(10):
        while not all(s in tx.accepted for s in sids):
            await tx.changed.event.wait()
    return sids


async def send_paced_mesh(handle, sids: list[int], frames: int) -> None:  # type: ignore[no-untyped-def]
    frame = bytes(FRAME)
    async with trio.open_nursery() as nursery:
        for sid in sids:
            async def send(_: int, sid: int = sid) -> None:
                await handle.send_audio(sid, frame, timestamp_us=now_us())
            nursery.start_soon(paced, frames, send)


async def mesh_latency(streams: int, frames: int) -> Lat:
    from agent.mesh import AviP2p

    async with AviP2p.start(mesh_config()) as (a, a_events), AviP2p.start(mesh_config()) as (b, b_events):
        ha, hb = a.handle(), b.handle()
        rx, tx = MeshRx(hb, b_events), MeshTx(a_events)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(rx.run)
            nursery.start_soon(tx.run)
            await ha.dial(hb.listen_addresses()[0])
            sids = await open_mesh_streams(ha, tx, hb.local_peer_id, streams)
            await send_paced_mesh(ha, sids, frames)
            await trio.sleep(0.3)
            nursery.cancel_scope.cancel()
    return Lat.of([x for sid in sids for x in rx.lat.get(sid, [])[WARMUP_FRAMES:]],
                  (frames - WARMUP_FRAMES) * streams)


async def mesh_flat(seconds: float) -> tuple[float, float]:
    from agent.mesh import AviP2p

    async with AviP2p.start(mesh_config()) as (a, a_events), AviP2p.start(mesh_config()) as (b, b_events):
        ha, hb = a.handle(), b.handle()
        rx, tx = MeshRx(hb, b_events), MeshTx(a_events)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(rx.run)
            nursery.start_soon(tx.run)
            await ha.dial(hb.listen_addresses()[0])
            [sid] = await open_mesh_streams(ha, tx, hb.local_peer_id, 1)
            frame = bytes(FRAME)
            result = await flat_out(seconds, lambda: ha.send_audio(sid, frame),
                                    lambda: rx.progress.count, lambda: rx.progress.event)
            dropped = a.stats().audio_frames_dropped + b.stats().audio_frames_dropped
            nursery.cancel_scope.cancel()
    if dropped:
        print(f"  (mesh flat-out: {dropped} frames dropped by the nodes)", file=sys.stderr)
    return result


async def pubsub_latency(messages: int) -> tuple[Lat, Lat]:
    from agent.mesh import AviP2p

    async with (AviP2p.start(mesh_config()) as (a, ae), AviP2p.start(mesh_config()) as (b, be),
                AviP2p.start(mesh_config()) as (c, ce)):
        ha, hb, hc = a.handle(), b.handle(), c.handle()
        rb, rc, ra = MeshRx(hb, be), MeshRx(hc, ce), MeshRx(ha, ae)
        async with trio.open_nursery() as nursery:
            for r in (ra, rb, rc):
                nursery.start_soon(r.run)
            await ha.dial(hb.listen_addresses()[0])
            await hb.dial(hc.listen_addresses()[0])
            for h in (ha, hb, hc):
                await h.subscribe("bench")
            await trio.sleep(3.0)  # subscriptions spread, GossipSub forms its mesh (1 s heartbeat)
            for i in range(messages):
                await ha.publish("bench", struct.pack("!QI", now_us(), i))
                await trio.sleep(0.05)  # 20 msgs/s, well inside the promised rate
            with trio.move_on_after(3):
                while len(rb.messages) < messages or len(rc.messages) < messages:
                    await rc.changed.event.wait()
            nursery.cancel_scope.cancel()
    return Lat.of(rb.messages, messages), Lat.of(rc.messages, messages)


# --- two processes ----------------------------------------------------------------------------
async def read_line(stream: trio.abc.ReceiveStream, buf: bytearray, timeout: float = 20) -> str:
    with trio.fail_after(timeout):
        while b"\n" not in buf:
            data = await stream.receive_some(65536)
            if not data:
                raise RuntimeError("child ended early")
            buf += data
    line, _, rest = bytes(buf).partition(b"\n")
    buf[:] = rest
    return line.decode()


async def two_process(kind: str, streams: int, frames: int) -> Lat:
    """The receiver in a child process (`--child KIND-rx`), the sender here."""
    proc = await trio.lowlevel.open_process(
        [sys.executable, __file__, "--child", f"{kind}-rx", "--streams", str(streams)],
        stdout=subprocess.PIPE)
    buf = bytearray()
    try:
        assert proc.stdout is not None
        addr = (await read_line(proc.stdout, buf)).split(" ", 1)[1]
        if kind == "tcp":
            socks = [await trio.open_tcp_stream("127.0.0.1", int(addr)) for _ in range(streams)]
            async with trio.open_nursery() as tx:
                for s in socks:
                    async def send(_: int, s: trio.SocketStream = s) -> None:
                        await s.send_all(frame_bytes(now_us()))
                    tx.start_soon(paced, frames, send)
            for s in socks:
                await s.aclose()
        else:
            from agent.mesh import AviP2p

            async with AviP2p.start(mesh_config()) as (a, a_events):
                ha = a.handle()
                mtx = MeshTx(a_events)
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(mtx.run)
                    peer = await ha.dial(addr)
                    sids = await open_mesh_streams(ha, mtx, peer, streams)
                    await send_paced_mesh(ha, sids, frames)
                    await trio.sleep(0.2)
                    for sid in sids:
                        await ha.close_audio_stream(sid)
                    nursery.cancel_scope.cancel()
        result = json.loads(await read_line(proc.stdout, buf, timeout=30))
    finally:
        if proc.returncode is None:
            proc.kill()
        await proc.wait()
    return Lat.of([x for ps in result for x in ps[WARMUP_FRAMES:]], (frames - WARMUP_FRAMES) * streams)


async def child_tcp_rx(streams: int) -> None:
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    print(f"listening: {listeners[0].socket.getsockname()[1]}", flush=True)
    per_stream: list[list[int]] = []
    async with trio.open_nursery() as nursery:
        async with trio.open_nursery() as readers:
            for _ in range(streams):
                stream = await listeners[0].accept()
                per_stream.append([])
                readers.start_soon(tcp_receiver, stream, per_stream[-1])
        nursery.cancel_scope.cancel()
    print(json.dumps(per_stream), flush=True)


async def child_mesh_rx(streams: int) -> None:
    from agent.mesh import AviP2p

    async with AviP2p.start(mesh_config()) as (b, b_events):
        hb = b.handle()
        rx = MeshRx(hb, b_events)
        print(f"listening: {hb.listen_addresses()[0]}", flush=True)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(rx.run)
            with trio.fail_after(600):
                while len(rx.closed) < streams:
                    await rx.changed.event.wait()
            nursery.cancel_scope.cancel()
    print(json.dumps([rx.lat[s] for s in sorted(rx.closed)]), flush=True)


async def child_idle(kind: str) -> None:
    if kind == "node":
        from agent.mesh import AviP2p, AviP2pConfig

        async with AviP2p.start(AviP2pConfig(listen_host="127.0.0.1")) as (_node, events):
            print("ready", flush=True)
            async for _ in events:
                pass
    else:
        import libp2p  # noqa: F401  (the whole point: what importing it costs)

        print("ready", flush=True)
        await trio.sleep_forever()


# --- idle processes ---------------------------------------------------------------------------
def proc_figures(pid: int) -> tuple[float, float]:
    """(RSS in MB, CPU seconds so far, all threads) of a process, from /proc.

    CPU comes from each thread's schedstat (nanoseconds), not /proc/PID/stat's 10 ms ticks, which
    cannot tell 0 % from 0.2 % over a short window."""
    rss_kb = 0
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            rss_kb = int(line.split()[1])
    cpu_ns = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            cpu_ns += int((task / "schedstat").read_text().split()[0])
        except (FileNotFoundError, ProcessLookupError):
            continue  # a thread that ended between listing and reading
    return rss_kb / 1024, cpu_ns / 1e9


async def idle_figures(settle: float, window: float) -> dict[str, tuple[float, float]]:
    """{kind: (RSS MB, CPU % of one core)} for an idle node and a bare `import libp2p` process."""
    kinds = ("node", "bare")
    procs = {k: await trio.lowlevel.open_process([sys.executable, __file__, "--child", f"idle-{k}"],
                                                 stdout=subprocess.PIPE) for k in kinds}
    try:
        for p in procs.values():
            assert p.stdout is not None
            await read_line(p.stdout, bytearray(), timeout=30)
        await trio.sleep(settle)
        before = {k: proc_figures(p.pid) for k, p in procs.items()}
        t0 = time.monotonic()
        await trio.sleep(window)
        after = {k: proc_figures(p.pid) for k, p in procs.items()}
        wall = time.monotonic() - t0
        return {k: (after[k][0], (after[k][1] - before[k][1]) / wall * 100) for k in kinds}
    finally:
        for p in procs.values():
            p.kill()
            await p.wait()


# --- the table --------------------------------------------------------------------------------
def verdict(ok: bool) -> str:
    return "goal met" if ok else "goal MISSED"


async def bench(quick: bool, two_proc: bool) -> None:
    lat_s = 4.0 if quick else 15.0
    frames = int(lat_s / FRAME_S)
    flat_s = 2.0 if quick else 5.0
    messages = 40 if quick else 150
    print(f"bench/mesh.py ({'quick' if quick else 'full'}): {frames} frames of {FRAME} B every "
          f"{FRAME_S * 1000:.0f} ms per stream; {os.cpu_count()} CPUs; load {os.getloadavg()[0]:.2f}",
          flush=True)

    idle = await idle_figures(settle=5.0, window=5.0 if quick else 10.0)

    rows: dict[str, Lat] = {}
    for n in (1, 4):
        rows[f"tcp {n}"] = await tcp_latency(n, frames)
        rows[f"bare {n}"] = await bare_latency(n, frames)
        rows[f"mesh {n}"] = await mesh_latency(n, frames)
    if two_proc:
        for n in (1, 4):
            rows[f"tcp2 {n}"] = await two_process("tcp", n, frames)
            rows[f"mesh2 {n}"] = await two_process("mesh", n, frames)
    hop1, hop2 = await pubsub_latency(messages)
    flat = {"tcp": await tcp_flat(flat_s), "bare": await bare_flat(flat_s), "mesh": await mesh_flat(flat_s)}

    w = 58
    print()
    print(f"{'one-way latency, 640 B every 20 ms':<{w}} {'p50':>7} {'p99':>7} {'max':>7}  (ms)")
    names = {"tcp": "raw trio TCP pair (floor)", "bare": "bare py-libp2p stream (Noise+Yamux)",
             "mesh": "mesh node send_audio -> AudioData", "tcp2": "raw TCP, two processes (floor)",
             "mesh2": "mesh node, two processes"}
    for key, lat in rows.items():
        kind, n = key.split()
        print(f"  {names[kind] + f', {n} stream' + ('s' if n != '1' else ''):<{w - 2}} {lat.cells()}")
    print()
    print("added latency over the floor (goal: p50 <= 1.5 ms, p99 <= 5 ms)")
    pairs = [("mesh", "tcp", "1 process"), ("bare", "tcp", "bare stream, for reference")]
    if two_proc:
        pairs.append(("mesh2", "tcp2", "2 processes"))
    for kind, floor, label in pairs:
        for n in (1, 4):
            lat, base = rows[f"{kind} {n}"], rows[f"{floor} {n}"]
            d50, d99 = lat.p50 - base.p50, lat.p99 - base.p99
            line = f"  {kind}, {n} stream{'s' if n > 1 else ''} ({label})"
            tail = verdict(d50 <= GOAL_P50_MS and d99 <= GOAL_P99_MS) if kind != "bare" else "(reference)"
            print(f"{line:<{w}} +{d50:6.2f} +{d99:6.2f}          {tail}")
    print()
    print(f"{'publish -> deliver, 3 nodes in a line, 20 msgs/s':<{w}} {'p50':>7} {'p99':>7} {'max':>7}  (ms)")
    print(f"  {'one hop (A -> B)':<{w - 2}} {hop1.cells()}")
    print(f"  {'two hops (A -> B -> C)':<{w - 2}} {hop2.cells()}")
    print()
    print(f"{'flat out, one stream, 640 B frames, ' + str(WINDOW) + ' in flight':<{w}} {'frames/s':>9} {'CPU ms/frame':>13}")
    for kind in ("tcp", "bare", "mesh"):
        fps, cpu = flat[kind]
        print(f"  {names[kind].split(' (')[0].replace(' send_audio -> AudioData', ''):<{w - 2}} {fps:9.0f} {cpu:13.3f}")
    print(f"  (real time needs 50 frames/s per stream)")
    print()
    (rss_n, cpu_n), (rss_b, cpu_b) = idle["node"], idle["bare"]
    print(f"{'idle process (after 5 s settling)':<{w}} {'RSS MB':>9} {'CPU %':>7}")
    print(f"  {'bare `import libp2p`':<{w - 2}} {rss_b:9.1f} {cpu_b:7.2f}")
    print(f"  {'idle node (default config: mDNS + DHT on)':<{w - 2}} {rss_n:9.1f} {cpu_n:7.2f}")
    print(f"  {'node - bare (goal: <= 15 MB)':<{w - 2}} {rss_n - rss_b:+9.1f}         {verdict(rss_n - rss_b <= GOAL_RSS_MB)}")
    print(f"  {'node CPU (goal: < 2 % of one core)':<{w - 2}} {'':9} {cpu_n:7.2f} {verdict(cpu_n < GOAL_CPU_PCT)}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="short runs (about a minute), noisier figures")
    p.add_argument("--no-two-process", action="store_true", help="skip the two-process rows")
    p.add_argument("--child", help=argparse.SUPPRESS)
    p.add_argument("--streams", type=int, default=1, help=argparse.SUPPRESS)
    args = p.parse_args()
    import logging

    import libp2p  # noqa: F401  (importing it resets its logger, so quieten it afterwards)

    logging.basicConfig(level=logging.WARNING)
    logging.getLogger("libp2p").setLevel(logging.CRITICAL)  # failed redials while nodes stop
    if args.child == "tcp-rx":
        trio.run(child_tcp_rx, args.streams)
    elif args.child == "mesh-rx":
        trio.run(child_mesh_rx, args.streams)
    elif args.child in ("idle-node", "idle-bare"):
        try:
            trio.run(child_idle, args.child.split("-")[1])
        except KeyboardInterrupt:
            pass
    else:
        trio.run(bench, args.quick, not args.no_two_process)


if __name__ == "__main__":
    main()
