"""The /avi/audio/1.0.0 state machine: handshakes, data both ways, every illegal local call,
every illegal remote frame, sequence accounting, byte delivery of any shape, and fuzzing."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent.mesh._audio_protocol import (
    KEEPALIVE_INTERVAL,
    STREAM_TIMEOUT,
    AudioStreamConnection,
    CloseReason,
    ConnectionStats,
    DataReceived,
    KeepaliveReceived,
    Role,
    StreamAccepted,
    StreamClosed,
    StreamRejected,
    StreamRequested,
    StreamState,
    TRANSITIONS,
    protocol_reason,
)
from agent.mesh._frames import (
    HEADER,
    MAX_PAYLOAD,
    MAX_REASON,
    Codec,
    Frame,
    FrameEncodeError,
    FrameError,
    FrameType,
    LocalProtocolError,
    MalformedPayload,
    RemoteProtocolError,
    StreamParams,
    UnknownFrameType,
    UnsupportedVersion,
    encode_frame,
    encode_params,
)

SID = 0x1234_5678_9ABC_DEF0
FUZZ = settings(max_examples=300, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.too_slow])


def pair() -> tuple[AudioStreamConnection, AudioStreamConnection]:
    return AudioStreamConnection(Role.INITIATOR), AudioStreamConnection(Role.RESPONDER)


def open_pair(params: StreamParams | None = None
              ) -> tuple[AudioStreamConnection, AudioStreamConnection]:
    a, b = pair()
    assert b.receive_data(a.request(SID, params)) == [StreamRequested(SID, params or
                                                                      StreamParams())]
    assert a.receive_data(b.accept()) == [StreamAccepted()]
    return a, b


def wire(ftype: FrameType, stream_id: int = SID, sequence: int = 0, payload: bytes = b"",
         timestamp_us: int = 0, codec: Codec = Codec.PCM_S16LE) -> bytes:
    return encode_frame(Frame(ftype, stream_id, sequence, timestamp_us, codec, payload))


def data_frame(sequence: int, payload: bytes = b"pcm") -> bytes:
    return wire(FrameType.DATA, sequence=sequence, payload=payload, timestamp_us=sequence * 20_000)


# --- happy paths -----------------------------------------------------------------------------


def test_constants() -> None:
    assert KEEPALIVE_INTERVAL == 1.0 and STREAM_TIMEOUT == 4.0
    assert KEEPALIVE_INTERVAL < STREAM_TIMEOUT
    assert protocol_reason("unexpected-data") == "protocol: unexpected-data"
    assert [r.value for r in CloseReason] == ["normal", "timeout", "limit", "not-allowed",
                                              "peer-gone", "shutdown", "declined"]


def test_accept_data_both_ways_and_close() -> None:
    params = StreamParams(Codec.PCM_S16LE, 48_000, 2, 10)
    a, b = pair()
    assert (a.state, b.state) == (StreamState.IDLE, StreamState.IDLE)
    assert b.receive_data(a.request(SID, params)) == [StreamRequested(SID, params)]
    assert (a.state, b.state) == (StreamState.REQUESTED, StreamState.REQUESTED)
    assert a.stream_id == b.stream_id == SID and a.params == b.params == params
    assert a.receive_data(b.accept()) == [StreamAccepted()]
    assert (a.state, b.state) == (StreamState.OPEN, StreamState.OPEN)

    assert b.receive_data(a.data(b"\x01" * 640, 111)) == [
        DataReceived(0, 111, Codec.PCM_S16LE, b"\x01" * 640)]
    assert b.receive_data(a.data(b"\x02" * 640, 222)) == [
        DataReceived(1, 222, Codec.PCM_S16LE, b"\x02" * 640)]
    assert a.receive_data(b.data(b"back", 5, codec=Codec.OPUS)) == [
        DataReceived(0, 5, Codec.OPUS, b"back")]
    assert a.receive_data(b.keepalive()) == [KeepaliveReceived()]
    assert b.receive_data(a.keepalive()) == [KeepaliveReceived()]

    assert b.receive_data(a.close("normal")) == [StreamClosed("normal")]
    assert (a.state, b.state) == (StreamState.CLOSED, StreamState.CLOSED)
    assert a.close_reason == b.close_reason == "normal"
    assert a.stats() == ConnectionStats(frames_sent=2, frames_received=1, duplicates=0, lost=0,
                                    bytes_in=b.stats().bytes_out, bytes_out=b.stats().bytes_in)
    assert b.stats().frames_sent == 1 and b.stats().frames_received == 2


def test_responder_closes() -> None:
    a, b = open_pair()
    assert a.receive_data(b.close(CloseReason.SHUTDOWN)) == [StreamClosed("shutdown")]
    assert a.state is StreamState.CLOSED and a.close_reason == "shutdown"


def test_reject_with_reason() -> None:
    a, b = pair()
    b.receive_data(a.request(SID))
    assert a.receive_data(b.reject("limit")) == [StreamRejected("limit")]
    assert (a.state, b.state) == (StreamState.REJECTED, StreamState.REJECTED)
    assert a.close_reason == b.close_reason == "limit"


def test_unicode_reason_round_trips() -> None:
    a, b = pair()
    b.receive_data(a.request(SID))
    assert a.receive_data(b.reject("occupé ☎")) == [StreamRejected("occupé ☎")]


def test_initiator_cancels_while_requested() -> None:
    a, b = pair()
    b.receive_data(a.request(SID))
    assert b.receive_data(a.close("normal")) == [StreamClosed("normal")]
    assert b.state is StreamState.CLOSED
    with pytest.raises(LocalProtocolError):
        b.accept()


def test_keepalive_while_requested_both_ways() -> None:
    a, b = pair()
    b.receive_data(a.request(SID))
    assert b.receive_data(a.keepalive()) == [KeepaliveReceived()]
    assert a.receive_data(b.keepalive()) == [KeepaliveReceived()]
    assert (a.state, b.state) == (StreamState.REQUESTED, StreamState.REQUESTED)


def test_default_params_and_empty_request_payload() -> None:
    a, b = pair()
    assert b.receive_data(a.request(SID)) == [StreamRequested(SID, StreamParams())]
    c = AudioStreamConnection(Role.RESPONDER)  # a minimal peer sends no parameter block
    assert c.receive_data(wire(FrameType.REQUEST, codec=Codec.OPUS)) == [
        StreamRequested(SID, StreamParams(codec=Codec.OPUS))]


def test_data_codec_defaults_to_the_requested_codec() -> None:
    a, b = open_pair(StreamParams(codec=Codec.OPUS))
    assert b.receive_data(a.data(b"o", 1)) == [DataReceived(0, 1, Codec.OPUS, b"o")]
    assert a.receive_data(b.data(b"p", 2)) == [DataReceived(0, 2, Codec.OPUS, b"p")]


def test_stream_id_extremes() -> None:
    for sid in (0, 2**64 - 1):
        a, b = pair()
        assert b.receive_data(a.request(sid)) == [StreamRequested(sid, StreamParams())]
        a.receive_data(b.accept())
        assert b.receive_data(a.data(b"x", 0)) == [DataReceived(0, 0, Codec.PCM_S16LE, b"x")]


# --- byte delivery of any shape ------------------------------------------------------------------


def test_whole_conversation_one_byte_at_a_time() -> None:
    a, b = pair()
    out_a = a.request(SID)
    events: list[object] = []
    for i in range(len(out_a)):
        events += b.receive_data(out_a[i:i + 1])
    out_b = b.accept()
    for i in range(len(out_b)):
        events += a.receive_data(out_b[i:i + 1])
    stream = b"".join(a.data(bytes([n]) * 640, n) for n in range(10)) + a.keepalive() \
        + a.close("bye")
    for i in range(len(stream)):
        events += b.receive_data(stream[i:i + 1])
    assert events == [StreamRequested(SID, StreamParams()), StreamAccepted(),
                      *[DataReceived(n, n, Codec.PCM_S16LE, bytes([n]) * 640) for n in range(10)],
                      KeepaliveReceived(), StreamClosed("bye")]
    assert b.stats().bytes_in == len(out_a) + len(stream)


def test_many_frames_in_one_chunk() -> None:
    a, b = pair()
    chunk = a.request(SID)
    events = b.receive_data(chunk)
    a.receive_data(b.accept())
    chunk = b"".join(a.data(b"x" * 320, n * 20_000) for n in range(500))
    events = b.receive_data(chunk)
    assert [e.sequence for e in events if isinstance(e, DataReceived)] == list(range(500))
    assert b.stats().frames_received == 500 and b.stats().lost == 0


def test_request_accept_and_data_coalesced_on_the_responder_side() -> None:
    """The responder's ACCEPT and first DATA may reach the initiator in one read."""
    a, b = pair()
    b.receive_data(a.request(SID))
    events = a.receive_data(b.accept() + b.data(b"hi", 9) + b.keepalive())
    assert events == [StreamAccepted(), DataReceived(0, 9, Codec.PCM_S16LE, b"hi"),
                      KeepaliveReceived()]


# --- sequence accounting -------------------------------------------------------------------------


def test_gaps_are_counted_as_lost_and_delivered() -> None:
    b = open_pair()[1]
    events = b.receive_data(data_frame(0) + data_frame(3) + data_frame(4) + data_frame(10))
    assert [e.sequence for e in events] == [0, 3, 4, 10]
    assert b.stats().lost == 2 + 5 and b.stats().frames_received == 4


def test_first_frame_with_a_late_sequence_counts_the_gap() -> None:
    b = open_pair()[1]
    b.receive_data(data_frame(5))
    assert b.stats().lost == 5


def test_duplicates_and_older_frames_are_dropped_and_counted() -> None:
    b = open_pair()[1]
    events = b.receive_data(data_frame(0) + data_frame(1) + data_frame(1) + data_frame(0)
                            + data_frame(2) + data_frame(2))
    assert [e.sequence for e in events] == [0, 1, 2]
    assert b.stats().duplicates == 3 and b.stats().lost == 0
    # a late, older frame after a gap: dropped, and the gap stays counted once
    events = b.receive_data(data_frame(6) + data_frame(4) + data_frame(7))
    assert [e.sequence for e in events] == [6, 7]
    assert b.stats().duplicates == 4 and b.stats().lost == 3
    assert b.state is StreamState.OPEN


def test_sender_numbers_frames_consecutively_from_zero() -> None:
    a, b = open_pair()
    events = b.receive_data(b"".join(a.data(b"", 0) for _ in range(1000)))
    assert [e.sequence for e in events] == list(range(1000))
    assert a.stats().frames_sent == 1000


def test_highest_sequence_then_exhausted() -> None:
    a, b = open_pair()
    a._next_send_seq = 2**32 - 1  # skip 4 billion frames
    assert b.receive_data(a.data(b"last", 1))[0].sequence == 2**32 - 1
    with pytest.raises(LocalProtocolError, match="exhausted"):
        a.data(b"one too many", 2)


# --- illegal local calls -------------------------------------------------------------------------


def _states() -> dict[str, tuple[AudioStreamConnection, AudioStreamConnection]]:
    """Both sides in each reachable state."""
    out = {"idle": pair()}
    a, b = pair()
    b.receive_data(a.request(SID))
    out["requested"] = (a, b)
    out["open"] = open_pair()
    a, b = open_pair()
    a.receive_data(b.close())
    out["closed"] = (a, b)
    a, b = pair()
    b.receive_data(a.request(SID))
    a.receive_data(b.reject("no"))
    out["rejected"] = (a, b)
    return out


LEGAL = {  # (role, state) -> the calls that are legal, each with the state after it
    ("i", "idle"): {"request": "requested"},
    ("r", "idle"): {},
    ("i", "requested"): {"keepalive": "requested", "close": "closed"},
    ("r", "requested"): {"accept": "open", "reject": "rejected", "keepalive": "requested",
                         "close": "closed"},
    ("i", "open"): {"data": "open", "keepalive": "open", "close": "closed"},
    ("r", "open"): {"data": "open", "keepalive": "open", "close": "closed"},
    ("i", "closed"): {"close": "closed"},       # a received CLOSE may be answered
    ("r", "closed"): {},                        # already sent its CLOSE
    ("i", "rejected"): {"close": "rejected"},
    ("r", "rejected"): {},                      # already sent REJECT
}
CALLS = {
    "request": lambda c: c.request(SID),
    "accept": lambda c: c.accept(),
    "reject": lambda c: c.reject("no"),
    "data": lambda c: c.data(b"x", 0),
    "keepalive": lambda c: c.keepalive(),
    "close": lambda c: c.close("normal"),
}
ROLE = {"i": Role.INITIATOR, "r": Role.RESPONDER}


@pytest.mark.parametrize("role, state, call", [
    (role, state, call) for role, state in LEGAL for call in CALLS])
def test_every_local_call_in_every_state(role: str, state: str, call: str) -> None:
    """Legal: the frame's bytes and the next state. Illegal: an error naming the state and the
    frame type, and the state unchanged."""
    a, b = _states()[state]
    conn = a if role == "i" else b
    before = conn.state
    if call in LEGAL[(role, state)]:
        assert isinstance(CALLS[call](conn), bytes)
        assert conn.state is StreamState[LEGAL[(role, state)][call].upper()]
    else:
        with pytest.raises(LocalProtocolError) as info:
            CALLS[call](conn)
        assert conn.state is before
        assert f"sends {call.upper()}" in str(info.value)
        assert f"in state {before.name}" in str(info.value)


def test_the_transition_table_is_the_protocol() -> None:
    """`TRANSITIONS` holds exactly the steps the spec tables here allow, sent and received."""
    spec = {(ROLE[role], StreamState[state.upper()], FrameType[call.upper()]):
            StreamState[after.upper()]
            for (role, state), calls in LEGAL.items() for call, after in calls.items()}
    received = {(ROLE["r" if role == "i" else "i"], StreamState[state.upper()],
                 FrameType[kind.upper()]): StreamState[after.upper()]
                for (role, state), kinds in RECEIVABLE.items() for kind, after in kinds.items()}
    assert all(spec.get(step, after) is after for step, after in received.items())
    spec |= received
    # A responder that received the initiator's CLOSE may answer it too (the fixtures' closed
    # responder is the one that sent CLOSE).
    spec[(Role.RESPONDER, StreamState.CLOSED, FrameType.CLOSE)] = StreamState.CLOSED
    assert TRANSITIONS == spec
    a, b = open_pair()
    b.receive_data(a.close("normal"))
    assert isinstance(b.close("normal"), bytes) and b.state is StreamState.CLOSED


def test_close_only_once() -> None:
    a, b = open_pair()
    a.close()
    with pytest.raises(LocalProtocolError):
        a.close()
    with pytest.raises(LocalProtocolError):
        a.data(b"x", 0)


def test_bad_local_values_leave_the_state_alone() -> None:
    a, b = pair()
    with pytest.raises(FrameEncodeError):
        a.request(2**64)
    with pytest.raises(FrameEncodeError):
        a.request(SID, StreamParams(channels=0))
    with pytest.raises(FrameEncodeError):
        a.request(SID, StreamParams(codec=9))  # type: ignore[arg-type]
    assert a.state is StreamState.IDLE and a.stream_id is None
    a, b = pair()
    b.receive_data(a.request(SID))
    with pytest.raises(FrameEncodeError):
        b.reject("x" * (MAX_REASON + 1))
    assert b.state is StreamState.REQUESTED
    a.receive_data(b.accept())
    with pytest.raises(FrameEncodeError):
        a.data(b"x" * (MAX_PAYLOAD + 1), 0)
    with pytest.raises(FrameEncodeError):
        a.data(b"x", -1)
    with pytest.raises(FrameEncodeError):
        a.data(b"x", 0, codec=7)  # type: ignore[arg-type]
    with pytest.raises(FrameEncodeError):
        a.close("é" * 200)  # 400 bytes of UTF-8
    assert a.state is StreamState.OPEN and a.stats().frames_sent == 0
    assert b.receive_data(a.data(b"ok", 0)) == [DataReceived(0, 0, Codec.PCM_S16LE, b"ok")]


# --- illegal remote frames -----------------------------------------------------------------------


REQ = wire(FrameType.REQUEST, payload=encode_params(StreamParams()))
ACC = wire(FrameType.ACCEPT)
REJ = wire(FrameType.REJECT, payload=b"no")
DAT = data_frame(0)
CLO = wire(FrameType.CLOSE, payload=b"bye")
KAL = wire(FrameType.KEEPALIVE)
BY_TYPE = {"request": REQ, "accept": ACC, "reject": REJ, "data": DAT, "close": CLO,
           "keepalive": KAL}
RECEIVABLE = {  # (role, state) -> the frame types that may arrive, each with the state after it
    ("i", "idle"): {},
    ("r", "idle"): {"request": "requested"},
    ("i", "requested"): {"accept": "open", "reject": "rejected", "keepalive": "requested",
                         "close": "closed"},
    ("r", "requested"): {"keepalive": "requested", "close": "closed"},
    ("i", "open"): {"data": "open", "keepalive": "open", "close": "closed"},
    ("r", "open"): {"data": "open", "keepalive": "open", "close": "closed"},
}


@pytest.mark.parametrize("role, state, kind", [
    (role, state, kind) for role, state in RECEIVABLE for kind in BY_TYPE])
def test_every_remote_frame_in_every_live_state(role: str, state: str, kind: str) -> None:
    """Legal: one event and the next state. Illegal: "unexpected-<type>", a detail naming the
    frame type and the state, and the stream CLOSED."""
    a, b = _states()[state]
    conn = a if role == "i" else b
    if kind in RECEIVABLE[(role, state)]:
        assert len(conn.receive_data(BY_TYPE[kind])) == 1
        assert conn.state is StreamState[RECEIVABLE[(role, state)][kind].upper()]
    else:
        with pytest.raises(RemoteProtocolError) as info:
            conn.receive_data(BY_TYPE[kind])
        assert info.value.reason == f"unexpected-{kind}"
        assert conn.state is StreamState.CLOSED
        assert conn.close_reason == f"protocol: unexpected-{kind}"
        assert kind.upper() in info.value.detail and f"in state {state.upper()}" in info.value.detail


@pytest.mark.parametrize("state", ["closed", "rejected"])
@pytest.mark.parametrize("kind", list(BY_TYPE))
def test_final_states_discard_whatever_arrives(state: str, kind: str) -> None:
    for conn in _states()[state]:
        before = conn.state
        assert conn.receive_data(BY_TYPE[kind] + b"\xff garbage") == []
        assert conn.state is before


def test_frames_after_close_in_the_same_chunk_are_discarded() -> None:
    b = open_pair()[1]
    assert b.receive_data(data_frame(0) + CLO + data_frame(1) + b"\x09junk") == [
        DataReceived(0, 0, Codec.PCM_S16LE, b"pcm"), StreamClosed("bye")]
    assert b.stats().frames_received == 1


@pytest.mark.parametrize("kind", ["data", "keepalive", "close"])
def test_wrong_stream_id(kind: str) -> None:
    b = open_pair()[1]
    bad = encode_frame(Frame(FrameType[kind.upper()], SID + 1,
                             payload=b"pcm" if kind != "keepalive" else b""))
    with pytest.raises(RemoteProtocolError) as info:
        b.receive_data(bad)
    assert info.value.reason == "wrong-stream-id"
    assert info.value.close_reason == "protocol: wrong-stream-id"
    assert b.state is StreamState.CLOSED


def test_wrong_stream_id_in_answer_to_request() -> None:
    a, b = pair()
    a.request(SID)
    with pytest.raises(RemoteProtocolError, match="wrong-stream-id"):
        a.receive_data(wire(FrameType.ACCEPT, stream_id=SID ^ 1))


def test_malformed_bytes_close_the_stream_and_close_tells_the_peer() -> None:
    a, b = open_pair()
    bad = bytearray(DAT)
    bad[1] = 42
    with pytest.raises(UnknownFrameType) as info:
        b.receive_data(bytes(bad))
    assert isinstance(info.value, RemoteProtocolError)
    assert b.state is StreamState.CLOSED
    assert b.close_reason == "protocol: unknown-frame-type"
    # the caller tells the peer why, once; afterwards input is discarded
    assert a.receive_data(b.close(info.value.close_reason)) == [
        StreamClosed("protocol: unknown-frame-type")]
    with pytest.raises(LocalProtocolError):
        b.close("again")
    assert b.receive_data(DAT) == []


def test_garbage_as_first_bytes_to_a_responder() -> None:
    b = AudioStreamConnection(Role.RESPONDER)
    with pytest.raises(UnsupportedVersion):
        b.receive_data(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    assert b.state is StreamState.CLOSED and b.stream_id is None
    closing = b.close(protocol_reason("unsupported-version"))
    assert closing[:HEADER.size] == HEADER.pack(1, FrameType.CLOSE, Codec.PCM_S16LE, 0, 0, 0, 0,
                                                len(b"protocol: unsupported-version"))


def test_second_request_is_an_error() -> None:
    b = open_pair()[1]
    with pytest.raises(RemoteProtocolError, match="unexpected-request"):
        b.receive_data(REQ)


def test_bad_request_parameters() -> None:
    b = AudioStreamConnection(Role.RESPONDER)
    bad = HEADER.pack(1, FrameType.REQUEST, Codec.PCM_S16LE, 0, SID, 0, 0, 6) + b"\x00" * 6
    with pytest.raises(MalformedPayload):
        b.receive_data(bad)


def test_good_events_before_an_error_in_the_same_chunk_are_discarded() -> None:
    a, b = pair()
    with pytest.raises(RemoteProtocolError):
        b.receive_data(a.request(SID) + DAT)
    assert b.state is StreamState.CLOSED


# --- fuzzing the state machine -------------------------------------------------------------------


@st.composite
def remote_frames(draw: st.DrawFn) -> bytes:
    ftype = draw(st.sampled_from(list(FrameType)))
    sid = draw(st.sampled_from([SID, SID, SID, 0, SID + 1]))
    payload = b""
    if ftype is FrameType.DATA:
        payload = draw(st.binary(max_size=700))
    elif ftype is FrameType.REQUEST:
        payload = draw(st.sampled_from([b"", encode_params(StreamParams())]))
    elif ftype in (FrameType.REJECT, FrameType.CLOSE):
        payload = draw(st.text(max_size=20)).encode()
    return encode_frame(Frame(ftype, sid, draw(st.integers(0, 40)), draw(st.integers(0, 2**40)),
                              draw(st.sampled_from(list(Codec))), payload))


@FUZZ
@given(st.sampled_from(["i", "r"]), st.sampled_from(["idle", "requested", "open"]),
       st.lists(remote_frames() | st.binary(max_size=40), max_size=12),
       st.integers(1, 64))
def test_prop_any_input_gives_events_or_a_typed_error(role: str, state: str,
                                                      chunks: list[bytes], size: int) -> None:
    a, b = _states()[state]
    conn = a if role == "i" else b
    stream = b"".join(chunks)
    bytes_before = conn.stats().bytes_in
    events, fed = [], 0
    try:
        for i in range(0, len(stream), size):
            fed += len(stream[i:i + size])
            events += conn.receive_data(stream[i:i + size])
    except RemoteProtocolError as exc:  # FrameError included; nothing else may escape
        assert conn.state is StreamState.CLOSED
        assert conn.close_reason == exc.close_reason
        assert isinstance(conn.close(exc.close_reason), bytes)
    stats = conn.stats()
    assert stats.bytes_in == bytes_before + fed
    assert stats.frames_received == sum(isinstance(e, DataReceived) for e in events)
    seqs = [e.sequence for e in events if isinstance(e, DataReceived)]
    assert seqs == sorted(set(seqs))  # delivered strictly increasing
    assert conn._decoder.peak_buffered <= HEADER.size + MAX_PAYLOAD


@FUZZ
@given(st.lists(st.integers(0, 200), max_size=60))
def test_prop_sequence_accounting(seqs: list[int]) -> None:
    b = open_pair()[1]
    events = b.receive_data(b"".join(data_frame(s) for s in seqs))
    delivered = [e.sequence for e in events]
    expected, last = [], -1
    for s in seqs:
        if s > last:
            expected.append(s)
            last = s
    assert delivered == expected
    st_ = b.stats()
    assert st_.frames_received == len(expected)
    assert st_.duplicates == len(seqs) - len(expected)
    assert st_.lost == (expected[-1] + 1 - len(expected) if expected else 0)


@FUZZ
@given(st.lists(st.sampled_from(["data", "keepalive"]), max_size=30), st.integers(1, 97))
def test_prop_conversation_survives_any_chunking(ops: list[str], size: int) -> None:
    a, b = pair()

    def deliver(stream: bytes) -> list[object]:
        return list(itertools.chain.from_iterable(
            b.receive_data(stream[i:i + size]) for i in range(0, len(stream), size)))

    assert deliver(a.request(SID)) == [StreamRequested(SID, StreamParams())]
    a.receive_data(b.accept())
    stream, want, seq = b"", [], 0
    for n, op in enumerate(ops):
        if op == "data":
            stream += a.data(bytes([n]) * n, n)
            want.append(DataReceived(seq, n, Codec.PCM_S16LE, bytes([n]) * n))
            seq += 1
        else:
            stream += a.keepalive()
            want.append(KeepaliveReceived())
    stream += a.close("done")
    want.append(StreamClosed("done"))
    assert deliver(stream) == want
    assert b.state is StreamState.CLOSED
    assert b.stats().frames_received == seq


def test_frame_errors_are_remote_protocol_errors() -> None:
    assert issubclass(FrameError, RemoteProtocolError)
