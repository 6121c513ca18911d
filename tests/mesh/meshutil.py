"""Helpers for mesh tests: start nodes on loopback, connect them, wait for events."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any

import trio

from agent.mesh import AviP2p, AviP2pConfig, AviP2pHandle, Event
from tests.poll import wait_until

def cfg(**overrides: Any) -> AviP2pConfig:
    return AviP2pConfig.local_only(**overrides)


class Node:
    """A started node with an event recorder: tests wait for events without racing the stream."""

    def __init__(self, node: AviP2p, events: trio.MemoryReceiveChannel[Event]) -> None:
        self.node = node
        self.events = events
        self.h: AviP2pHandle = node.handle()
        self.seen: list[Event] = []
        self._changed = trio.Event()

    @property
    def peer_id(self) -> str:
        return self.h.local_peer_id

    @property
    def addr(self) -> str:
        return self.h.listen_addresses()[0]

    async def record(self) -> None:
        async for ev in self.events:
            self.seen.append(ev)
            self._changed.set()
            self._changed = trio.Event()

    async def wait_for(self, pred: Callable[[Event], bool], timeout: float = 30.0,
                       count: int = 1) -> list[Event]:
        """Wait until `count` recorded events match `pred`; returns them. The timeout is a hang
        guard (events on loopback come within milliseconds when idle; a load average of 30 on
        this 2-core machine stretches that a lot), not a speed check."""
        with trio.fail_after(timeout):
            while True:
                hits = [e for e in self.seen if pred(e)]
                if len(hits) >= count:
                    return hits
                await self._changed.wait()

    def of(self, kind: type) -> list[Any]:
        return [e for e in self.seen if isinstance(e, kind)]


@asynccontextmanager
async def nodes(n: int, **overrides: Any) -> AsyncIterator[list[Node]]:
    """Start `n` nodes (each recording its events) and stop them all on exit."""
    async with AsyncExitStack() as stack:
        nursery = await stack.enter_async_context(trio.open_nursery())
        out = []
        for _ in range(n):
            node, events = await stack.enter_async_context(AviP2p.start(cfg(**overrides)))
            rec = Node(node, events)
            nursery.start_soon(rec.record)
            out.append(rec)
        try:
            yield out
        finally:
            nursery.cancel_scope.cancel()


async def until_connected(n: Node, peer: str, timeout: float = 10.0) -> None:
    """Wait until `n` lists `peer` as connected. Each side admits a new connection on its own
    (admission protocol), so the dialler's `dial()` may return before the other side lists it,
    and a plain libp2p peer is listed once its admission question failed."""
    await wait_until(lambda: peer in n.h.connected_peers(), timeout, f"{peer} to be connected", step=0.02)


async def until_meshed(ns: list[Node], topic: str, timeout: float = 30.0) -> None:
    """Wait until GossipSub has every connected neighbour of each node in its mesh for `topic`
    (all of them subscribe): until then a message may reach nobody. The mesh forms at the
    heartbeat after subscriptions are known (1 s idle; later on a busy machine, so no fixed
    sleep). There is no public API for the router's mesh: this reads the node's internals."""
    with trio.fail_after(timeout):
        while True:
            if all(set(n.h.connected_peers())
                   <= {p.to_base58() for p in n.node._router.mesh.get(topic, ())} for n in ns):
                return
            await trio.sleep(0.05)


async def connect(a: Node, b: Node) -> None:
    await a.h.dial(b.addr)


async def chain(ns: list[Node]) -> None:
    """Connect n0-n1-n2-... in a line."""
    for a, b in zip(ns, ns[1:]):
        await connect(a, b)
