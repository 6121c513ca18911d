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
        # The handed-over copy keeps its origin's sequence number: newer than a's first message.
        first_a = next(e for e in b.seen if isinstance(e, Message) and e.data == b"a-1")
        assert next(e for e in got if e.data == b"a-2").seqno == first_a.seqno + 1
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


# --- RetainedStore without sockets -------------------------------------------------------------

def _msg(origin: bytes, topic: str, seqno: int, data: bytes = b"x"):  # type: ignore[no-untyped-def]
    from libp2p.pubsub.pb import rpc_pb2

    return rpc_pb2.Message(from_id=origin, data=data, seqno=seqno.to_bytes(8, "big"), topicIDs=[topic])


def test_store_keeps_the_latest_per_origin_and_topic_and_hands_over_the_others() -> None:
    from agent.mesh._retained import RetainedStore

    store = RetainedStore(["st"], limit=3)
    store.keep(_msg(b"A", "st", 1), 0.0)
    store.keep(_msg(b"A", "other", 1), 0.0)  # not a retained topic
    store.keep(_msg(b"A", "st", 2, b"new"), 1.0)
    store.keep(_msg(b"B", "st", 1), 1.5)
    assert len(store) == 2
    assert not store.is_news(_msg(b"A", "st", 2), "st") and store.is_news(_msg(b"A", "st", 3), "st")
    got = list(RetainedStore.decode(store.encode_for(b"B", 3.0), 65536))
    assert [(m.from_id, m.data, age) for m, age in got] == [(b"A", b"new", 2000)]  # not B's own
    for i in range(5):
        store.keep(_msg(b"C%d" % i, "st", 1), 4.0)
    assert len(store) == 3  # bounded, the least recently updated dropped first
    assert [m.from_id for m, _ in RetainedStore.decode(store.encode_for(b"Z", 4.0), 65536)] == [b"C2", b"C3", b"C4"]


def test_decode_stops_at_a_truncated_or_oversized_entry_and_flags_garbage() -> None:
    from agent.mesh._retained import RetainedStore

    store = RetainedStore(["st"])
    store.keep(_msg(b"A", "st", 1), 0.0)
    whole = store.encode_for(b"Z", 0.0)
    assert len(list(RetainedStore.decode(whole, 65536))) == 1
    assert list(RetainedStore.decode(whole[:-1], 65536)) == []  # truncated
    assert list(RetainedStore.decode(whole, 4)) == []  # longer than the limit
    garbage = (3).to_bytes(4, "big") + (7).to_bytes(4, "big") + b"\xff\xff\xff"
    assert list(RetainedStore.decode(garbage + whole, 65536))[0] == (None, 7)
