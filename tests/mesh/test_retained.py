"""Retained messages: a newly connected peer gets each origin's latest message on a retained
topic from its neighbour at once (signed originals, checked again), not after the next
periodic publication; what it already saw through pub/sub is not delivered twice."""

from __future__ import annotations

import trio

from agent.mesh import Message

from .meshutil import nodes, until_connected


async def test_a_newcomer_gets_the_latest_message_of_each_origin_from_its_neighbour() -> None:
    async with nodes(3, retained_topics=["st"]) as (a, b, c):
        for n in (a, b, c):
            await n.h.subscribe("st")
        await a.h.dial(b.addr)
        await until_connected(b, a.peer_id)
        await trio.sleep(1.5)  # GossipSub mesh (heartbeat 1 s)
        await a.h.publish("st", b"a-1")
        await a.h.publish("st", b"a-2")
        await b.h.publish("st", b"b-1")
        await b.wait_for(lambda e: isinstance(e, Message) and e.data == b"a-2")
        await trio.sleep(6.5)  # past GossipSub's own message cache (5 heartbeats), which gossips too
        # c connects to b only, and publishes nothing: a's and b's latest arrive from b.
        await c.h.dial(b.addr)
        got = await c.wait_for(lambda e: isinstance(e, Message) and e.topic == "st", count=2, timeout=5.0)
        assert sorted(e.data for e in got) == [b"a-2", b"b-1"]  # the latest only, no a-1
        assert {e.peer_id for e in got} == {a.peer_id, b.peer_id}  # the origin, not the neighbour
        assert all(e.age_s > 0.3 for e in got)
        # A later connection to a does not deliver a's message again (already seen).
        await c.h.dial(a.addr)
        await trio.sleep(1.0)
        assert len([e for e in c.seen if isinstance(e, Message) and e.data == b"a-2"]) == 1
        assert c.node.retained_received == 2


async def test_topics_not_retained_are_not_handed_over() -> None:
    async with nodes(2) as (a, b):
        for n in (a, b):
            await n.h.subscribe("st")
        await a.h.publish("st", b"alone")  # nobody to hear it
        await trio.sleep(6.5)  # past GossipSub's own message cache (5 heartbeats), which gossips it
        await b.h.dial(a.addr)
        await trio.sleep(1.5)
        assert not [e for e in b.seen if isinstance(e, Message)]
