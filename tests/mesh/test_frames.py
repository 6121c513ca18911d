"""Wire format of /avi/audio/1.0.0: encoding, incremental decoding, every decode error, and
property tests (hypothesis, fixed number of cases) with random, truncated, oversized and
bit-flipped input."""

from __future__ import annotations

import struct

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent.mesh import ProtocolError
from agent.mesh._frames import (
    HEADER,
    MAX_BUFFERED,
    MAX_PAYLOAD,
    MAX_REASON,
    PARAMS,
    PROTOCOL_ID,
    VERSION,
    Codec,
    Frame,
    FrameDecoder,
    FrameEncodeError,
    FrameError,
    FrameType,
    LocalProtocolError,
    MalformedHeader,
    MalformedPayload,
    PayloadTooLarge,
    RemoteProtocolError,
    StreamParams,
    UnknownCodec,
    UnknownFrameType,
    UnsupportedVersion,
    encode_frame,
    encode_params,
)

FUZZ = settings(max_examples=300, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


def raw_header(version: int = VERSION, ftype: int = FrameType.DATA, codec: int = Codec.PCM_S16LE,
               flags: int = 0, stream_id: int = 1, sequence: int = 0, timestamp_us: int = 0,
               length: int = 0) -> bytes:
    return HEADER.pack(version, ftype, codec, flags, stream_id, sequence, timestamp_us, length)


def decode_all(data: bytes, chunk: int | None = None) -> tuple[list[Frame], FrameDecoder]:
    decoder = FrameDecoder()
    frames: list[Frame] = []
    step = chunk or max(1, len(data))
    for i in range(0, len(data), step):
        frames += decoder.feed(data[i:i + step])
    return frames, decoder


SAMPLE_FRAMES = [
    Frame(FrameType.REQUEST, 0xDEAD_BEEF_0000_0001, payload=encode_params(StreamParams())),
    Frame(FrameType.REQUEST, 5),
    Frame(FrameType.REQUEST, 5, codec=Codec.OPUS,
          payload=encode_params(StreamParams(Codec.OPUS, 48_000, 2, 10))),
    Frame(FrameType.ACCEPT, 5),
    Frame(FrameType.REJECT, 5, payload="limit".encode()),
    Frame(FrameType.REJECT, 5, payload=("é" * (MAX_REASON // 2)).encode()),
    Frame(FrameType.DATA, 5, 0, 1_000_000, payload=b"\x01\x02" * 320),
    Frame(FrameType.DATA, 2**64 - 1, 2**32 - 1, 2**64 - 1, Codec.OPUS, b"\xff" * MAX_PAYLOAD),
    Frame(FrameType.DATA, 0, 7, 0, payload=b""),
    Frame(FrameType.CLOSE, 5, payload=b"protocol: unexpected-data"),
    Frame(FrameType.CLOSE, 5, payload=b""),
    Frame(FrameType.KEEPALIVE, 5),
]


# --- constants and layout ----------------------------------------------------------------------


def test_constants() -> None:
    assert PROTOCOL_ID == "/avi/audio/1.0.0"
    assert VERSION == 1
    assert HEADER.size == 26
    assert MAX_PAYLOAD == 8192 and MAX_REASON == 256
    assert MAX_BUFFERED == 26 + 8192
    assert PARAMS.size == 6
    assert [t.value for t in FrameType] == [1, 2, 3, 4, 5, 6]
    assert Codec.PCM_S16LE == 1 and Codec.OPUS == 2


def test_header_byte_layout_matches_protocol_md() -> None:
    wire = encode_frame(Frame(FrameType.DATA, 0x0102030405060708, 0x0A0B0C0D,
                              0x1112131415161718, Codec.PCM_S16LE, b"abc"))
    assert wire == bytes([1, 4, 1, 0,
                          1, 2, 3, 4, 5, 6, 7, 8,
                          0x0A, 0x0B, 0x0C, 0x0D,
                          0x11, 0x12, 0x13, 0x14, 0x15, 0x16, 0x17, 0x18,
                          0, 3]) + b"abc"


def test_request_params_layout() -> None:
    payload = encode_params(StreamParams(Codec.PCM_S16LE, 48_000, 2, 10))
    assert payload == struct.pack(">IBB", 48_000, 2, 10)
    frame = Frame(FrameType.REQUEST, 1, codec=Codec.OPUS, payload=payload)
    assert frame.params == StreamParams(Codec.OPUS, 48_000, 2, 10)
    assert Frame(FrameType.REQUEST, 1).params == StreamParams()


def test_frame_helpers_refuse_wrong_types() -> None:
    assert Frame(FrameType.CLOSE, 1, payload="bye".encode()).reason == "bye"
    with pytest.raises(ValueError):
        _ = Frame(FrameType.DATA, 1).reason
    with pytest.raises(ValueError):
        _ = Frame(FrameType.ACCEPT, 1).params


def test_error_hierarchy() -> None:
    for cls in (UnsupportedVersion, UnknownFrameType, UnknownCodec, PayloadTooLarge,
                MalformedHeader, MalformedPayload):
        assert issubclass(cls, FrameError)
        assert issubclass(cls, RemoteProtocolError)
        assert issubclass(cls, ProtocolError)
        err = cls("detail")
        assert err.reason == cls.REASON and err.detail == "detail"
        assert err.close_reason == f"protocol: {cls.REASON}"
    assert len({cls.REASON for cls in (UnsupportedVersion, UnknownFrameType, UnknownCodec,
                                       PayloadTooLarge, MalformedHeader, MalformedPayload)}) == 6
    assert issubclass(FrameEncodeError, LocalProtocolError)
    assert issubclass(FrameEncodeError, ValueError)
    assert issubclass(LocalProtocolError, ProtocolError)
    assert not issubclass(LocalProtocolError, RemoteProtocolError)


# --- round trips -------------------------------------------------------------------------------


@pytest.mark.parametrize("frame", SAMPLE_FRAMES, ids=lambda f: f.type.name)
def test_round_trip(frame: Frame) -> None:
    wire = encode_frame(frame)
    assert len(wire) == HEADER.size + len(frame.payload)
    frames, decoder = decode_all(wire)
    assert frames == [frame]
    assert decoder.buffered == 0


def test_many_frames_in_one_chunk() -> None:
    wire = b"".join(encode_frame(f) for f in SAMPLE_FRAMES) * 20
    frames, decoder = decode_all(wire)
    assert frames == SAMPLE_FRAMES * 20
    assert decoder.buffered == 0
    assert decoder.peak_buffered <= MAX_BUFFERED


def test_one_byte_at_a_time() -> None:
    wire = b"".join(encode_frame(f) for f in SAMPLE_FRAMES)
    decoder = FrameDecoder()
    frames: list[Frame] = []
    for i in range(len(wire)):
        got = decoder.feed(wire[i:i + 1])
        frames += got
        assert decoder.buffered <= MAX_BUFFERED - 1
    assert frames == SAMPLE_FRAMES
    assert decoder.buffered == 0


@pytest.mark.parametrize("chunk", [2, 3, 7, 25, 26, 27, 100, 641, 4096, 9000])
def test_odd_chunk_sizes(chunk: int) -> None:
    wire = b"".join(encode_frame(f) for f in SAMPLE_FRAMES) * 3
    frames, decoder = decode_all(wire, chunk)
    assert frames == SAMPLE_FRAMES * 3
    assert decoder.buffered == 0


def test_empty_payload_frame_is_returned_as_soon_as_its_header_is_complete() -> None:
    wire = encode_frame(Frame(FrameType.KEEPALIVE, 9))
    decoder = FrameDecoder()
    assert decoder.feed(wire[:-1]) == []
    assert decoder.buffered == 25
    assert decoder.feed(wire[-1:]) == [Frame(FrameType.KEEPALIVE, 9)]
    assert decoder.feed(b"") == []


def test_partial_frame_is_held_then_completed() -> None:
    wire = encode_frame(Frame(FrameType.DATA, 3, 1, 2, payload=b"z" * 640))
    decoder = FrameDecoder()
    assert decoder.feed(wire[:300]) == []
    assert decoder.buffered == 300
    assert decoder.feed(wire[300:]) == [Frame(FrameType.DATA, 3, 1, 2, payload=b"z" * 640)]
    assert decoder.buffered == 0


def test_accepts_bytearray_and_memoryview() -> None:
    wire = encode_frame(SAMPLE_FRAMES[6])
    assert FrameDecoder().feed(bytearray(wire)) == [SAMPLE_FRAMES[6]]
    assert FrameDecoder().feed(memoryview(wire)) == [SAMPLE_FRAMES[6]]


def test_huge_chunk_keeps_the_buffer_bounded() -> None:
    big = Frame(FrameType.DATA, 1, 0, 0, payload=b"a" * MAX_PAYLOAD)
    wire = encode_frame(big) * 150  # ~1.2 MB in one feed
    decoder = FrameDecoder()
    assert decoder.feed(wire[:-5]) == [big] * 149
    assert decoder.peak_buffered <= MAX_BUFFERED
    assert decoder.buffered == len(wire) // 150 - 5
    assert decoder.feed(wire[-5:]) == [big]


# --- encoder refuses bad local input -------------------------------------------------------------


@pytest.mark.parametrize("frame, match", [
    (Frame(FrameType.DATA, 1, payload=b"x" * (MAX_PAYLOAD + 1)), "exceeds"),
    (Frame(FrameType.CLOSE, 1, payload=b"x" * (MAX_REASON + 1)), "reason"),
    (Frame(FrameType.REJECT, 1, payload=b"\xff\xfe"), "UTF-8"),
    (Frame(FrameType.ACCEPT, 1, payload=b"x"), "empty"),
    (Frame(FrameType.KEEPALIVE, 1, payload=b"x"), "empty"),
    (Frame(FrameType.REQUEST, 1, payload=b"12345"), "REQUEST"),
    (Frame(FrameType.REQUEST, 1, payload=PARAMS.pack(0, 1, 20)), "non-zero"),
    (Frame(FrameType.DATA, -1), "stream_id"),
    (Frame(FrameType.DATA, 2**64), "stream_id"),
    (Frame(FrameType.DATA, 1, sequence=2**32), "sequence"),
    (Frame(FrameType.DATA, 1, sequence=-1), "sequence"),
    (Frame(FrameType.DATA, 1, timestamp_us=2**64), "timestamp_us"),
    (Frame(FrameType.DATA, 1, timestamp_us=1.5), "timestamp_us"),  # type: ignore[arg-type]
    (Frame(7, 1), "frame type"),  # type: ignore[arg-type]
    (Frame(FrameType.DATA, 1, codec=9), "codec"),  # type: ignore[arg-type]
    (Frame(FrameType.DATA, 1, payload="text"), "bytes"),  # type: ignore[arg-type]
])
def test_encode_refuses(frame: Frame, match: str) -> None:
    with pytest.raises(FrameEncodeError, match=match):
        encode_frame(frame)


@pytest.mark.parametrize("params", [
    StreamParams(sample_rate=0), StreamParams(sample_rate=2**32), StreamParams(channels=0),
    StreamParams(channels=256), StreamParams(frame_ms=0), StreamParams(frame_ms=256),
])
def test_encode_params_refuses(params: StreamParams) -> None:
    with pytest.raises(FrameEncodeError):
        encode_params(params)


def test_encode_accepts_limits() -> None:
    encode_frame(Frame(FrameType.DATA, 1, payload=b"x" * MAX_PAYLOAD))
    encode_frame(Frame(FrameType.CLOSE, 1, payload=b"x" * MAX_REASON))
    encode_params(StreamParams(sample_rate=2**32 - 1, channels=255, frame_ms=255))


# --- decoder refuses bad remote input ------------------------------------------------------------


@pytest.mark.parametrize("wire, error", [
    (raw_header(version=0), UnsupportedVersion),
    (raw_header(version=2), UnsupportedVersion),
    (raw_header(version=255), UnsupportedVersion),
    (raw_header(ftype=0), UnknownFrameType),
    (raw_header(ftype=7), UnknownFrameType),
    (raw_header(ftype=255), UnknownFrameType),
    (raw_header(codec=0), UnknownCodec),
    (raw_header(codec=3), UnknownCodec),
    (raw_header(flags=1), MalformedHeader),
    (raw_header(flags=0x80), MalformedHeader),
    (raw_header(length=MAX_PAYLOAD + 1), PayloadTooLarge),
    (raw_header(length=0xFFFF), PayloadTooLarge),
    (raw_header(ftype=FrameType.CLOSE, length=MAX_REASON + 1), PayloadTooLarge),
    (raw_header(ftype=FrameType.REJECT, length=MAX_REASON + 1), PayloadTooLarge),
    (raw_header(ftype=FrameType.ACCEPT, length=1), MalformedPayload),
    (raw_header(ftype=FrameType.KEEPALIVE, length=4), MalformedPayload),
    (raw_header(ftype=FrameType.REQUEST, length=5), MalformedPayload),
    (raw_header(ftype=FrameType.REQUEST, length=7), MalformedPayload),
    (raw_header(ftype=FrameType.REQUEST, length=6) + PARAMS.pack(16000, 0, 20), MalformedPayload),
    (raw_header(ftype=FrameType.REQUEST, length=6) + PARAMS.pack(0, 1, 20), MalformedPayload),
    (raw_header(ftype=FrameType.REQUEST, length=6) + PARAMS.pack(16000, 1, 0), MalformedPayload),
    (raw_header(ftype=FrameType.CLOSE, length=2) + b"\xc3\x28", MalformedPayload),
    (raw_header(ftype=FrameType.REJECT, length=1) + b"\x80", MalformedPayload),
])
def test_decode_errors(wire: bytes, error: type[FrameError]) -> None:
    decoder = FrameDecoder()
    with pytest.raises(error) as info:
        decoder.feed(wire)
    assert info.value.reason == error.REASON
    assert decoder.error is info.value
    # the decoder is dead: every later feed raises the same error, even with valid input
    for later in (b"", encode_frame(Frame(FrameType.KEEPALIVE, 1))):
        with pytest.raises(error) as again:
            decoder.feed(later)
        assert again.value is info.value
    assert decoder.buffered == 0


def test_bad_header_is_refused_before_its_payload_arrives() -> None:
    decoder = FrameDecoder()
    decoder.feed(raw_header(length=MAX_PAYLOAD + 1)[:25])
    with pytest.raises(PayloadTooLarge):
        decoder.feed(raw_header(length=MAX_PAYLOAD + 1)[25:])


def test_error_after_good_frames_in_the_same_chunk_wins() -> None:
    good = encode_frame(Frame(FrameType.KEEPALIVE, 1))
    decoder = FrameDecoder()
    with pytest.raises(UnknownFrameType):
        decoder.feed(good * 3 + raw_header(ftype=99))
    # ...while the same bytes in two reads deliver the good frames first
    decoder = FrameDecoder()
    assert len(decoder.feed(good * 3)) == 3
    with pytest.raises(UnknownFrameType):
        decoder.feed(raw_header(ftype=99))


def test_bad_utf8_reason_split_across_reads() -> None:
    wire = raw_header(ftype=FrameType.CLOSE, length=3) + b"ab\xff"
    decoder = FrameDecoder()
    assert decoder.feed(wire[:27]) == []
    with pytest.raises(MalformedPayload):
        decoder.feed(wire[27:])


# --- property tests ------------------------------------------------------------------------------

stream_ids = st.integers(0, 2**64 - 1)
sequences = st.integers(0, 2**32 - 1)
timestamps = st.integers(0, 2**64 - 1)
codecs = st.sampled_from(list(Codec))
reasons = st.text(max_size=64).map(lambda s: s.encode()[:MAX_REASON]).filter(
    lambda b: _is_utf8(b))
params = st.builds(StreamParams, codec=codecs, sample_rate=st.integers(1, 2**32 - 1),
                   channels=st.integers(1, 255), frame_ms=st.integers(1, 255))


def _is_utf8(data: bytes) -> bool:
    try:
        data.decode()
    except UnicodeDecodeError:
        return False
    return True


@st.composite
def frames(draw: st.DrawFn) -> Frame:
    ftype = draw(st.sampled_from(list(FrameType)))
    sid = draw(stream_ids)
    if ftype is FrameType.DATA:
        return Frame(ftype, sid, draw(sequences), draw(timestamps), draw(codecs),
                     draw(st.binary(max_size=MAX_PAYLOAD)))
    if ftype is FrameType.REQUEST:
        p = draw(st.none() | params)
        if p is None:
            return Frame(ftype, sid, codec=draw(codecs))
        return Frame(ftype, sid, codec=p.codec, payload=encode_params(p))
    if ftype in (FrameType.REJECT, FrameType.CLOSE):
        return Frame(ftype, sid, payload=draw(reasons))
    return Frame(ftype, sid)


def feed_in_chunks(data: bytes, cuts: list[int]) -> tuple[list[Frame], FrameDecoder,
                                                           FrameError | None]:
    """Feed `data` cut at `cuts`; return the frames, the decoder and the error if one came.

    Asserts the two invariants of the decoder on the way: only FrameError escapes, and the
    buffer never exceeds one header plus the maximum payload.
    """
    decoder = FrameDecoder()
    out: list[Frame] = []
    bounds = sorted({c % (len(data) + 1) for c in cuts} | {0, len(data)})
    try:
        for lo, hi in zip(bounds, bounds[1:]):
            out += decoder.feed(data[lo:hi])
            assert decoder.buffered < MAX_BUFFERED
    except FrameError as exc:  # the only exception allowed to escape
        assert decoder.error is exc
        assert decoder.peak_buffered <= MAX_BUFFERED
        return out, decoder, exc
    assert decoder.peak_buffered <= MAX_BUFFERED
    return out, decoder, None


def assert_canonical(data: bytes, decoded: list[Frame], decoder: FrameDecoder) -> None:
    """Whatever decodes re-encodes to exactly the bytes it came from."""
    consumed = len(data) - decoder.buffered
    assert b"".join(encode_frame(f) for f in decoded) == data[:consumed]


@FUZZ
@given(st.lists(frames(), max_size=8), st.lists(st.integers(0, 10**6), max_size=12))
def test_prop_round_trip_any_chunking(sent: list[Frame], cuts: list[int]) -> None:
    wire = b"".join(encode_frame(f) for f in sent)
    got, decoder, error = feed_in_chunks(wire, cuts)
    assert error is None
    assert got == sent
    assert decoder.buffered == 0


@FUZZ
@given(st.binary(max_size=3 * MAX_BUFFERED), st.lists(st.integers(0, 10**6), max_size=12))
def test_prop_random_bytes(data: bytes, cuts: list[int]) -> None:
    got, decoder, error = feed_in_chunks(data, cuts)
    if error is None:
        assert_canonical(data, got, decoder)


@FUZZ
@given(st.binary(min_size=HEADER.size - 1, max_size=2 * MAX_BUFFERED),
       st.integers(1, 6), st.integers(0, 15), st.integers(0, 255))
def test_prop_random_bytes_behind_a_plausible_header_prefix(
        data: bytes, ftype: int, codec: int, version_xor: int) -> None:
    """Random bytes rarely pass the first header byte: force valid-looking headers too."""
    data = bytes([VERSION ^ (version_xor if version_xor < 8 else 0), ftype, codec % 3, 0]) + data
    got, decoder, error = feed_in_chunks(data, [7, 26, 27, 300])
    if error is None:
        assert_canonical(data, got, decoder)


@FUZZ
@given(st.lists(frames(), min_size=1, max_size=4), st.data())
def test_prop_truncated(sent: list[Frame], data: st.DataObject) -> None:
    wire = b"".join(encode_frame(f) for f in sent)
    cut = data.draw(st.integers(0, len(wire) - 1))
    got, decoder, error = feed_in_chunks(wire[:cut], data.draw(st.lists(st.integers(0, cut))))
    assert error is None
    assert got == sent[:len(got)] and len(got) < len(sent)
    assert_canonical(wire[:cut], got, decoder)
    assert decoder.buffered == cut - sum(len(encode_frame(f)) for f in got)


@FUZZ
@given(frames(), st.integers(MAX_PAYLOAD + 1, 0xFFFF), st.binary(max_size=64))
def test_prop_oversized_length(frame: Frame, length: int, tail: bytes) -> None:
    wire = bytearray(encode_frame(frame))
    struct.pack_into(">H", wire, 24, length)
    decoder = FrameDecoder()
    with pytest.raises(PayloadTooLarge):
        decoder.feed(bytes(wire[:HEADER.size]))  # refused on the header alone
    with pytest.raises(PayloadTooLarge):
        decoder.feed(tail)
    assert decoder.peak_buffered <= HEADER.size


@FUZZ
@given(st.lists(frames(), min_size=1, max_size=4), st.data())
def test_prop_bit_flipped(sent: list[Frame], data: st.DataObject) -> None:
    wire = bytearray(b"".join(encode_frame(f) for f in sent))
    flips = data.draw(st.lists(st.integers(0, len(wire) * 8 - 1), min_size=1, max_size=3))
    for bit in flips:
        wire[bit // 8] ^= 1 << (bit % 8)
    wire_b = bytes(wire)
    got, decoder, error = feed_in_chunks(wire_b, data.draw(st.lists(st.integers(0, 10**5))))
    if error is None:
        assert_canonical(wire_b, got, decoder)


@FUZZ
@given(st.lists(frames(), min_size=1, max_size=3), st.data())
def test_prop_header_field_flips_are_typed(sent: list[Frame], data: st.DataObject) -> None:
    """A flipped bit in the version or flags byte of the first frame is always refused, with
    the error naming that field."""
    wire = bytearray(b"".join(encode_frame(f) for f in sent))
    byte = data.draw(st.sampled_from([0, 3]))
    wire[byte] ^= 1 << data.draw(st.integers(0, 7))
    got, decoder, error = feed_in_chunks(bytes(wire), [])
    assert got == []
    assert isinstance(error, UnsupportedVersion if byte == 0 else MalformedHeader)


def test_a_request_context_only_on_a_1_1_stream_and_within_its_bound() -> None:
    """/avi/audio/1.1.0: a REQUEST may carry a context after its 6 bytes of parameters (at most
    MAX_CONTEXT); on a 1.0.0 stream the same bytes stay malformed (what a node of the previous
    version says), and a context is refused before it is sent there."""
    from agent.mesh._audio_protocol import AudioStreamConnection, Role, StreamRequested
    from agent.mesh._frames import MAX_CONTEXT

    params = StreamParams(codec=Codec.OPUS, context=b"what it is for")
    frame = Frame(FrameType.REQUEST, 9, codec=Codec.OPUS, payload=encode_params(params))
    wire = encode_frame(frame, contexts=True)
    decoder = FrameDecoder(contexts=True)
    [back] = decoder.feed(wire)
    assert back.params == params and encode_frame(back, contexts=True) == wire
    with pytest.raises(FrameEncodeError):
        encode_frame(frame)  # a 1.0.0 stream
    with pytest.raises(MalformedPayload):
        FrameDecoder().feed(wire)
    longest = Frame(FrameType.REQUEST, 9, payload=encode_params(StreamParams(context=b"x" * MAX_CONTEXT)))
    assert FrameDecoder(contexts=True).feed(encode_frame(longest, contexts=True)) == [longest]
    with pytest.raises(FrameEncodeError):
        encode_params(StreamParams(context=b"x" * (MAX_CONTEXT + 1)))
    with pytest.raises(MalformedPayload):
        FrameDecoder(contexts=True).feed(raw_header(ftype=FrameType.REQUEST, length=PARAMS.size + MAX_CONTEXT + 1)
                                          + PARAMS.pack(16000, 1, 20) + b"x" * (MAX_CONTEXT + 1))
    # The state machine: the initiator's context reaches the responder's event.
    i, r = AudioStreamConnection(Role.INITIATOR, contexts=True), AudioStreamConnection(Role.RESPONDER, contexts=True)
    [ev] = r.receive_data(i.request(5, StreamParams(context=b"ctx")))
    assert isinstance(ev, StreamRequested) and ev.params.context == b"ctx"
    with pytest.raises(LocalProtocolError):
        AudioStreamConnection(Role.INITIATOR).request(5, StreamParams(context=b"ctx"))
