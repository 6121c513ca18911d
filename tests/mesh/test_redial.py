"""agent/mesh/_redial.py: back-off and forgetting of departed peers (sans-I/O, explicit time), and
the node using it: a departed peer is forgotten after forget_after_s, a bootstrap peer never."""

from __future__ import annotations

import random
from contextlib import AsyncExitStack

import pytest
import trio

from agent.mesh import PeerConnected, PeerDisconnected
from agent.mesh._redial import RedialPolicy
from tests.mesh.test_discovery import connected_to, run_node, start
from tests.poll import wait_until


def policy(**kw) -> RedialPolicy:
    kw.setdefault("jitter", 0.0)
    return RedialPolicy(first_s=1.0, max_s=8.0, forget_after_s=60.0, **kw)


def dial_times(p: RedialPolicy, peer: str, until: float, step: float = 0.25) -> list[float]:
    """Simulate the node's loop: dial whenever the policy says so; return the dial times."""
    times, t = [], 0.0
    while t <= until:
        if peer in p.due(t):
            p.attempted(peer, t)
            times.append(t)
        p.expired(t)
        t += step
    return times


def test_departed_peer_backs_off_then_is_forgotten() -> None:
    p = policy()
    p.missing("A", 0.0, departed=True)
    assert p.due(0.5) == [] and p.due(1.0) == ["A"]
    assert dial_times(p, "A", 100.0) == [1.0, 2.0, 4.0, 8.0, 16.0, 24.0, 32.0, 40.0, 48.0, 56.0]
    assert "A" not in p and p.forgotten == 1  # missing for 60 s: given up


def test_new_peer_is_due_at_once_and_repeated_reports_keep_the_back_off() -> None:
    p = policy()
    p.missing("B", 10.0)
    assert p.due(10.0) == ["B"]
    p.attempted("B", 10.0)
    p.attempted("B", 11.0)  # next at 13
    p.missing("B", 12.0)  # mDNS reports it again: no reset
    assert p.due(12.0) == [] and p.due(13.0) == ["B"]
    assert p.attempts("B") == 2


def test_connected_resets() -> None:
    p = policy()
    p.missing("C", 0.0, departed=True)
    for t in (1.0, 2.0, 4.0):
        p.attempted("C", t)
    p.connected("C")
    assert "C" not in p and p.next_at() is None
    p.missing("C", 50.0, departed=True)
    assert p.due(51.0) == ["C"]  # back to the first, short gap


def test_permanent_peers_are_never_forgotten_and_capped() -> None:
    p = policy()
    p.add_permanent("BOOT", 0.0)
    p.missing("BOOT", 0.0, departed=True)
    p.missing("X", 0.0, departed=True)
    p.missing("NEVER", 0.0)  # known, never dialled (bounded degree did not need it)
    p.attempted("X", 1.0)
    times = dial_times(p, "BOOT", 1000.0)
    assert "BOOT" in p and "X" not in p
    assert "NEVER" in p  # forgetting is for peers that fail to answer
    gaps = [b - a for a, b in zip(times, times[1:])]
    assert max(gaps) == 8.0 and gaps[-1] == 8.0


def test_next_at_names_the_next_dial_or_forget() -> None:
    p = policy()
    assert p.next_at() is None
    p.missing("A", 0.0, departed=True)
    assert p.next_at() == 1.0
    p.attempted("A", 1.0)
    assert p.next_at() == 2.0
    for t in (2.0, 4.0, 8.0, 16.0, 24.0, 32.0, 40.0, 48.0, 56.0):
        p.attempted("A", t)
    assert p.next_at() == 60.0  # the forget comes before the next dial (64)


def test_jitter_stays_within_bounds() -> None:
    p = RedialPolicy(first_s=1.0, max_s=8.0, forget_after_s=60.0, jitter=0.1, rng=random.Random(1))
    for i in range(200):
        peer = f"P{i}"
        p.missing(peer, 0.0)
        for _ in range(5):
            p.attempted(peer, 0.0)
        assert 7.2 <= p._missing[peer].next_at <= 8.8


def test_bounded() -> None:
    p = RedialPolicy(max_tracked=3, jitter=0.0)
    p.add_permanent("BOOT", 0.0)
    p.missing("BOOT", 0.0)
    for i in range(10):
        p.missing(f"P{i}", float(i + 1))
    assert len(p) == 3 and "BOOT" in p and "P9" in p and "P8" in p


@pytest.mark.parametrize("kw", [dict(first_s=0), dict(first_s=5, max_s=1), dict(max_s=10, forget_after_s=5),
                                dict(jitter=1.0)])
def test_bad_settings(kw) -> None:
    with pytest.raises(ValueError):
        RedialPolicy(**kw)


async def test_node_forgets_a_departed_peer_but_not_a_bootstrap_peer(tmp_path) -> None:
    """a knows b (bootstrap) and c (connected by dial). Both go away for longer than
    forget_after_s: a forgets c, keeps redialling b, and reconnects when b comes back."""
    key = tmp_path / "b.key"
    fast = dict(redial_max_s=1.0, forget_after_s=4.0)
    async with AsyncExitStack() as stack:
        nursery = await stack.enter_async_context(trio.open_nursery())
        b = await nursery.start(lambda task_status: run_node(task_status, identity_path=key))
        c = await nursery.start(run_node)
        port = int(b.addr.split("/tcp/")[1].split("/")[0])
        a = await start(stack, nursery, bootstrap_peers=[b.addr], **fast)
        await a.wait_for(connected_to(b.peer_id))
        await a.h.dial(c.addr)
        await a.wait_for(connected_to(c.peer_id))
        b.stop.cancel()
        c.stop.cancel()
        for gone in (b, c):
            await a.wait_for(lambda e, g=gone: isinstance(e, PeerDisconnected) and e.peer_id == g.peer_id)
        # forget_after_s (4 s) plus the loop's wake-up; 30 s is generous: busy machine
        await wait_until(lambda: a.node.stats().peers_forgotten >= 1, 30, "a to forget c", step=0.2)
        assert c.peer_id not in a.node._peering.known and b.peer_id in a.node._peering.known
        assert a.node.stats().peers_forgotten == 1
        b2 = await nursery.start(lambda task_status: run_node(task_status, identity_path=key, listen_port=port))
        await a.wait_for(connected_to(b.peer_id), count=2, timeout=30)
        assert b2.peer_id == b.peer_id
        assert sum(isinstance(e, PeerConnected) and e.peer_id == c.peer_id for e in a.seen) == 1
        nursery.cancel_scope.cancel()
