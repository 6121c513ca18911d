"""One audio stream over one libp2p stream: the thin trio layer around `AudioStreamConnection`.

A session owns two tasks: a reader (bytes -> protocol events -> node events, with a receive
timeout) and a writer (a bounded drop-oldest frame buffer -> bytes, with keepalives when idle and
a write timeout). Whichever ends first ends the other; `run()` returns the close reason.
"""

from __future__ import annotations

import logging
from collections import deque
from dataclasses import dataclass
from enum import Enum
import trio
from libp2p.abc import INetStream

from . import _audio_protocol as ap
from ._compat import STREAM_ERRORS, read_some
from ._config import AviP2pConfig
from ._eventqueue import EventQueue
from ._events import AudioData, AudioStreamAccepted, PeerId, StreamId
from ._frames import MAX_PAYLOAD, Codec

log = logging.getLogger("agent.mesh.audio")

READ_CHUNK = 64 * 1024


class Direction(str, Enum):
    OUTGOING = "out"
    INCOMING = "in"


@dataclass(frozen=True, slots=True)
class StreamStats:
    stream_id: StreamId
    peer_id: PeerId
    direction: str
    state: str
    frames_sent: int
    frames_received: int
    frames_dropped: int
    frames_lost: int
    bytes_in: int
    bytes_out: int


class _Closing(Exception):
    """Internal: ends a session's task group with a reason."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class AudioSession:
    """Needs only the node's settings and its event queue (where it puts `AudioData` and
    `AudioStreamAccepted`); the node runs it and emits `AudioStreamClosed` when `run()` returns."""

    def __init__(self, config: AviP2pConfig, events: EventQueue, stream: INetStream, peer_id: PeerId,
                 stream_id: StreamId, direction: Direction, conn: ap.AudioStreamConnection) -> None:
        self._config = config
        self._events = events
        self.stream = stream
        self.peer_id = peer_id
        self.stream_id = stream_id
        self.direction = direction
        self.conn = conn
        self._buffer: deque[tuple[bytes, int, int]] = deque()
        self._buffer_max = config.audio_send_buffer
        self._wake = trio.Event()
        self._write_lock = trio.Lock()
        self._scope = trio.CancelScope()
        self._close_reason: str | None = None
        self.frames_dropped = 0
        self.frames_sent = 0
        self.frames_received = 0
        self.bytes_in = 0
        self.bytes_out = 0
        self.done = trio.Event()

    # --- state -----------------------------------------------------------------------------
    @property
    def is_open(self) -> bool:
        return self.conn.state is ap.StreamState.OPEN

    @property
    def awaiting_accept(self) -> bool:
        return self.conn.state is ap.StreamState.REQUESTED

    def stats(self) -> StreamStats:
        s = self.conn.stats()
        return StreamStats(self.stream_id, self.peer_id, self.direction.value, self.conn.state.name.lower(),
                           self.frames_sent, self.frames_received, self.frames_dropped, s.lost,
                           self.bytes_in, self.bytes_out)

    # --- commands (called by the handle) ---------------------------------------------------
    def queue_frame(self, payload: bytes, timestamp_us: int, codec: int) -> None:
        """Queue a frame for sending; never waits. The oldest queued frame goes when full."""
        if len(payload) > MAX_PAYLOAD:
            from ._errors import LimitError
            raise LimitError(f"audio frame of {len(payload)} bytes exceeds the maximum of {MAX_PAYLOAD}")
        if len(self._buffer) >= self._buffer_max:
            self._buffer.popleft()
            self.frames_dropped += 1
        self._buffer.append((payload, timestamp_us, codec))
        self._wake.set()

    async def write_control(self, data: bytes) -> None:
        """Write a control frame, bounded by the stream timeout."""
        async with self._write_lock:
            with trio.move_on_after(self._config.stream_timeout_s) as cs:
                await self.stream.write(data)
                self.bytes_out += len(data)
            if cs.cancelled_caught:
                raise _Closing("timeout: write blocked")

    async def accept(self) -> None:
        await self._guarded_write(self.conn.accept())
        self._wake.set()

    async def close(self, reason: str) -> None:
        """Close from our side: CLOSE frame (best effort), then end the tasks with `reason`."""
        if self._close_reason is None and self.conn.state not in (ap.StreamState.CLOSED,):
            try:
                with trio.move_on_after(1.0):
                    await self._guarded_write(self.conn.close(reason))
            except Exception as exc:  # the stream may already be gone; the reason stays ours
                log.debug("close frame not sent: %s", exc)
        self._finish(reason)

    async def reject(self, reason: str) -> None:
        try:
            with trio.move_on_after(1.0):
                await self._guarded_write(self.conn.reject(reason))
        except Exception as exc:
            log.debug("reject frame not sent: %s", exc)
        self._finish(f"rejected locally: {reason}")

    async def _guarded_write(self, data: bytes) -> None:
        try:
            await self.write_control(data)
        except STREAM_ERRORS as exc:
            raise _Closing(f"peer-gone: {type(exc).__name__}") from None

    def _finish(self, reason: str) -> None:
        if self._close_reason is None:
            self._close_reason = reason
        self._scope.cancel()

    # --- tasks ------------------------------------------------------------------------------
    async def run(self) -> str:
        """Run until the stream ends; returns why. Never raises for network or protocol trouble."""
        try:
            with self._scope:
                try:
                    async with trio.open_nursery() as nursery:
                        nursery.start_soon(self._reader)
                        nursery.start_soon(self._writer)
                except* _Closing as group:
                    first = group.exceptions[0]
                    assert isinstance(first, _Closing)
                    self._finish(first.reason)
        finally:
            with trio.CancelScope(shield=True):
                await self._release()
            self.done.set()
        return self._close_reason or "closed"

    async def _release(self) -> None:
        with trio.move_on_after(1.0):
            try:
                if self._close_reason and self._close_reason.startswith(("protocol", "timeout")):
                    await self.stream.reset()
                else:
                    await self.stream.close()
            except Exception as exc:
                log.debug("stream release: %s", exc)

    async def _reader(self) -> None:
        cfg = self._config
        while True:
            timeout = cfg.request_timeout_s if self.awaiting_accept else cfg.stream_timeout_s
            with trio.move_on_after(timeout) as cs:
                try:
                    data = await read_some(self.stream, READ_CHUNK)
                except STREAM_ERRORS as exc:
                    raise _Closing(f"peer-gone: {type(exc).__name__}") from None
            if cs.cancelled_caught:
                if self.awaiting_accept:
                    await self._send_close_quietly("timeout: not accepted")
                    raise _Closing("timeout: not accepted")
                await self._send_close_quietly("timeout")
                raise _Closing(f"timeout: nothing received for {timeout:g} s")
            if not data:
                raise _Closing("peer-gone: stream ended")
            self.bytes_in += len(data)
            try:
                events = self.conn.receive_data(data)
            except ap.RemoteProtocolError as exc:
                await self._send_close_quietly(f"protocol: {exc.reason}")
                raise _Closing(f"protocol: {exc.reason}") from None
            for ev in events:
                await self._on_event(ev)

    async def _send_close_quietly(self, reason: str) -> None:
        try:
            with trio.move_on_after(0.5):
                async with self._write_lock:
                    await self.stream.write(self.conn.close(reason))
        except Exception as exc:
            log.debug("close frame not sent: %s", exc)

    async def _on_event(self, ev: object) -> None:
        match ev:
            case ap.DataReceived(sequence=seq, timestamp_us=ts, codec=codec, payload=payload):
                self.frames_received += 1
                self._events.put_audio(AudioData(self.peer_id, self.stream_id, payload, seq, ts, int(codec)))
            case ap.StreamAccepted():
                self._wake.set()
                await self._events.put(AudioStreamAccepted(self.peer_id, self.stream_id))
            case ap.StreamRejected(reason=reason):
                raise _Closing(f"rejected: {reason}")
            case ap.StreamClosed(reason=reason):
                raise _Closing(f"closed by peer: {reason}")
            case _:
                pass  # keepalives only prove liveness, which the read already did

    async def _writer(self) -> None:
        interval = self._config.keepalive_interval_s
        last_write = trio.current_time()
        while True:
            with trio.move_on_at(last_write + interval):
                await self._wake.wait()
            self._wake = trio.Event()
            if not self.is_open:
                if self.awaiting_accept and self.direction is Direction.OUTGOING:
                    continue  # frames stay queued until the peer accepts
                if self.conn.state is ap.StreamState.CLOSED:
                    return
                continue
            if self._buffer:
                chunks = []
                while self._buffer:
                    payload, ts, codec = self._buffer.popleft()
                    chunks.append(self.conn.data(payload, timestamp_us=ts, codec=Codec(codec)))
                try:
                    await self.write_control(b"".join(chunks))
                except STREAM_ERRORS as exc:
                    raise _Closing(f"peer-gone: {type(exc).__name__}") from None
                self.frames_sent += len(chunks)
                last_write = trio.current_time()
            elif trio.current_time() - last_write >= interval:
                try:
                    await self.write_control(self.conn.keepalive())
                except STREAM_ERRORS as exc:
                    raise _Closing(f"peer-gone: {type(exc).__name__}") from None
                last_write = trio.current_time()
