"""Every public async method of ``agent.talk`` is a checkpoint (tests/checkpoints.py), also where
it has nothing to wait for: ``handle_event`` with an event talk ignores. A real node on
127.0.0.1 and the fake devices."""

from __future__ import annotations

import trio
import trio.testing

import agent.talk
from agent.config import AgentConfig
from agent.mesh import Message, PeerId
from agent.talk import Talk
from hw.audio import NullSink, ToneSource
from hw.gpio import FakeButton, FakeLed
from tests.checkpoints import Checkpoints, public_async
from tests.mesh.meshutil import nodes


async def test_every_public_async_call_of_talk_is_a_checkpoint() -> None:
    ck = Checkpoints()
    async with nodes(1) as (n,), ToneSource() as source, NullSink() as sink, FakeButton() as button, \
            FakeLed("idle") as led:
        talk = Talk(AgentConfig(node={"name": "a"}), n.h, source, sink, button, led)
        with ck.check("Talk.handle_event"):
            await talk.handle_event(Message(PeerId("12D3KooWnobody"), "not-talk", b"x"))
        with ck.check("Talk.run"), trio.move_on_after(0.5):  # runs until cancelled
            await talk.run()
    ck.verify(public_async(agent.talk))


class _RecordingHandle:
    """The handle calls talk makes here; like the mesh's, each is a checkpoint. ``gates``: a send
    of (stream, capture time) waits for that event (to stage an interleaving)."""

    local_peer_id = PeerId("12D3KooWtalker")

    def __init__(self) -> None:
        self.sent: list[tuple[int, int]] = []
        self.gates: dict[tuple[int, int], trio.Event] = {}

    async def request_audio_stream(self, peer: PeerId, *, context: bytes = b"") -> int:
        await trio.lowlevel.checkpoint()
        return 7

    async def send_audio(self, sid: int, data: bytes, *, timestamp_us: int, codec: int) -> None:
        self.sent.append((sid, timestamp_us))
        await trio.lowlevel.checkpoint()
        gate = self.gates.get((sid, timestamp_us))
        if gate is not None:
            await gate.wait()


async def test_frames_captured_while_a_new_stream_gets_its_preroll_follow_it_in_order() -> None:
    """``send_audio`` is a checkpoint, so the capture task runs between two frames of a new stream's
    pre-roll: what it captures meanwhile must go out after the pre-roll, not inside it (the
    receiver plays by sequence number, which the mesh gives in sending order)."""
    from agent.talk.codec import PCM_S16LE
    from agent.talk.engine import _Out

    handle = _RecordingHandle()
    async with ToneSource() as source, NullSink() as sink, FakeButton() as button, FakeLed("idle") as led:
        talk = Talk(AgentConfig(node={"name": "a"}), handle, source, sink, button, led)  # type: ignore[arg-type]
        talk._encoder_for(PCM_S16LE)
        frame = bytes(source.format.frame_bytes)
        for ts in range(1, 6):  # captured while the stream was being opened
            talk._preroll[PCM_S16LE].append((frame, ts))
        peer = PeerId("12D3KooWlistener")
        entry = talk._out[peer] = _Out(peer, talk._tx_gen, codec=PCM_S16LE)

        async def capture() -> None:  # the capture task: two frames while the pre-roll goes out
            while not handle.sent:
                await trio.lowlevel.checkpoint()
            for ts in (6, 7):
                await talk._send_payload(PCM_S16LE, frame, ts)

        async with trio.open_nursery() as n:
            n.start_soon(talk._request, entry)
            n.start_soon(capture)
        await talk._send_payload(PCM_S16LE, frame, 8)  # live
    assert handle.sent == [(7, ts) for ts in range(1, 9)]
    assert talk.frames_sent == 8


async def test_a_frame_sent_with_a_new_streams_preroll_is_not_sent_again_live() -> None:
    """The capture task sends a frame to listener X and pauses there (send_audio is a checkpoint);
    meanwhile Y's stream opens and its pre-roll, which already holds that frame, goes out. When
    the capture task goes on to Y, Y must not get the frame a second time."""
    from agent.talk.codec import PCM_S16LE
    from agent.talk.engine import _Out

    handle = _RecordingHandle()
    async with ToneSource() as source, NullSink() as sink, FakeButton() as button, FakeLed("idle") as led:
        talk = Talk(AgentConfig(node={"name": "a"}), handle, source, sink, button, led)  # type: ignore[arg-type]
        talk._encoder_for(PCM_S16LE)
        frame = bytes(source.format.frame_bytes)
        for ts in range(1, 6):
            talk._preroll[PCM_S16LE].append((frame, ts))
        x, y = PeerId("12D3KooWx"), PeerId("12D3KooWy")
        talk._out[x] = _Out(x, talk._tx_gen, stream_id=1, codec=PCM_S16LE)  # already streaming
        opening = talk._out[y] = _Out(y, talk._tx_gen, codec=PCM_S16LE)     # its stream opens now
        handle.gates[(1, 6)] = x_sent = trio.Event()

        async def open_y_then_release_x() -> None:
            await talk._request(opening)  # the pre-roll: 1-5 and the 6 the capture task holds
            x_sent.set()

        async with trio.open_nursery() as n:
            n.start_soon(talk._send_payload, PCM_S16LE, frame, 6)  # to x (waits at the gate), then y
            await trio.testing.wait_all_tasks_blocked()
            n.start_soon(open_y_then_release_x)
    assert [ts for sid, ts in handle.sent if sid == 7] == [1, 2, 3, 4, 5, 6]
    assert [ts for sid, ts in handle.sent if sid == 1] == [6]
    assert talk.frames_sent == 7
