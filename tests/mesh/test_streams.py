"""Audio streams of /avi/audio/1.0.0 between real nodes over 127.0.0.1."""

from __future__ import annotations

import pytest
import trio

from agent.mesh import (AudioData, AudioStreamAccepted, AudioStreamClosed, AudioStreamRequested,
                        LimitError, NotRunningError, ProtocolError, UnknownPeerError, UnknownStreamError)
from tests.mesh.meshutil import chain, nodes
from tests.poll import wait_until


def requested(e):
    return isinstance(e, AudioStreamRequested)


async def open_stream(a, b, accept: bool = True) -> int:
    """a requests a stream to b; b accepts (or not). Returns the stream id."""
    sid = await a.h.request_audio_stream(b.peer_id)
    [req] = await b.wait_for(lambda e: requested(e) and e.stream_id == sid)
    assert req.peer_id == a.peer_id
    if accept:
        await b.h.accept_audio_stream(sid)
        [acc] = await a.wait_for(lambda e: isinstance(e, AudioStreamAccepted) and e.stream_id == sid)
        assert acc.peer_id == b.peer_id
    return sid


def closed(sid):
    return lambda e: isinstance(e, AudioStreamClosed) and e.stream_id == sid


def audio(sid):
    return lambda e: isinstance(e, AudioData) and e.stream_id == sid


@pytest.mark.parametrize("closer", ["requester", "acceptor"])
async def test_lifecycle_accept_data_close(closer):
    async with nodes(2) as (a, b):
        await chain([a, b])
        sid = await open_stream(a, b)
        await a.h.send_audio(sid, b"\x01\x02" * 320, timestamp_us=1234)
        [frame] = await b.wait_for(audio(sid))
        assert (frame.peer_id, frame.data, frame.timestamp_us, frame.sequence) == (
            a.peer_id, b"\x01\x02" * 320, 1234, 0)
        # Data flows the other way on the same stream too.
        await b.h.send_audio(sid, b"back")
        [back] = await a.wait_for(audio(sid))
        assert back.data == b"back"

        first, second = (a, b) if closer == "requester" else (b, a)
        await first.h.close_audio_stream(sid)
        [mine] = await first.wait_for(closed(sid))
        [theirs] = await second.wait_for(closed(sid))
        assert mine.reason == "normal"
        assert theirs.reason == "closed by peer: normal"
        with pytest.raises(UnknownStreamError):
            await a.h.send_audio(sid, b"late")


async def test_reject_with_reason_reaches_requester():
    async with nodes(2) as (a, b):
        await chain([a, b])
        sid = await open_stream(a, b, accept=False)
        await b.h.reject_audio_stream(sid, "busy talking")
        [ev] = await a.wait_for(closed(sid))
        assert ev.reason == "rejected: busy talking"
        assert not a.node.stats().streams and not b.node.stats().streams


async def test_frames_sent_before_accept_are_delivered_after_it():
    async with nodes(2) as (a, b):
        await chain([a, b])
        sid = await a.h.request_audio_stream(b.peer_id)
        for i in range(5):
            await a.h.send_audio(sid, bytes([i]) * 10)
        await b.wait_for(lambda e: requested(e) and e.stream_id == sid)
        await b.h.accept_audio_stream(sid)
        got = await b.wait_for(audio(sid), count=5)
        assert [f.data[0] for f in got] == [0, 1, 2, 3, 4]


async def test_a_thousand_frames_arrive_in_order():
    async with nodes(2) as (a, b):
        await chain([a, b])
        sid = await open_stream(a, b)
        for i in range(1000):
            await a.h.send_audio(sid, i.to_bytes(4, "big") + bytes(636))
            if i % 8 == 7:
                await trio.sleep(0.002)  # faster than real time, slow enough not to overflow
        got = await b.wait_for(audio(sid), count=1000, timeout=30)
        assert [int.from_bytes(f.data[:4], "big") for f in got] == list(range(1000))
        assert [f.sequence for f in got] == list(range(1000))
        st = a.node.stats().streams[0]
        assert (st.frames_sent, st.frames_dropped) == (1000, 0)


async def test_two_concurrent_streams_do_not_mix_or_block_each_other():
    async with nodes(3) as (a, b, c):
        await chain([a, b, c])
        await a.h.dial(c.addr)
        s_ab = await open_stream(a, b)
        s_cb = await open_stream(c, b)
        for i in range(100):
            await a.h.send_audio(s_ab, b"A" + bytes([i]))
            await c.h.send_audio(s_cb, b"C" + bytes([i]))
            await trio.sleep(0.001)
        from_a = await b.wait_for(audio(s_ab), count=100)
        from_c = await b.wait_for(audio(s_cb), count=100)
        assert [f.data for f in from_a] == [b"A" + bytes([i]) for i in range(100)]
        assert [f.data for f in from_c] == [b"C" + bytes([i]) for i in range(100)]


async def test_send_buffer_drops_oldest_when_peer_has_not_accepted():
    async with nodes(2, audio_send_buffer=4) as (a, b):
        await chain([a, b])
        sid = await a.h.request_audio_stream(b.peer_id)
        for i in range(10):
            await a.h.send_audio(sid, bytes([i]))
        [st] = a.node.stats().streams
        assert st.frames_dropped == 6
        await b.wait_for(lambda e: requested(e) and e.stream_id == sid)
        await b.h.accept_audio_stream(sid)
        got = await b.wait_for(audio(sid), count=4)
        assert [f.data[0] for f in got] == [6, 7, 8, 9]


async def test_slow_application_loses_audio_but_no_control_event():
    """With a tiny event buffer and nobody reading, audio is dropped oldest-first and counted,
    while the stream-closed event still arrives."""
    from agent.mesh import AviP2p
    from tests.mesh.meshutil import cfg

    async with nodes(1) as (a,):
        async with AviP2p.start(cfg(event_buffer=8)) as (slow, slow_events):
            await a.h.dial(slow.handle().listen_addresses()[0])
            sid = await a.h.request_audio_stream(slow.local_peer_id)
            # Drain until the request shows up, then stop reading.
            with trio.fail_after(10):
                async for ev in slow_events:
                    if isinstance(ev, AudioStreamRequested):
                        break
            await slow.handle().accept_audio_stream(sid)
            for i in range(200):
                await a.h.send_audio(sid, i.to_bytes(2, "big"))
                await trio.sleep(0.001)
            # Until the node has read all 200 (a fixed sleep was too short on a busy machine).
            await wait_until(lambda: next(s for s in slow.stats().streams if s.stream_id == sid).frames_received
                             >= 200, 30, "all 200 frames read")
            # 8 wait in the buffer and one in the hand of the task that feeds the channel.
            assert slow.stats().audio_frames_dropped >= 200 - 8 - 1
            await a.h.close_audio_stream(sid)
            await trio.sleep(0.5)
            kinds = []
            with trio.fail_after(10):
                async for ev in slow_events:
                    kinds.append(ev)
                    if isinstance(ev, AudioStreamClosed):
                        break
            frames = [int.from_bytes(e.data, "big") for e in kinds if isinstance(e, AudioData)]
            assert frames == sorted(frames) and frames[-1] == 199  # the newest survive


async def test_handle_errors_are_typed():
    async with nodes(2) as (a, b):
        with pytest.raises(UnknownPeerError):
            await a.h.request_audio_stream(b.peer_id)  # not connected
        with pytest.raises(UnknownStreamError):
            await a.h.accept_audio_stream(12345)
        await chain([a, b])
        sid = await open_stream(a, b)
        with pytest.raises(ProtocolError):
            await a.h.accept_audio_stream(sid)  # we requested it; only b may accept
        handle = a.h
    with pytest.raises(NotRunningError):
        await handle.publish("t", b"x")
    with pytest.raises(NotRunningError):
        await handle.send_audio(sid, b"x")


async def test_a_request_carries_its_context_and_a_node_of_the_previous_version_gets_the_stream_without_it():
    """/avi/audio/1.1.0: the REQUEST carries the requester's context (what the stream is for) to
    the other side's AudioStreamRequested. A node that only speaks 1.0.0 (the version before)
    is offered 1.0.0 as well and gets the same stream without the context, and works."""
    from agent.mesh._frames import PROTOCOL_ID_CONTEXT

    async with nodes(3) as (a, b, old):
        old.node._host.remove_stream_handler(PROTOCOL_ID_CONTEXT)  # before identify tells a
        await chain([a, b])
        await chain([a, old])
        sid = await a.h.request_audio_stream(b.peer_id, context=b"talk 7 of a")
        [req] = await b.wait_for(lambda e: requested(e) and e.stream_id == sid)
        assert req.context == b"talk 7 of a"
        plain = await a.h.request_audio_stream(b.peer_id)
        [req] = await b.wait_for(lambda e: requested(e) and e.stream_id == plain)
        assert req.context == b""
        sid_old = await a.h.request_audio_stream(old.peer_id, context=b"talk 7 of a")
        [req] = await old.wait_for(lambda e: requested(e) and e.stream_id == sid_old)
        assert req.context == b""
        await old.h.accept_audio_stream(sid_old)
        await a.wait_for(lambda e: isinstance(e, AudioStreamAccepted) and e.stream_id == sid_old)
        await a.h.send_audio(sid_old, b"\x05" * 40, timestamp_us=99)
        [frame] = await old.wait_for(audio(sid_old))
        assert frame.data == b"\x05" * 40
        with pytest.raises(LimitError):
            await a.h.request_audio_stream(b.peer_id, context=b"x" * 1025)
