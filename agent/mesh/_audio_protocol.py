"""The `/avi/audio/1.0.0` stream state machine, sans-I/O (in the style of h11).

One `AudioStreamConnection` per libp2p stream. The methods that send (`request`, `accept`,
`reject`, `data`, `keepalive`, `close`) return the bytes to write; `receive_data` takes the
bytes read and returns events. Which frame each side may send in which state, and the state
after it, is one table, `TRANSITIONS`, consulted by both directions. Nothing here does I/O or
keeps time: the caller writes the bytes, and runs the keepalive and timeout clocks
(`KEEPALIVE_INTERVAL`, `STREAM_TIMEOUT`). See PROTOCOL.md for the rules this enforces.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum, StrEnum
from typing import assert_never

from agent.mesh._frames import (
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
    "StreamState", "TRANSITIONS", "AudioStreamConnection", "ConnectionStats", "StreamRequested", "StreamAccepted",
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

    @property
    def peer(self) -> Role:
        """The role of the other side of the stream."""
        return Role.RESPONDER if self is Role.INITIATOR else Role.INITIATOR


class StreamState(Enum):
    IDLE = "idle"
    REQUESTED = "requested"
    OPEN = "open"
    REJECTED = "rejected"
    CLOSED = "closed"


_FINISHED = (StreamState.REJECTED, StreamState.CLOSED)

_I, _R = Role.INITIATOR, Role.RESPONDER
_IDLE, _REQUESTED, _OPEN = StreamState.IDLE, StreamState.REQUESTED, StreamState.OPEN
_REJECTED, _CLOSED = StreamState.REJECTED, StreamState.CLOSED

TRANSITIONS: dict[tuple[Role, StreamState, FrameType], StreamState] = {
    # (role of the side that SENDS the frame, state, frame type) -> the state after it.
    # Both sides consult the same table: the sender before it writes the frame, the receiver when
    # the frame arrives (looking up the peer's role). A triple that is missing is illegal: a
    # `LocalProtocolError` for the sender, a `RemoteProtocolError` "unexpected-<type>" for the
    # receiver. Received frames are discarded in the final states (REJECTED, CLOSED), so the rows
    # that start there are only for sending: answering the peer's CLOSE or REJECT (or a protocol
    # error) with our own CLOSE. A side that has sent REJECT or CLOSE sends nothing more.
    (_I, _IDLE, FrameType.REQUEST): _REQUESTED,
    (_I, _REQUESTED, FrameType.KEEPALIVE): _REQUESTED,   # still waiting for the answer
    (_I, _REQUESTED, FrameType.CLOSE): _CLOSED,          # the initiator gives up
    (_R, _REQUESTED, FrameType.ACCEPT): _OPEN,
    (_R, _REQUESTED, FrameType.REJECT): _REJECTED,
    (_R, _REQUESTED, FrameType.KEEPALIVE): _REQUESTED,   # the application is still deciding
    (_R, _REQUESTED, FrameType.CLOSE): _CLOSED,
    (_I, _OPEN, FrameType.DATA): _OPEN,
    (_R, _OPEN, FrameType.DATA): _OPEN,
    (_I, _OPEN, FrameType.KEEPALIVE): _OPEN,
    (_R, _OPEN, FrameType.KEEPALIVE): _OPEN,
    (_I, _OPEN, FrameType.CLOSE): _CLOSED,
    (_R, _OPEN, FrameType.CLOSE): _CLOSED,
    (_I, _CLOSED, FrameType.CLOSE): _CLOSED,             # send-only rows (see above)
    (_R, _CLOSED, FrameType.CLOSE): _CLOSED,
    (_I, _REJECTED, FrameType.CLOSE): _REJECTED,
}


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

    States: IDLE -> REQUESTED -> OPEN -> CLOSED, or REQUESTED -> REJECTED; every step, sent or
    received, is a row of `TRANSITIONS`. REJECTED and CLOSED are final; bytes received in a final
    state are discarded (frames may cross a CLOSE in flight). A `RemoteProtocolError` from `receive_data` moves to CLOSED; the caller then sends
    `close(exc.close_reason)` to tell the peer why, and closes the libp2p stream.
    """

    def __init__(self, role: Role, *, contexts: bool = False) -> None:
        self.role = role
        self.contexts = contexts  # a /avi/audio/1.1.0 stream: a REQUEST may carry a context
        self._state = StreamState.IDLE
        self._stream_id: int | None = None
        self._params: StreamParams | None = None
        self._decoder = FrameDecoder(contexts=contexts)
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

    def _next_state_sending(self, action: str, ftype: FrameType) -> StreamState:
        """The state after this side sends `ftype` (by calling `action()`), from `TRANSITIONS`;
        raises `LocalProtocolError` naming the state and the frame type if it may not."""
        after = None if self._sent_final else TRANSITIONS.get((self.role, self._state, ftype))
        if after is not None:
            return after
        why = (f"{action}() sends {ftype.name}: not allowed for the {self.role.value} in state "
               f"{self._state.name}")
        if self._sent_final:
            why += " (this side already ended the stream)"
        elif not any(r is self.role and t is ftype for r, _, t in TRANSITIONS):
            why += f" (only the {self.role.peer.value} sends {ftype.name})"
        raise LocalProtocolError(why)

    def _send(self, frame: Frame) -> bytes:
        wire = encode_frame(frame, contexts=self.contexts)
        self._bytes_out += len(wire)
        return wire

    def _control(self, ftype: FrameType, payload: bytes = b"") -> Frame:
        return Frame(ftype, self._stream_id or 0, payload=payload)

    def request(self, stream_id: int, params: StreamParams | None = None) -> bytes:
        """Initiator, IDLE -> REQUESTED: ask for stream `stream_id` with `params` (a context only
        on a 1.1.0 stream: ``contexts``)."""
        after = self._next_state_sending("request", FrameType.REQUEST)
        params = params if params is not None else StreamParams()
        if params.context and not self.contexts:
            raise LocalProtocolError("a REQUEST context needs a /avi/audio/1.1.0 stream")
        try:
            codec = Codec(params.codec)
        except ValueError:
            raise FrameEncodeError(f"unknown codec {params.codec!r}") from None
        wire = self._send(Frame(FrameType.REQUEST, stream_id, codec=codec,
                                payload=encode_params(params)))
        self._stream_id = stream_id
        self._params = params
        self._state = after
        return wire

    def accept(self) -> bytes:
        """Responder, REQUESTED -> OPEN."""
        after = self._next_state_sending("accept", FrameType.ACCEPT)
        wire = self._send(self._control(FrameType.ACCEPT))
        self._state = after
        return wire

    def reject(self, reason: str) -> bytes:
        """Responder, REQUESTED -> REJECTED, telling the initiator `reason`."""
        after = self._next_state_sending("reject", FrameType.REJECT)
        wire = self._send(self._control(FrameType.REJECT, _reason_bytes(reason)))
        self._state = after
        self._sent_final = True
        self._close_reason = str(reason)
        return wire

    def data(self, payload: bytes, timestamp_us: int, codec: Codec | None = None) -> bytes:
        """Either side, OPEN: one DATA frame with the next sequence number.

        `timestamp_us` is the capture time on the sender's CLOCK_MONOTONIC; `codec` defaults to
        the codec of the REQUEST.
        """
        after = self._next_state_sending("data", FrameType.DATA)
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
        self._state = after
        return wire

    def keepalive(self) -> bytes:
        """Either side, REQUESTED or OPEN: proves we are alive when nothing else was sent."""
        after = self._next_state_sending("keepalive", FrameType.KEEPALIVE)
        wire = self._send(self._control(FrameType.KEEPALIVE))
        self._state = after
        return wire

    def close(self, reason: str = CloseReason.NORMAL) -> bytes:
        """Either side, once the stream has left IDLE and until we sent REJECT or CLOSE.

        Also legal after the stream ended from the peer's side or by a `RemoteProtocolError`:
        that is how the peer learns why. The state becomes CLOSED (a final state stays).
        """
        after = self._next_state_sending("close", FrameType.CLOSE)
        wire = self._send(self._control(FrameType.CLOSE, _reason_bytes(reason)))
        self._sent_final = True
        if self._state not in _FINISHED:
            self._close_reason = str(reason)
        self._state = after
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
        ftype, state, sender = frame.type, self._state, self.role.peer
        if state is not StreamState.IDLE and frame.stream_id != self._stream_id:
            raise RemoteProtocolError("wrong-stream-id", f"{ftype.name} for stream "
                                      f"{frame.stream_id} on stream {self._stream_id}")
        after = TRANSITIONS.get((sender, state, ftype))
        if after is None:
            raise RemoteProtocolError(f"unexpected-{ftype.name.lower()}",
                                      f"{ftype.name} from the {sender.value} in state {state.name}")
        event = self._apply(frame)
        self._state = after
        return event

    def _apply(self, frame: Frame) -> Event | None:
        """What a received frame that `TRANSITIONS` allows records, and its event."""
        match frame.type:
            case FrameType.REQUEST:
                self._stream_id = frame.stream_id
                self._params = frame.params
                return StreamRequested(frame.stream_id, self._params)
            case FrameType.ACCEPT:
                return StreamAccepted()
            case FrameType.REJECT:
                self._close_reason = frame.reason
                return StreamRejected(frame.reason)
            case FrameType.DATA:
                return self._on_data(frame)
            case FrameType.KEEPALIVE:
                return KeepaliveReceived()
            case FrameType.CLOSE:
                self._close_reason = frame.reason
                return StreamClosed(frame.reason)
            case _:
                assert_never(frame.type)

    def _on_data(self, frame: Frame) -> DataReceived | None:
        if frame.sequence < self._next_recv_seq:
            self._duplicates += 1
            return None
        self._lost += frame.sequence - self._next_recv_seq
        self._next_recv_seq = frame.sequence + 1
        self._frames_received += 1
        return DataReceived(frame.sequence, frame.timestamp_us, frame.codec, frame.payload)


def _reason_bytes(reason: str) -> bytes:
    if not isinstance(reason, str):
        raise FrameEncodeError(f"reason must be str, got {type(reason).__name__}")
    return reason.encode("utf-8")
