"""A tone over mesh audio streams: one side sends it, the other records or measures it.

    python bench/stream_tone.py --port 4001 --record heard.wav
    python bench/stream_tone.py --dial /ip4/127.0.0.1/tcp/4001/p2p/12D3KooW... \\
        --send-tone 440 --seconds 5

(This grew out of the audio_chat example, which is now the short version:
`python -m agent.mesh.examples.audio_chat`.) Options common to the examples (`--port`, `--dial`,
`--identity`, `--no-mdns`, ...) work here too.

Audio is 16 kHz mono S16LE in 20 ms frames (640 bytes), as the agent sends it. The sender opens
one stream to every connected peer once `--peers` are connected, sends at real-time pace, then
closes the streams. Every side accepts incoming streams and either writes what it hears to
`--record` (a WAV file; frames lost on the way become silence, so the timing stays right) or
prints per-stream figures each second. Both print a summary: frames sent / received / lost /
dropped, and the latency from each frame's capture timestamp to its arrival here, which is
meaningful because both processes read the same CLOCK_MONOTONIC on one machine.
"""

from __future__ import annotations

import argparse
import array
import math
import sys
import wave
from dataclasses import dataclass, field
from pathlib import Path

import trio

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the repository's agent, not bench/agent.py

from agent.measure import percentile  # noqa: E402
from agent.mesh import (AudioData, AudioStreamAccepted, AudioStreamClosed, AudioStreamRequested,  # noqa: E402
                        AviP2p, AviP2pError, AviP2pHandle, PeerConnected, PeerId, StreamId,
                        UnknownStreamError, now_us)
from agent.mesh.examples._common import (base_parser, listen_line, main_wrapper, make_config,  # noqa: E402
                                         out, run_until_signalled, setup_logging, short, stamp)

RATE = 16_000
FRAME_MS = 20
FRAME_SAMPLES = RATE * FRAME_MS // 1000  # 320 samples = 640 bytes
FRAME_S = FRAME_MS / 1000
MAX_LATENCY_SAMPLES = 100_000   # per stream: percentiles over the first ~33 minutes, max over all
MAX_GAP_FILL = 50               # a gap longer than 1 s is not padded with silence in the WAV
WAV_FLUSH_BYTES = 16_000        # write to disk in ~0.5 s batches, off the event loop


class Tone:
    """A phase-continuous sine, frame by frame, as S16LE bytes."""

    def __init__(self, hz: float, amplitude: float = 0.3) -> None:
        self._step = 2 * math.pi * hz / RATE
        self._amp = int(32767 * max(0.0, min(1.0, amplitude)))
        self._n = 0

    def frame(self) -> bytes:
        start = self._n
        self._n += FRAME_SAMPLES
        samples = array.array("h", (int(self._amp * math.sin(self._step * (start + i)))
                                    for i in range(FRAME_SAMPLES)))
        if sys.byteorder == "big":
            samples.byteswap()
        return samples.tobytes()


@dataclass
class Incoming:
    """What we know about one stream we receive."""

    peer: PeerId
    stream_id: StreamId
    record_to: Path | None
    received: int = 0
    lost: int = 0
    dropped: int = 0            # dropped by our node (application too slow), from node.stats()
    next_seq: int = 0
    latencies_us: list[int] = field(default_factory=list)
    max_latency_us: int = 0
    pending: bytearray = field(default_factory=bytearray)
    wav: wave.Wave_write | None = None
    frames_written: int = 0
    last_report: int = 0

    def on_data(self, ev: AudioData, arrived_us: int) -> None:
        if ev.sequence > self.next_seq and self.received:
            gap = ev.sequence - self.next_seq
            self.lost += gap
            if self.record_to is not None:
                self.pending += bytes(min(gap, MAX_GAP_FILL) * FRAME_SAMPLES * 2)
        self.next_seq = ev.sequence + 1
        self.received += 1
        latency = arrived_us - ev.timestamp_us
        self.max_latency_us = max(self.max_latency_us, latency)
        if len(self.latencies_us) < MAX_LATENCY_SAMPLES:
            self.latencies_us.append(latency)
        if self.record_to is not None:
            self.pending += ev.data

    def latency_text(self) -> str:
        lat = self.latencies_us
        if not lat:
            return "latency n/a"
        return (f"latency p50 {percentile(lat, 50) / 1000:.2f} ms p99 {percentile(lat, 99) / 1000:.2f} ms "
                f"max {self.max_latency_us / 1000:.2f} ms")

    async def flush(self, final: bool = False) -> None:
        """Write pending audio to the WAV file in a worker thread (file I/O blocks)."""
        if self.record_to is None or (not final and len(self.pending) < WAV_FLUSH_BYTES):
            return
        data, self.pending = bytes(self.pending), bytearray()

        def write() -> None:
            if self.wav is None:
                self.wav = wave.open(str(self.record_to), "wb")
                self.wav.setnchannels(1)
                self.wav.setsampwidth(2)
                self.wav.setframerate(RATE)
            self.wav.writeframes(data)
            if final:
                self.wav.close()

        await trio.to_thread.run_sync(write)
        self.frames_written += len(data) // 2


@dataclass
class Outgoing:
    peer: PeerId
    stream_id: StreamId
    accepted: trio.Event = field(default_factory=trio.Event)
    closed: trio.Event = field(default_factory=trio.Event)
    close_reason: str = ""
    sent: int = 0               # frames handed to send_audio
    node_sent: int = 0          # frames the node wrote, from node.stats()
    node_dropped: int = 0       # frames the node dropped before sending (peer too slow)


class Chat:
    def __init__(self, args: argparse.Namespace, node: AviP2p, handle: AviP2pHandle) -> None:
        self.args = args
        self.node = node
        self.handle = handle
        self.incoming: dict[StreamId, Incoming] = {}
        self.outgoing: dict[StreamId, Outgoing] = {}
        self.finished_in: list[tuple[Incoming, str]] = []
        self.peers_changed = trio.Event()
        self.done = trio.Event()
        self.recorded = 0

    # --- receiving ---------------------------------------------------------------------------
    def _record_path(self, sid: StreamId) -> Path | None:
        base: Path | None = self.args.record
        if base is None:
            return None
        self.recorded += 1
        if self.recorded == 1:
            return base
        return base.with_name(f"{base.stem}-{self.recorded}{base.suffix}")

    async def handle_events(self, events: trio.MemoryReceiveChannel) -> None:  # type: ignore[type-arg]
        async for ev in events:
            match ev:
                case PeerConnected(peer_id=p):
                    out(f"{stamp()}  connected {p}")
                    self.peers_changed.set()
                    self.peers_changed = trio.Event()
                case AudioStreamRequested(peer_id=p, stream_id=sid):
                    if self.args.reject:
                        await self.handle.reject_audio_stream(sid, "not listening")
                        out(f"{stamp()}  rejected stream {sid:x} from {short(p)}")
                        continue
                    self.incoming[sid] = Incoming(p, sid, self._record_path(sid))
                    await self.handle.accept_audio_stream(sid)
                    where = self.incoming[sid].record_to
                    out(f"{stamp()}  accepted stream {sid:x} from {short(p)}"
                        + (f", recording to {where}" if where else ""))
                case AudioData(stream_id=sid) if sid in self.incoming:
                    rx = self.incoming[sid]
                    rx.on_data(ev, now_us())
                    await rx.flush()
                case AudioStreamAccepted(stream_id=sid) if sid in self.outgoing:
                    self.outgoing[sid].accepted.set()
                case AudioStreamClosed(peer_id=p, stream_id=sid, reason=reason):
                    await self._closed(sid, reason)
                case _:
                    pass

    def snapshot_stats(self) -> None:
        """Copy the node's per-stream counters (a closed stream's vanish from `stats()`)."""
        for s in self.node.stats().streams:
            if s.stream_id in self.incoming:
                self.incoming[s.stream_id].dropped = s.frames_dropped
            elif s.stream_id in self.outgoing:
                tx = self.outgoing[s.stream_id]
                tx.node_sent, tx.node_dropped = s.frames_sent, s.frames_dropped

    async def _closed(self, sid: StreamId, reason: str) -> None:
        if sid in self.outgoing:
            tx = self.outgoing[sid]
            tx.close_reason = reason
            tx.accepted.set()  # a refusal also ends the wait for acceptance
            tx.closed.set()
            return
        rx = self.incoming.pop(sid, None)
        if rx is None:
            return
        await rx.flush(final=True)
        self.finished_in.append((rx, reason))
        out(self.rx_summary(rx, reason))
        if self.args.streams and len(self.finished_in) >= self.args.streams:
            self.done.set()

    def rx_summary(self, rx: Incoming, reason: str | None) -> str:
        rec = (f"; recorded {rx.frames_written / RATE:.2f} s to {rx.record_to}" if rx.record_to else "")
        end = f"; closed: {reason}" if reason is not None else "; still open"
        return (f"summary: received stream {rx.stream_id:x} from {short(rx.peer)}: {rx.received} frames "
                f"received, {rx.lost} lost, {rx.dropped} dropped; {rx.latency_text()}{rec}{end}")

    async def report(self) -> None:
        while True:
            await trio.sleep(1.0)
            self.snapshot_stats()
            if self.args.record is None:
                for rx in self.incoming.values():
                    got = rx.received - rx.last_report
                    rx.last_report = rx.received
                    out(f"{stamp()}  stream {rx.stream_id:x} from {short(rx.peer)}: {got} frames/s, "
                        f"total {rx.received}, lost {rx.lost}, dropped {rx.dropped}; {rx.latency_text()}")

    # --- sending -----------------------------------------------------------------------------
    async def wait_for_peers(self, count: int, timeout: float) -> list[PeerId]:
        with trio.move_on_after(timeout):
            while len(self.handle.connected_peers()) < count:
                await self.peers_changed.wait()
        return self.handle.connected_peers()

    async def send_tone(self, hz: float, seconds: float) -> None:
        args = self.args
        peers = await self.wait_for_peers(args.peers, args.wait)
        if len(peers) < args.peers:
            out(f"{stamp()}  only {len(peers)} of {args.peers} peers connected after {args.wait:g} s")
            if not peers:
                return
        for p in peers:
            try:
                sid = await self.handle.request_audio_stream(p)
            except AviP2pError as exc:
                out(f"{stamp()}  cannot open a stream to {short(p)}: {exc}")
                continue
            self.outgoing[sid] = Outgoing(p, sid)
            out(f"{stamp()}  requested stream {sid:x} to {short(p)}")
        with trio.move_on_after(10.0):
            for tx in self.outgoing.values():
                await tx.accepted.wait()
        live = [tx for tx in self.outgoing.values() if tx.accepted.is_set() and not tx.closed.is_set()]
        for tx in self.outgoing.values():
            if tx not in live:
                out(f"{stamp()}  stream {tx.stream_id:x} to {short(tx.peer)} not accepted: "
                    f"{tx.close_reason or 'no answer'}")
        if not live:
            return
        tone = Tone(hz, args.amplitude)
        frames = int(round(seconds / FRAME_S))
        out(f"{stamp()}  sending {hz:g} Hz for {seconds:g} s ({frames} frames) on {len(live)} stream(s)")
        start = trio.current_time()
        for i in range(frames):
            await trio.sleep_until(start + i * FRAME_S)
            data = tone.frame()
            ts = now_us()  # the "capture" time of this frame
            for tx in live:
                if tx.closed.is_set():
                    continue
                try:
                    await self.handle.send_audio(tx.stream_id, data, timestamp_us=ts)
                    tx.sent += 1
                except UnknownStreamError:
                    tx.closed.set()
            if all(tx.closed.is_set() for tx in live):
                out(f"{stamp()}  every stream closed; stopping early")
                break
        await trio.sleep(0.2)  # let the last frames leave before the close frame
        self.snapshot_stats()
        for tx in live:
            if not tx.closed.is_set():
                try:
                    await self.handle.close_audio_stream(tx.stream_id)
                except AviP2pError as exc:
                    out(f"{stamp()}  close of {tx.stream_id:x}: {exc}")

    def tx_summaries(self) -> list[str]:
        return [f"summary: sent stream {tx.stream_id:x} to {short(tx.peer)}: {tx.sent} frames sent, "
                f"{tx.node_sent} written by the node, {tx.node_dropped} dropped"
                + (f"; closed: {tx.close_reason}" if tx.close_reason else "")
                for tx in self.outgoing.values()]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = base_parser("stream_tone", "Send a tone over mesh audio streams, or record/measure what arrives.")
    p.prog = "python bench/stream_tone.py"
    p.add_argument("--send-tone", type=float, metavar="HZ", help="send a sine tone of this frequency")
    p.add_argument("--seconds", type=float, default=3.0, help="how long to send (default 3)")
    p.add_argument("--amplitude", type=float, default=0.3, help="tone amplitude, 0..1 (default 0.3)")
    p.add_argument("--peers", type=int, default=1, help="send once this many peers are connected (default 1)")
    p.add_argument("--wait", type=float, default=30.0, help="seconds to wait for --peers (default 30)")
    p.add_argument("--record", type=Path, metavar="OUT.wav",
                   help="write received audio to this WAV file (more streams: OUT-2.wav, ...)")
    p.add_argument("--reject", action="store_true", help="reject incoming streams instead of accepting")
    p.add_argument("--streams", type=int, default=0,
                   help="exit after receiving this many streams to the end (0 = run until Ctrl-C)")
    args = p.parse_args(argv)
    if args.send_tone is not None and not 0 < args.send_tone < RATE / 2:
        p.error(f"--send-tone must be between 0 and {RATE // 2} Hz")
    if args.seconds <= 0:
        p.error("--seconds must be positive")
    return args


async def run(args: argparse.Namespace) -> int:
    config = make_config(args)
    chat: Chat | None = None

    async def body() -> None:
        nonlocal chat
        async with AviP2p.start(config) as (node, events):
            handle = node.handle()
            out(listen_line(handle.listen_addresses()))
            out(f"local peer id: {handle.local_peer_id}")
            chat = Chat(args, node, handle)
            async with trio.open_nursery() as nursery:
                nursery.start_soon(chat.handle_events, events)
                nursery.start_soon(chat.report)
                if args.send_tone is not None:
                    await chat.send_tone(args.send_tone, args.seconds)
                    await trio.sleep(0.3)  # the close's echo arrives as AudioStreamClosed
                    if not args.streams:
                        chat.done.set()
                await chat.done.wait()
                nursery.cancel_scope.cancel()
            for rx in list(chat.incoming.values()):  # streams still open when we stop
                await rx.flush(final=True)

    try:
        stopped_by = await run_until_signalled(body)
    except AviP2pError as exc:
        out(f"error: {exc}")
        return 1
    if chat is not None:
        for line in chat.tx_summaries():
            out(line)
        for rx in chat.incoming.values():
            out(chat.rx_summary(rx, None))
        got = sum(rx.received for rx, _ in chat.finished_in) + sum(rx.received for rx in chat.incoming.values())
        out(f"summary: stopped by {stopped_by}; streams sent {len(chat.outgoing)}, streams received "
            f"{len(chat.finished_in) + len(chat.incoming)}, frames sent "
            f"{sum(tx.sent for tx in chat.outgoing.values())}, frames received {got}")
    return 0


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    setup_logging(args.verbose)
    main_wrapper(lambda: trio.run(run, args))


if __name__ == "__main__":
    main()
