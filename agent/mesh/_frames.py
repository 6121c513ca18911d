"""Frames of the `/avi/audio/1.0.0` protocol: encoding, and a bounded incremental decoder.

Sans-I/O: nothing here reads or writes a socket. `encode_frame` turns a `Frame` into bytes;
`FrameDecoder.feed` turns bytes (in chunks of any size) into `Frame`s. The wire format is
documented in PROTOCOL.md next to this file; keep the two in step.

Error hierarchy (all under `agent.mesh.ProtocolError`)::

    ProtocolError
    ├── LocalProtocolError            we misused the protocol (wrong state, bad value)
    │   └── FrameEncodeError          a frame we were asked to encode is invalid (also ValueError)
    └── RemoteProtocolError           the peer broke the protocol; `.reason` is machine-readable
        └── FrameError                the peer's bytes do not decode
            ├── UnsupportedVersion, UnknownFrameType, UnknownCodec,
            └── PayloadTooLarge, MalformedHeader, MalformedPayload
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from enum import IntEnum
from typing import ClassVar

from agent.mesh._errors import ProtocolError

PROTOCOL_ID = "/avi/audio/1.0.0"
PROTOCOL_ID_CONTEXT = "/avi/audio/1.1.0"
"""The same protocol, where a REQUEST may also carry an application context after its parameters
(`MAX_CONTEXT` bytes at most). A node offers both ids; an initiator with a context asks for
1.1.0 first and falls back to 1.0.0 (then without the context) with a node that predates it."""
VERSION = 1

HEADER = struct.Struct(">BBBBQIQH")
"""version u8, type u8, codec u8, flags u8, stream_id u64, sequence u32, timestamp_us u64,
payload_length u16: 26 bytes, big-endian."""

MAX_PAYLOAD = 8192
"""Largest payload of any frame, in bytes (a 20 ms frame of 48 kHz stereo s16 is 3,840 bytes)."""

MAX_REASON = 256
"""Largest REJECT/CLOSE reason, in bytes of UTF-8."""

MAX_BUFFERED = HEADER.size + MAX_PAYLOAD
"""Upper bound of the bytes a `FrameDecoder` ever holds."""

_U32 = 0xFFFF_FFFF
_U64 = 0xFFFF_FFFF_FFFF_FFFF

PARAMS = struct.Struct(">IBB")
"""REQUEST payload: sample_rate u32 (Hz), channels u8, frame_ms u8: 6 bytes."""

MAX_CONTEXT = 1024
"""Largest application context a REQUEST carries after its parameters (1.1.0 streams only)."""


class FrameType(IntEnum):
    REQUEST = 1
    ACCEPT = 2
    REJECT = 3
    DATA = 4
    CLOSE = 5
    KEEPALIVE = 6


class Codec(IntEnum):
    PCM_S16LE = 1
    OPUS = 2  # reserved: accepted on the wire, no encoder in this package yet


# --- errors ---------------------------------------------------------------------------------


class LocalProtocolError(ProtocolError):
    """This side misused the protocol: a call in the wrong state, or an invalid value to send."""


class FrameEncodeError(LocalProtocolError, ValueError):
    """A frame we were asked to encode is invalid (payload too big, integer out of range, ...)."""


class RemoteProtocolError(ProtocolError):
    """The peer broke the protocol. The stream it happened on is over.

    `reason` is a short machine-readable token (``"unknown-frame-type"``, ``"unexpected-data"``,
    ``"wrong-stream-id"``, ...); `close_reason` is the reason to send in our CLOSE frame.
    """

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail

    @property
    def close_reason(self) -> str:
        return f"protocol: {self.reason}"


class FrameError(RemoteProtocolError):
    """The peer's bytes are not a valid frame. Each subclass has a fixed `reason`."""

    REASON: ClassVar[str] = "bad-frame"

    def __init__(self, detail: str = "") -> None:
        super().__init__(self.REASON, detail)


class UnsupportedVersion(FrameError):
    REASON = "unsupported-version"


class UnknownFrameType(FrameError):
    REASON = "unknown-frame-type"


class UnknownCodec(FrameError):
    REASON = "unknown-codec"


class PayloadTooLarge(FrameError):
    REASON = "payload-too-large"


class MalformedHeader(FrameError):
    """A header field other than version/type/codec/length is invalid (reserved flags set)."""

    REASON = "malformed-header"


class MalformedPayload(FrameError):
    """The payload does not fit its frame type (bad length, bad UTF-8, bad parameters)."""

    REASON = "malformed-payload"


# --- frames and parameters ------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class StreamParams:
    """The audio format an initiator proposes in REQUEST. `codec` travels in REQUEST's header."""

    codec: Codec = Codec.PCM_S16LE
    sample_rate: int = 16_000
    channels: int = 1
    frame_ms: int = 20
    context: bytes = b""  # opaque to the mesh (1.1.0 streams only): what the stream is for


@dataclass(frozen=True, slots=True)
class Frame:
    type: FrameType
    stream_id: int
    sequence: int = 0
    timestamp_us: int = 0
    codec: Codec = Codec.PCM_S16LE
    payload: bytes = b""

    @property
    def reason(self) -> str:
        """The reason text of a REJECT or CLOSE frame."""
        if self.type not in (FrameType.REJECT, FrameType.CLOSE):
            raise ValueError(f"{self.type.name} frames carry no reason")
        return self.payload.decode("utf-8")

    @property
    def params(self) -> StreamParams:
        """The stream parameters of a REQUEST frame (defaults when its payload is empty)."""
        if self.type is not FrameType.REQUEST:
            raise ValueError(f"{self.type.name} frames carry no stream parameters")
        if not self.payload:
            return StreamParams(codec=self.codec)
        rate, channels, frame_ms = PARAMS.unpack_from(self.payload)
        return StreamParams(self.codec, rate, channels, frame_ms, bytes(self.payload[PARAMS.size:]))


def encode_params(params: StreamParams) -> bytes:
    """The REQUEST payload for `params` (the codec goes into the header, not here; the context,
    if any, follows the 6 bytes of parameters)."""
    if not 1 <= params.sample_rate <= _U32:
        raise FrameEncodeError(f"sample_rate {params.sample_rate} out of range 1..{_U32}")
    if not 1 <= params.channels <= 255:
        raise FrameEncodeError(f"channels {params.channels} out of range 1..255")
    if not 1 <= params.frame_ms <= 255:
        raise FrameEncodeError(f"frame_ms {params.frame_ms} out of range 1..255")
    if len(params.context) > MAX_CONTEXT:
        raise FrameEncodeError(f"context of {len(params.context)} bytes exceeds {MAX_CONTEXT}")
    return PARAMS.pack(params.sample_rate, params.channels, params.frame_ms) + bytes(params.context)


def _payload_problem(ftype: FrameType, payload: bytes | memoryview, contexts: bool = False) -> str | None:
    """Why `payload` cannot be the payload of a `ftype` frame, or None if it can (`contexts`: a
    1.1.0 stream, where a REQUEST may carry a context after its parameters).

    Shared by the encoder and the decoder, so that whatever decodes re-encodes to the same bytes.
    """
    n = len(payload)
    if n > MAX_PAYLOAD:
        return f"payload of {n} bytes exceeds {MAX_PAYLOAD}"
    if ftype in (FrameType.ACCEPT, FrameType.KEEPALIVE):
        return None if n == 0 else f"{ftype.name} payload must be empty, got {n} bytes"
    if ftype is FrameType.REQUEST:
        if n == 0:
            return None
        if n != PARAMS.size and not (contexts and PARAMS.size < n <= PARAMS.size + MAX_CONTEXT):
            return (f"REQUEST payload must be 0 or {PARAMS.size} bytes, got {n}" if not contexts else
                    f"REQUEST payload must be 0 or {PARAMS.size}..{PARAMS.size + MAX_CONTEXT} bytes, got {n}")
        rate, channels, frame_ms = PARAMS.unpack_from(payload)
        if rate == 0 or channels == 0 or frame_ms == 0:
            return "REQUEST parameters must be non-zero"
        return None
    if ftype in (FrameType.REJECT, FrameType.CLOSE):
        if n > MAX_REASON:
            return f"reason of {n} bytes exceeds {MAX_REASON}"
        try:
            bytes(payload).decode("utf-8")
        except UnicodeDecodeError:
            return "reason is not valid UTF-8"
        return None
    return None  # DATA: any bytes up to MAX_PAYLOAD


def encode_frame(frame: Frame, *, contexts: bool = False) -> bytes:
    """The wire bytes of `frame`. Raises `FrameEncodeError` (a ValueError) if it is invalid
    (`contexts`: a 1.1.0 stream, where a REQUEST may carry a context)."""
    try:
        ftype = FrameType(frame.type)
    except ValueError:
        raise FrameEncodeError(f"unknown frame type {frame.type!r}") from None
    try:
        codec = Codec(frame.codec)
    except ValueError:
        raise FrameEncodeError(f"unknown codec {frame.codec!r}") from None
    for name, value, top in (("stream_id", frame.stream_id, _U64),
                             ("sequence", frame.sequence, _U32),
                             ("timestamp_us", frame.timestamp_us, _U64)):
        if not isinstance(value, int) or not 0 <= value <= top:
            raise FrameEncodeError(f"{name} {value!r} out of range 0..{top}")
    payload = frame.payload
    if not isinstance(payload, (bytes, bytearray, memoryview)):
        raise FrameEncodeError(f"payload must be bytes, got {type(payload).__name__}")
    problem = _payload_problem(ftype, payload, contexts)
    if problem is not None:
        raise FrameEncodeError(problem)
    header = HEADER.pack(VERSION, ftype, codec, 0, frame.stream_id, frame.sequence,
                         frame.timestamp_us, len(payload))
    return header + bytes(payload)


# --- decoding -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Header:
    type: FrameType
    codec: Codec
    stream_id: int
    sequence: int
    timestamp_us: int
    length: int


def _parse_header(buf: bytes | bytearray | memoryview, offset: int, contexts: bool = False) -> _Header:
    """Parse and check a header, so that a bad one is refused before its payload arrives."""
    version, ftype, codec, flags, stream_id, seq, ts, length = HEADER.unpack_from(buf, offset)
    if version != VERSION:
        raise UnsupportedVersion(f"version {version}, this side speaks {VERSION}")
    try:
        ftype = FrameType(ftype)
    except ValueError:
        raise UnknownFrameType(f"frame type {ftype}") from None
    try:
        codec = Codec(codec)
    except ValueError:
        raise UnknownCodec(f"codec {codec}") from None
    if flags != 0:
        raise MalformedHeader(f"reserved flags 0x{flags:02x} set")
    if length > MAX_PAYLOAD:
        raise PayloadTooLarge(f"payload length {length} exceeds {MAX_PAYLOAD}")
    if ftype in (FrameType.REJECT, FrameType.CLOSE) and length > MAX_REASON:
        raise PayloadTooLarge(f"{ftype.name} reason length {length} exceeds {MAX_REASON}")
    if ftype in (FrameType.ACCEPT, FrameType.KEEPALIVE) and length != 0:
        raise MalformedPayload(f"{ftype.name} payload must be empty, length is {length}")
    if ftype is FrameType.REQUEST and length not in (0, PARAMS.size) and not (
            contexts and PARAMS.size < length <= PARAMS.size + MAX_CONTEXT):
        raise MalformedPayload(f"REQUEST payload must be 0 or {PARAMS.size} bytes"
                               f"{f' (+ at most {MAX_CONTEXT} of context)' if contexts else ''}, is {length}")
    return _Header(ftype, codec, stream_id, seq, ts, length)


def _build_frame(head: _Header, payload: bytes, contexts: bool = False) -> Frame:
    problem = _payload_problem(head.type, payload, contexts)
    if problem is not None:
        raise MalformedPayload(problem)
    return Frame(head.type, head.stream_id, head.sequence, head.timestamp_us, head.codec, payload)


class FrameDecoder:
    """Incremental decoder: feed it bytes as they arrive, get whole frames back.

    It holds at most one partial frame (`buffered` <= `MAX_BUFFERED` bytes) whatever the size
    of the chunks it is fed. A bad header is refused as soon as its 26 bytes are in, without
    waiting for the payload. After an error the decoder is dead: every later `feed` raises the
    same error. Frames decoded earlier in the chunk that held the error are discarded with it.
    `contexts`: the stream is a 1.1.0 one, where a REQUEST may carry a context.
    """

    def __init__(self, *, contexts: bool = False) -> None:
        self._contexts = contexts
        self._buf = bytearray()
        self._head: _Header | None = None
        self._error: FrameError | None = None
        self._peak = 0

    @property
    def buffered(self) -> int:
        """Bytes received that are not part of a returned frame yet (at most MAX_BUFFERED - 1)."""
        return len(self._buf) + (HEADER.size if self._head is not None else 0)

    @property
    def peak_buffered(self) -> int:
        """The highest `buffered` ever reached (for tests of the memory bound)."""
        return self._peak

    @property
    def error(self) -> FrameError | None:
        """The error that killed this decoder, if any."""
        return self._error

    def feed(self, data: bytes | bytearray | memoryview) -> list[Frame]:
        if self._error is not None:
            raise self._error
        try:
            return self._feed(memoryview(data).cast("B"))
        except FrameError as exc:
            self._error = exc
            self._buf = bytearray()
            self._head = None
            raise

    def _take(self, view: memoryview, pos: int, want: int) -> int:
        """Move up to `want` bytes from view[pos:] into the buffer; return the new position."""
        chunk = view[pos:pos + want]
        self._buf += chunk
        self._peak = max(self._peak, self.buffered)
        return pos + len(chunk)

    def _feed(self, view: memoryview) -> list[Frame]:
        frames: list[Frame] = []
        pos, end = 0, len(view)
        while True:
            if self._head is None:
                if not self._buf and end - pos >= HEADER.size:  # fast path: no copy
                    self._head = _parse_header(view, pos, self._contexts)
                    pos += HEADER.size
                else:
                    pos = self._take(view, pos, HEADER.size - len(self._buf))
                    if len(self._buf) < HEADER.size:
                        return frames
                    head = _parse_header(self._buf, 0, self._contexts)
                    self._buf.clear()
                    self._head = head
                self._peak = max(self._peak, self.buffered)
            length = self._head.length
            if not self._buf and end - pos >= length:  # fast path: whole payload present
                payload = bytes(view[pos:pos + length])
                pos += length
            else:
                pos = self._take(view, pos, length - len(self._buf))
                if len(self._buf) < length:
                    return frames
                payload = bytes(self._buf)
                self._buf.clear()
            frames.append(_build_frame(self._head, payload, self._contexts))
            self._head = None
            if pos == end:
                return frames
