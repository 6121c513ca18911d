"""GossipSub through the mesh API: real py-libp2p nodes over 127.0.0.1."""

from __future__ import annotations

import trio

from agent.mesh import Message, PubSubError, LimitError
from tests.mesh.meshutil import chain, nodes, until_meshed

import pytest


def msg_on(topic: str):
    return lambda e: isinstance(e, Message) and e.topic == topic


async def wait_mesh(ns, topic: str) -> None:
    """Subscribe all, then wait until GossipSub formed its mesh (heartbeat is 1 s)."""
    for n in ns:
        await n.h.subscribe(topic)
    await until_meshed(ns, topic)


async def test_three_nodes_each_hears_the_others():
    async with nodes(3) as ns:
        await chain(ns)
        await wait_mesh(ns, "lobby")
        for n in ns:
            await n.h.publish("lobby", f"hi from {n.peer_id}".encode())
        for n in ns:
            got = await n.wait_for(msg_on("lobby"), count=2)
            senders = {m.peer_id for m in got}
            assert senders == {o.peer_id for o in ns if o is not n}
            assert all(m.data == f"hi from {m.peer_id}".encode() for m in got)
            # Our own publications are not echoed back to us.
            assert n.peer_id not in senders


async def test_five_node_line_reaches_two_hops_and_a_burst_arrives_whole():
    async with nodes(5) as ns:
        await chain(ns)  # n0 - n1 - n2 - n3 - n4: n0 and n4 are four hops apart
        await wait_mesh(ns, "fleet")
        await ns[0].h.publish("fleet", b"from the end")
        for n in ns[1:]:
            [m] = await n.wait_for(msg_on("fleet"))
            assert (m.peer_id, m.data) == (ns[0].peer_id, b"from the end")

        # A burst of 100 published at once reaches every subscriber whole and in order.
        for i in range(100):
            await ns[2].h.publish("fleet", b"burst %03d" % i)
        for n in ns:
            if n is ns[2]:
                continue
            got = await n.wait_for(lambda e: msg_on("fleet")(e) and e.data.startswith(b"burst"),
                                   count=100, timeout=20)
            assert sorted(m.data for m in got) == [b"burst %03d" % i for i in range(100)]
            # The origin's sequence numbers order its messages (whatever order they arrive in).
            by_seqno = [m.data for m in sorted(got, key=lambda m: m.seqno)]
            assert by_seqno == [b"burst %03d" % i for i in range(100)] and got[0].seqno > 0
        assert all(n.node.stats().messages_dropped == 0 for n in ns)
        assert all(n.node.stats().messages_unsent == 0 for n in ns)


async def test_unsubscribe_stops_delivery():
    async with nodes(2) as (a, b):
        await chain([a, b])
        await wait_mesh([a, b], "t")
        await a.h.publish("t", b"one")
        await b.wait_for(msg_on("t"))
        await b.h.unsubscribe("t")
        await trio.sleep(1.5)
        await a.h.publish("t", b"two")
        await trio.sleep(1.5)
        assert [m.data for m in b.of(Message)] == [b"one"]


async def test_publish_errors_are_typed():
    async with nodes(1, max_message_size=2048) as (a,):
        with pytest.raises(PubSubError):
            await a.h.publish("", b"x")
        with pytest.raises(LimitError):
            await a.h.publish("t", bytes(4096))
