"""A mesh node as a process, for use inside a rig host: JSON config in, JSON lines out.

    ip netns exec <ns> python -m tests.netrig.meshnode '{"listen_host": "10.77.0.1", ...}'

argv[1] is a JSON object: `AviP2pConfig` fields, plus `auto_accept` (default true: accept
every incoming audio stream), `subscribe` (topics to join at start) and `log_level` (of the
`agent.mesh` logger, to stderr; default INFO). stdout carries one
JSON object per line and nothing else:

- every node event: `{"t": <monotonic s>, "event": "PeerConnected", "peer_id": ..., ...}`;
  `bytes` fields become their length, or their UTF-8 text for `Message.data`. `AudioData`
  is summarised: `stream_id`, `sequence`, `timestamp_us`, `arrival_us` (both on
  CLOCK_MONOTONIC, which every namespace of one machine shares), `size`, and `mark`: the
  first 4 bytes as a big-endian number (`send_frames` writes the frame's index there).
- a reply to every command: `{"t": ..., "reply": <cmd>, "id": <id>, "ok": true, ...}` or
  `"ok": false, "error": "..."`; `send_frames` replies when it starts and prints
  `{"event": "SendDone", "stream_id", "sent", "error"}` when it ends.

stdin takes one JSON command per line: `{"cmd": "subscribe", "topic": "t"}`,
`publish` (topic, data: text), `dial` (addr), `request_audio_stream` (peer),
`send_frames` (stream_id, seconds, size=640, first=0: index of the first frame,
tone_hz=0: 16 kHz s16le sine when set),
`close_audio_stream` (stream_id), `connected_peers`, `discover_peers`, `stats`, `quit`.
EOF on stdin also stops the node. Every command is bounded by the node's own timeouts.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import struct
import sys
import time
from typing import Any

import trio

from agent.mesh import AudioData, AudioStreamRequested, AviP2p, AviP2pConfig, AviP2pError, Event, now_us

EXTRA_KEYS = ("auto_accept", "subscribe", "log_level")
FRAME_S = 0.020
OUT_BUFFER = 1024  # lines waiting for stdout; the event pump waits when it is full


def describe(ev: Event) -> dict[str, Any]:
    """An event as a JSON-able dict (AudioData summarised, bytes as length or text)."""
    out: dict[str, Any] = {"t": time.monotonic(), "event": type(ev).__name__}
    if isinstance(ev, AudioData):
        out.update(peer_id=ev.peer_id, stream_id=ev.stream_id, sequence=ev.sequence,
                   timestamp_us=ev.timestamp_us, arrival_us=now_us(), size=len(ev.data),
                   mark=int.from_bytes(ev.data[:4], "big"))
        return out
    for f in dataclasses.fields(ev):
        v = getattr(ev, f.name)
        if isinstance(v, bytes):
            v = v.decode("utf-8", "replace")
        elif isinstance(v, tuple):
            v = list(v)
        out[f.name] = v
    return out


def tone_frame(index: int, size: int, hz: float, rate: int = 16000) -> bytes:
    """One frame of a 16-bit sine (continuous across frames), `size` bytes."""
    n = size // 2
    start = index * n
    return b"".join(struct.pack("<h", int(12000 * math.sin(2 * math.pi * hz * (start + i) / rate)))
                    for i in range(n))


class MeshNodeProcess:
    def __init__(self, config: AviP2pConfig, auto_accept: bool, topics: list[str]) -> None:
        self.config = config
        self.auto_accept = auto_accept
        self.topics = topics
        self.out_send, self.out_recv = trio.open_memory_channel[dict[str, Any]](OUT_BUFFER)

    async def emit(self, obj: dict[str, Any]) -> None:
        obj.setdefault("t", time.monotonic())
        await self.out_send.send(obj)

    async def write_stdout(self) -> None:
        out = trio.lowlevel.FdStream(sys.stdout.fileno())
        async for obj in self.out_recv:
            await out.send_all((json.dumps(obj) + "\n").encode())

    async def main(self) -> None:
        async with trio.open_nursery() as outer:
            outer.start_soon(self.write_stdout)
            try:
                async with AviP2p.start(self.config) as (node, events):
                    self.node, self.h = node, node.handle()
                    async with trio.open_nursery() as n:
                        n.start_soon(self.pump_events, events)
                        for topic in self.topics:
                            await self.h.subscribe(topic)
                        await self.read_commands(n)
                        n.cancel_scope.cancel()
            finally:
                with trio.CancelScope(shield=True), trio.move_on_after(2.0):
                    await self.emit({"event": "Exit"})
                self.out_send.close()

    async def pump_events(self, events: trio.MemoryReceiveChannel[Event]) -> None:
        async for ev in events:
            await self.emit(describe(ev))
            if self.auto_accept and isinstance(ev, AudioStreamRequested):
                try:
                    await self.h.accept_audio_stream(ev.stream_id)
                except AviP2pError as exc:
                    await self.emit({"event": "AcceptFailed", "stream_id": ev.stream_id, "error": str(exc)})

    async def read_commands(self, nursery: trio.Nursery) -> None:
        stdin = trio.lowlevel.FdStream(sys.stdin.fileno())
        buf = b""
        while True:
            chunk = await stdin.receive_some(65536)
            if not chunk:
                return
            buf += chunk
            while b"\n" in buf:
                line, buf = buf.split(b"\n", 1)
                if not line.strip():
                    continue
                try:
                    cmd = json.loads(line)
                except json.JSONDecodeError as exc:
                    await self.emit({"reply": None, "ok": False, "error": f"bad JSON: {exc}"})
                    continue
                if cmd.get("cmd") == "quit":
                    await self.emit({"reply": "quit", "id": cmd.get("id"), "ok": True})
                    return
                await self.run_command(cmd, nursery)

    async def run_command(self, cmd: dict[str, Any], nursery: trio.Nursery) -> None:
        name, h = cmd.get("cmd"), self.h
        reply: dict[str, Any] = {"reply": name, "id": cmd.get("id"), "ok": True}
        try:
            match name:
                case "subscribe":
                    await h.subscribe(cmd["topic"])
                case "publish":
                    await h.publish(cmd["topic"], cmd["data"].encode())
                case "dial":
                    reply["peer_id"] = await h.dial(cmd["addr"])
                case "request_audio_stream":
                    reply["stream_id"] = await h.request_audio_stream(cmd["peer"])
                case "send_frames":
                    nursery.start_soon(self.send_frames, int(cmd["stream_id"]), float(cmd["seconds"]),
                                       int(cmd.get("size", 640)), float(cmd.get("tone_hz", 0)),
                                       int(cmd.get("first", 0)))
                case "close_audio_stream":
                    await h.close_audio_stream(int(cmd["stream_id"]))
                case "connected_peers":
                    reply["peers"] = h.connected_peers()
                case "discover_peers":
                    await h.discover_peers()
                case "stats":
                    reply["stats"] = dataclasses.asdict(self.node.stats())
                case _:
                    raise ValueError(f"unknown command {name!r}")
        except (AviP2pError, KeyError, ValueError, TypeError) as exc:
            reply.update(ok=False, error=f"{type(exc).__name__}: {exc}")
        await self.emit(reply)

    async def send_frames(self, sid: int, seconds: float, size: int, tone_hz: float, first: int) -> None:
        """Queue one frame every 20 ms for `seconds` (capture time = now); stops at the first error."""
        count = max(1, round(seconds / FRAME_S))
        start = trio.current_time()
        sent, error = 0, None
        for i in range(first, first + count):
            await trio.sleep_until(start + (i - first) * FRAME_S)
            data = tone_frame(i, size, tone_hz) if tone_hz else i.to_bytes(4, "big") * (size // 4)
            try:
                await self.h.send_audio(sid, data, timestamp_us=now_us())
            except AviP2pError as exc:
                error = f"{type(exc).__name__}: {exc}"
                break
            sent += 1
        await self.emit({"event": "SendDone", "stream_id": sid, "sent": sent, "error": error})


def main(argv: list[str]) -> int:
    raw = json.loads(argv[1]) if len(argv) > 1 else {}
    extras = {k: raw.pop(k) for k in EXTRA_KEYS if k in raw}
    config = AviP2pConfig(**raw)
    logging.basicConfig(stream=sys.stderr, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    logging.getLogger("agent.mesh").setLevel(str(extras.get("log_level", "INFO")).upper())
    proc = MeshNodeProcess(config, bool(extras.get("auto_accept", True)), list(extras.get("subscribe", [])))
    trio.run(proc.main)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
