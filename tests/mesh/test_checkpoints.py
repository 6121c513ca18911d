"""Every public async method of ``agent.mesh`` is a checkpoint (tests/checkpoints.py), also where
it has nothing to wait for: ``discover_peers`` (sets a flag), ``send_audio`` (queues a frame), a
second ``shutdown``. Two real nodes on 127.0.0.1 (no discovery)."""

from __future__ import annotations

import trio

import agent.mesh
from agent.mesh import AudioStreamClosed, AudioStreamRequested, AviP2p, PeerId, StreamId
from tests.checkpoints import Checkpoints, public_async

from .meshutil import Node, cfg, nodes, until_connected


def _requested(sid: StreamId):  # type: ignore[no-untyped-def]
    return lambda e: isinstance(e, AudioStreamRequested) and e.stream_id == sid


async def test_every_public_async_call_of_the_mesh_is_a_checkpoint() -> None:
    ck = Checkpoints()
    async with nodes(2) as (a, b):
        with ck.check("AviP2pHandle.dial"):
            await a.h.dial(b.addr)
        await until_connected(b, a.peer_id)
        for call in ("subscribe", "unsubscribe"):
            with ck.check(f"AviP2pHandle.{call}"):
                await getattr(a.h, call)("checkpoints")
        with ck.check("AviP2pHandle.publish"):
            await a.h.publish("checkpoints", b"x")
        with ck.check("AviP2pHandle.discover_peers"):
            await a.h.discover_peers()

        sid = await _stream(ck, a, b)
        with ck.check("AviP2pHandle.accept_audio_stream"):
            await b.h.accept_audio_stream(sid)
        with ck.check("AviP2pHandle.send_audio"):
            await a.h.send_audio(sid, bytes(640))
        with ck.check("AviP2pHandle.close_audio_stream"):
            await a.h.close_audio_stream(sid)

        sid = await _stream(ck, a, b)
        with ck.check("AviP2pHandle.reject_audio_stream"):
            await b.h.reject_audio_stream(sid, "busy")
        await a.wait_for(lambda e: isinstance(e, AudioStreamClosed) and e.stream_id == sid)

    with ck.check("AviP2p.start"):
        async with AviP2p.start(cfg()) as (node, _events):
            with ck.check("AviP2p.shutdown"):
                await node.shutdown()
    with ck.check("AviP2p.shutdown"):
        await node.shutdown()  # already stopped: returns at once, still a checkpoint

    ck.verify(public_async(agent.mesh))


async def _stream(ck: Checkpoints, a: Node, b: Node) -> StreamId:
    with ck.check("AviP2pHandle.request_audio_stream"):
        sid = await a.h.request_audio_stream(PeerId(b.peer_id))
    await b.wait_for(_requested(sid))
    return sid
