"""The `/avi/audio/1.0.0` stream state machine, sans-I/O (in the style of h11).

One `AudioStreamConnection` per libp2p stream. The methods that send (`request`, `accept`,
`reject`, `data`, `keepalive`, `close`) return the bytes to write; `receive_data` takes the
bytes read and returns events. Nothing here does I/O or keeps time: the caller writes the
bytes, and runs the keepalive and timeout clocks (`KEEPALIVE_INTERVAL`, `STREAM_TIMEOUT`).
See PROTOCOL.md for the rules this enforces.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum, StrEnum

from agent.mesh.frames import (
    MAX_PAYLOAD,
    Codec,
    Frame,
    FrameDecoder,
    FrameEncodeError,
    FrameType,
    LocalProtocolError,
    RemoteProtocolError,
    StreamParams,
    encode_frame,
    encode_params,
)

__all__ = [
    "KEEPALIVE_INTERVAL", "STREAM_TIMEOUT", "CloseReason", "protocol_reason", "Role",
    "StreamState", "AudioStreamConnection", "ConnectionStats", "StreamRequested", "StreamAccepted",
    "StreamRejected", "DataReceived", "KeepaliveReceived", "StreamClosed", "Event",
    "LocalProtocolError", "RemoteProtocolError", "StreamParams", "Codec",
]

KEEPALIVE_INTERVAL = 1.0
"""Seconds without sending any frame after which a side sends KEEPALIVE."""

STREAM_TIMEOUT = 4.0
"""Seconds without receiving any frame after which a side closes the stream with "timeout"."""

_MAX_SEQUENCE = 0xFFFF_FFFF


class CloseReason(StrEnum):
    """The reasons this implementation sends in REJECT/CLOSE. The wire accepts any UTF-8 text."""

    NORMAL = "normal"
    TIMEOUT = "timeout"
    LIMIT = "limit"
    NOT_ALLOWED = "not-allowed"
    PEER_GONE = "peer-gone"
    SHUTDOWN = "shutdown"
    DECLINED = "declined"


def protocol_reason(detail: str) -> str:
    """The close reason for a protocol violation: ``"protocol: <detail>"``."""
    return f"protocol: {detail}"


class Role(Enum):
    INITIATOR = "initiator"
    RESPONDER = "responder"


class StreamState(Enum):
    IDLE = "idle"
    REQUESTED = "requested"
    OPEN = "open"
    REJECTED = "rejected"
    CLOSED = "closed"


_FINISHED = (StreamState.REJECTED, StreamState.CLOSED)


# --- events ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class StreamRequested:
    stream_id: int
    params: StreamParams


@dataclass(frozen=True, slots=True)
class StreamAccepted:
    pass


@dataclass(frozen=True, slots=True)
class StreamRejected:
    reason: str


@dataclass(frozen=True, slots=True)
class DataReceived:
    sequence: int
    timestamp_us: int
    codec: Codec
    payload: bytes


@dataclass(frozen=True, slots=True)
class KeepaliveReceived:
    pass


@dataclass(frozen=True, slots=True)
class StreamClosed:
    reason: str


Event = (StreamRequested | StreamAccepted | StreamRejected | DataReceived | KeepaliveReceived
         | StreamClosed)


@dataclass(frozen=True, slots=True)
class ConnectionStats:
    """Counters of one `AudioStreamConnection` (the node's per-stream snapshot, with the frames
    its buffers dropped, is `agent.mesh.StreamStats`). frames_* count DATA frames; bytes_* count
    every byte on the wire.

    `duplicates` are DATA frames dropped because their sequence was not newer than the last one
    delivered; `lost` is the sum of the sequence gaps (frames the sender dropped or never sent).
    """

    frames_sent: int = 0
    frames_received: int = 0
    duplicates: int = 0
    lost: int = 0
    bytes_in: int = 0
    bytes_out: int = 0


# --- the connection -------------------------------------------------------------------------


class AudioStreamConnection:
    """The protocol state of one audio stream, seen from one side.

    States: IDLE -> REQUESTED -> OPEN -> CLOSED, or REQUESTED -> REJECTED. REJECTED and CLOSED
    are final; bytes received in a final state are discarded (frames may cross a CLOSE in
    flight). A `RemoteProtocolError` from `receive_data` moves to CLOSED; the caller then sends
    `close(exc.close_reason)` to tell the peer why, and closes the libp2p stream.
    """

    def __init__(self, role: Role) -> None:
        self.role = role
        self._state = StreamState.IDLE
        self._stream_id: int | None = None
        self._params: StreamParams | None = None
        self._decoder = FrameDecoder()
        self._sent_final = False      # we sent REJECT or CLOSE: nothing more to send
        self._next_send_seq = 0
        self._next_recv_seq = 0
        self._frames_sent = 0
        self._frames_received = 0
        self._duplicates = 0
        self._lost = 0
        self._bytes_in = 0
        self._bytes_out = 0
        self._close_reason: str | None = None

    # -- read-only state --

    @property
    def state(self) -> StreamState:
        return self._state

    @property
    def stream_id(self) -> int | None:
        """The stream's id: set by `request()` on the initiator, by the REQUEST on the responder."""
        return self._stream_id

    @property
    def params(self) -> StreamParams | None:
        """The parameters of the REQUEST (sent or received); None before it."""
        return self._params

    @property
    def close_reason(self) -> str | None:
        """Why the stream ended (reason sent or received, or the protocol error), once it has."""
        return self._close_reason

    def stats(self) -> ConnectionStats:
        return ConnectionStats(self._frames_sent, self._frames_received, self._duplicates,
                           self._lost, self._bytes_in, self._bytes_out)

    # -- sending --

    def _require(self, action: str, *, role: Role | None = None,
                 states: tuple[StreamState, ...]) -> None:
        if role is not None and self.role is not role:
            raise LocalProtocolError(f"{action}() is for the {role.value}, this is the "
                                     f"{self.role.value}")
        if self._state not in states:
            raise LocalProtocolError(f"{action}() in state {self._state.name}")

    def _send(self, frame: Frame) -> bytes:
        wire = encode_frame(frame)
        self._bytes_out += len(wire)
        return wire

    def _control(self, ftype: FrameType, payload: bytes = b"") -> Frame:
        return Frame(ftype, self._stream_id or 0, payload=payload)

    def request(self, stream_id: int, params: StreamParams | None = None) -> bytes:
        """Initiator, IDLE -> REQUESTED: ask for stream `stream_id` with `params`."""
        self._require("request", role=Role.INITIATOR, states=(StreamState.IDLE,))
        params = params if params is not None else StreamParams()
        try:
            codec = Codec(params.codec)
        except ValueError:
            raise FrameEncodeError(f"unknown codec {params.codec!r}") from None
        wire = self._send(Frame(FrameType.REQUEST, stream_id, codec=codec,
                                payload=encode_params(params)))
        self._stream_id = stream_id
        self._params = params
        self._state = StreamState.REQUESTED
        return wire

    def accept(self) -> bytes:
        """Responder, REQUESTED -> OPEN."""
        self._require("accept", role=Role.RESPONDER, states=(StreamState.REQUESTED,))
        wire = self._send(self._control(FrameType.ACCEPT))
        self._state = StreamState.OPEN
        return wire

    def reject(self, reason: str) -> bytes:
        """Responder, REQUESTED -> REJECTED, telling the initiator `reason`."""
        self._require("reject", role=Role.RESPONDER, states=(StreamState.REQUESTED,))
        wire = self._send(self._control(FrameType.REJECT, _reason_bytes(reason)))
        self._state = StreamState.REJECTED
        self._sent_final = True
        self._close_reason = str(reason)
        return wire

    def data(self, payload: bytes, timestamp_us: int, codec: Codec | None = None) -> bytes:
        """Either side, OPEN: one DATA frame with the next sequence number.

        `timestamp_us` is the capture time on the sender's CLOCK_MONOTONIC; `codec` defaults to
        the codec of the REQUEST.
        """
        self._require("data", states=(StreamState.OPEN,))
        if len(payload) > MAX_PAYLOAD:
            raise FrameEncodeError(f"payload of {len(payload)} bytes exceeds {MAX_PAYLOAD}")
        if self._next_send_seq > _MAX_SEQUENCE:
            raise LocalProtocolError("sequence numbers exhausted: open a new stream")
        if codec is None:
            codec = self._params.codec if self._params is not None else Codec.PCM_S16LE
        wire = self._send(Frame(FrameType.DATA, self._stream_id or 0, self._next_send_seq,
                                timestamp_us, codec, bytes(payload)))
        self._next_send_seq += 1
        self._frames_sent += 1
        return wire

    def keepalive(self) -> bytes:
        """Either side, REQUESTED or OPEN: proves we are alive when nothing else was sent."""
        self._require("keepalive", states=(StreamState.REQUESTED, StreamState.OPEN))
        return self._send(self._control(FrameType.KEEPALIVE))

    def close(self, reason: str = CloseReason.NORMAL) -> bytes:
        """Either side, once the stream has left IDLE and until we sent REJECT or CLOSE.

        Also legal after the stream ended from the peer's side or by a `RemoteProtocolError`:
        that is how the peer learns why. The state becomes (or stays) CLOSED.
        """
        if self._state is StreamState.IDLE:
            raise LocalProtocolError("close() in state IDLE: nothing to close")
        if self._sent_final:
            raise LocalProtocolError(f"close() after this side already ended the stream "
                                     f"(state {self._state.name})")
        wire = self._send(self._control(FrameType.CLOSE, _reason_bytes(reason)))
        self._sent_final = True
        if self._state not in _FINISHED:
            self._state = StreamState.CLOSED
            self._close_reason = str(reason)
        return wire

    # -- receiving --

    def receive_data(self, data: bytes) -> list[Event]:
        """Feed bytes read from the stream; return the events they complete.

        Raises `RemoteProtocolError` (a `FrameError` for undecodable bytes) if the peer broke
        the protocol; the state is then CLOSED and the chunk's events are discarded.
        """
        self._bytes_in += len(data)
        if self._state in _FINISHED:
            return []
        try:
            events: list[Event] = []
            for frame in self._decoder.feed(data):
                event = self._handle(frame)
                if event is not None:
                    events.append(event)
                if self._state in _FINISHED:
                    break  # anything after the peer's CLOSE/REJECT is discarded
            return events
        except RemoteProtocolError as exc:
            self._state = StreamState.CLOSED
            self._close_reason = exc.close_reason
            raise

    def _handle(self, frame: Frame) -> Event | None:
        ftype, state = frame.type, self._state
        if state is StreamState.IDLE:
            if self.role is Role.RESPONDER and ftype is FrameType.REQUEST:
                self._stream_id = frame.stream_id
                self._params = frame.params
                self._state = StreamState.REQUESTED
                return StreamRequested(frame.stream_id, self._params)
            raise _unexpected(frame, state)
        if frame.stream_id != self._stream_id:
            raise RemoteProtocolError("wrong-stream-id", f"{ftype.name} for stream "
                                      f"{frame.stream_id} on stream {self._stream_id}")
        if ftype is FrameType.KEEPALIVE:
            return KeepaliveReceived()
        if ftype is FrameType.CLOSE:
            self._state = StreamState.CLOSED
            self._close_reason = frame.reason
            return StreamClosed(frame.reason)
        if state is StreamState.REQUESTED and self.role is Role.INITIATOR:
            if ftype is FrameType.ACCEPT:
                self._state = StreamState.OPEN
                return StreamAccepted()
            if ftype is FrameType.REJECT:
                self._state = StreamState.REJECTED
                self._close_reason = frame.reason
                return StreamRejected(frame.reason)
        if state is StreamState.OPEN and ftype is FrameType.DATA:
            return self._on_data(frame)
        raise _unexpected(frame, state)

    def _on_data(self, frame: Frame) -> DataReceived | None:
        if frame.sequence < self._next_recv_seq:
            self._duplicates += 1
            return None
        self._lost += frame.sequence - self._next_recv_seq
        self._next_recv_seq = frame.sequence + 1
        self._frames_received += 1
        return DataReceived(frame.sequence, frame.timestamp_us, frame.codec, frame.payload)


def _unexpected(frame: Frame, state: StreamState) -> RemoteProtocolError:
    return RemoteProtocolError(f"unexpected-{frame.type.name.lower()}",
                               f"{frame.type.name} in state {state.name}")


def _reason_bytes(reason: str) -> bytes:
    if not isinstance(reason, str):
        raise FrameEncodeError(f"reason must be str, got {type(reason).__name__}")
    return reason.encode("utf-8")
