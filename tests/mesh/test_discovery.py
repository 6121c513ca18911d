"""Discovery: bootstrap peers, the Kademlia DHT, mDNS on loopback."""

from __future__ import annotations

import trio

from agent.mesh import PeerConnected, PeerDisconnected, PeerDiscovered
from tests.mesh.meshutil import Node, nodes

from contextlib import AsyncExitStack

from agent.mesh import AviP2p
from tests.mesh.meshutil import cfg


async def start(stack: AsyncExitStack, nursery: trio.Nursery, **overrides) -> Node:
    node, events = await stack.enter_async_context(AviP2p.start(cfg(**overrides)))
    rec = Node(node, events)
    nursery.start_soon(rec.record)
    return rec


def connected_to(peer):
    return lambda e: isinstance(e, PeerConnected) and e.peer_id == peer


async def run_node(task_status=trio.TASK_STATUS_IGNORED, **overrides) -> None:
    """Run a node in its own task until `rec.stop` is cancelled (so it can stop first)."""
    with trio.CancelScope() as scope:
        async with AviP2p.start(cfg(**overrides)) as (node, events), trio.open_nursery() as n:
            rec = Node(node, events)
            rec.stop = scope
            n.start_soon(rec.record)
            task_status.started(rec)
            await trio.sleep_forever()


async def test_bootstrap_peer_is_connected_and_reconnected_after_it_restarts(tmp_path):
    key = tmp_path / "b.key"
    async with AsyncExitStack() as stack:
        nursery = await stack.enter_async_context(trio.open_nursery())
        b = await nursery.start(lambda task_status: run_node(task_status, identity_path=key))
        port = int(b.addr.split("/tcp/")[1].split("/")[0])
        a = await start(stack, nursery, bootstrap_peers=[b.addr])
        await a.wait_for(connected_to(b.peer_id))
        # b goes away: a notices; b comes back on the same port with the same identity: a rejoins.
        b.stop.cancel()
        await a.wait_for(lambda e: isinstance(e, PeerDisconnected) and e.peer_id == b.peer_id)
        b2 = await nursery.start(lambda task_status: run_node(task_status, identity_path=key,
                                                              listen_port=port))
        assert b2.peer_id == b.peer_id
        await a.wait_for(connected_to(b.peer_id), count=2, timeout=30)
        nursery.cancel_scope.cancel()


async def test_line_a_b_c_a_finds_c_through_the_dht():
    async with AsyncExitStack() as stack:
        nursery = await stack.enter_async_context(trio.open_nursery())
        b = await start(stack, nursery, enable_kad=True)
        a = await start(stack, nursery, enable_kad=True, bootstrap_peers=[b.addr])
        c = await start(stack, nursery, enable_kad=True, bootstrap_peers=[b.addr])
        await a.wait_for(connected_to(b.peer_id))
        await c.wait_for(connected_to(b.peer_id))
        await trio.sleep(1.0)  # let identify fill B's routing table
        await a.h.discover_peers()
        await a.wait_for(lambda e: isinstance(e, PeerDiscovered) and e.peer_id == c.peer_id, timeout=30)
        await a.wait_for(connected_to(c.peer_id), timeout=30)
        assert c.peer_id in a.h.connected_peers()
        nursery.cancel_scope.cancel()


async def test_mdns_on_loopback_finds_and_connects():
    async with nodes(2, enable_mdns=True) as (a, b):
        await a.wait_for(connected_to(b.peer_id), timeout=30)
        await b.wait_for(connected_to(a.peer_id), timeout=30)
        assert any(isinstance(e, PeerDiscovered) and e.peer_id == b.peer_id for e in a.seen) or \
               any(isinstance(e, PeerDiscovered) and e.peer_id == a.peer_id for e in b.seen)
