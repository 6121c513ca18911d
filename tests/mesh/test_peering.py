"""Peer management without sockets (agent/mesh/_peering.py): the bounded-degree dial policy, and
`PeerManager`'s decisions as tables: who may connect and why not, what discovery's reports lead
to, back-off arithmetic, eviction."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from agent.mesh._peering import (FIRST_ROUND_S, REDIAL_MAX_S, REFUSED_BACKOFF_S, Intake, PeerManager,
                                choose_dials, dial_budget)
from agent.mesh._redial import RedialPolicy


def test_budget_counts_connected_and_in_flight_dials() -> None:
    assert dial_budget(0, 0, 8) == 8
    assert dial_budget(5, 2, 8) == 1
    assert dial_budget(8, 0, 8) == 0
    assert dial_budget(20, 3, 8) == 0  # above the target (inbound peers): never negative


def test_no_dial_at_the_target_and_never_a_connected_or_dialling_peer() -> None:
    rng = random.Random(1)
    peers = [f"p{i}" for i in range(50)]
    assert choose_dials(peers, set(peers[:8]), set(), 8, rng) == []
    got = choose_dials(peers, set(peers[:5]), {"p5"}, 8, rng)
    assert len(got) == 2 and not set(got) & {"p0", "p1", "p2", "p3", "p4", "p5"}


def test_bootstrap_peers_first_then_a_random_sample() -> None:
    rng = random.Random(2)
    peers = [f"p{i}" for i in range(50)]
    got = choose_dials(peers, set(), set(), 3, rng, always={"p49"})
    assert got[0] == "p49" and len(got) == 3


def test_choice_is_spread_over_the_candidates_not_the_first_heard() -> None:
    """50 newcomers each picking 8 of the same 49 candidates: no candidate is picked by all
    (a hub), and every candidate is picked by someone."""
    rng = random.Random(3)
    peers = [f"p{i}" for i in range(49)]
    picks = Counter(p for _ in range(50) for p in choose_dials(peers, set(), set(), 8, rng))
    assert set(picks) == set(peers)
    assert max(picks.values()) < 25  # expected 8.2 each; 25 is > 5 sigma away


def test_duplicate_candidates_are_dialled_once() -> None:
    assert choose_dials(["a", "a", "a"], set(), set(), 8, random.Random(0)) == ["a"]


# --- PeerManager ---------------------------------------------------------------------------------

def manager(*, allowed: tuple[str, ...] = (), max_peers: int = 3, dial_target: int = 2,
            connected: tuple[str, ...] = (), admitting: tuple[str, ...] = (),
            dialing: tuple[str, ...] = ()) -> PeerManager[str]:
    """A manager for node "ME" (addresses are strings "@peer"), already in the given state."""
    m: PeerManager[str] = PeerManager(
        "ME", allowed=allowed, max_peers=max_peers, dial_target=dial_target,
        redial=RedialPolicy(first_s=1.0, max_s=8.0, forget_after_s=60.0, jitter=0.0), rng=random.Random(0))
    for p in connected:
        assert m.admitted(p, f"@{p}")
    for p in admitting:
        assert m.start_admission(p)
    for p in dialing:
        m.dial_started(p)
    return m


WHO_MAY_CONNECT = [
    # allowed, connected, admitting, peer -> refusal reason
    ((), (), (), "X", None),
    (("A",), (), (), "X", "not in allowed_peers"),
    (("X",), (), (), "X", None),
    ((), ("A", "B"), (), "X", None),  # the last slot
    ((), ("A", "B", "C"), (), "X", "max_peers (3) reached"),
    ((), ("A", "B"), ("C",), "X", "max_peers (3) reached"),  # a peer being admitted holds a slot
    ((), ("A", "B"), ("X",), "X", None),  # ... but not against itself
    ((), ("A", "B", "X"), (), "X", None),  # connected already: a second connection is no new peer
    (("A", "B", "C"), ("A", "B", "C"), (), "X", "not in allowed_peers"),  # the allow list is asked first
]


@pytest.mark.parametrize("allowed, connected, admitting, peer, reason", WHO_MAY_CONNECT)
def test_who_may_connect_and_why_not(allowed, connected, admitting, peer, reason) -> None:
    m = manager(allowed=allowed, connected=connected, admitting=admitting)
    assert m.refusal_reason(peer) == reason
    assert m.is_allowed(peer) == (not allowed or peer in allowed)
    # A connection opened by or to a refused peer is refused and counted; others are kept.
    assert m.opened(peer) == reason and m.refused == (reason is not None)


def test_admission_runs_once_per_peer_and_connects_once() -> None:
    m = manager()
    assert m.start_admission("A") and not m.start_admission("A")  # a second connection waits
    m.admission_ended("A")
    assert m.admitted("A", "/ip4/1.2.3.4/tcp/1") and not m.admitted("A", "/ip4/1.2.3.4/tcp/2")
    assert m.connected == {"A": "/ip4/1.2.3.4/tcp/1"} and not m.start_admission("A")
    m.lost("A", 10.0)
    assert m.connected == {} and m.redial.due(10.5) == [] and m.redial.due(11.0) == ["A"]


INTAKE = [
    # state (manager kwargs), what happened before (peer refused us at t=0?), peer, now -> Intake
    (dict(), False, "X", 0.0, Intake(announce=True, dial=True)),
    (dict(), False, "ME", 0.0, Intake(announce=False, dial=False)),  # ourselves (mDNS hears us too)
    (dict(allowed=("A",)), False, "X", 0.0, Intake(announce=False, dial=False)),
    (dict(connected=("X",)), False, "X", 0.0, Intake(announce=True, dial=False)),
    (dict(connected=("A", "B")), False, "X", 0.0, Intake(announce=True, dial=False)),  # at the target
    (dict(connected=("A",), admitting=("B",)), False, "X", 0.0, Intake(announce=True, dial=False)),
    (dict(connected=("A",), dialing=("B",)), False, "X", 0.0, Intake(announce=True, dial=False)),
    (dict(dialing=("X",)), False, "X", 0.0, Intake(announce=True, dial=False)),  # a dial in flight
    (dict(), True, "X", REFUSED_BACKOFF_S - 0.1, Intake(announce=True, dial=False)),  # refused us lately
    (dict(), True, "X", REFUSED_BACKOFF_S, Intake(announce=True, dial=True)),
    (dict(max_peers=1, dial_target=1, admitting=("A",)), False, "X", 0.0, Intake(announce=True, dial=False)),
]


@pytest.mark.parametrize("state, refused, peer, now, expected", INTAKE)
def test_what_a_discovered_peer_leads_to(state, refused, peer, now, expected) -> None:
    m = manager(**state)
    if refused:
        m.refused_by(peer, "max_peers (3) reached", 0.0)
    assert m.found(peer, f"@{peer}", now) == expected
    assert (peer in m.known) == (peer != "ME" and m.is_allowed(peer))


def test_a_peer_reported_again_keeps_its_back_off_and_is_announced_once() -> None:
    m = manager()
    assert m.found("X", "@X", 0.0) == Intake(announce=True, dial=True)
    m.dial_started("X")
    m.dial_ended("X")  # the dial failed
    assert m.found("X", "@X", 0.5) == Intake(announce=False, dial=False)  # next dial at 1.0
    assert m.found("X", "@X", 1.0) == Intake(announce=False, dial=True)
    assert m.found("X", "@X", 2.0) == Intake(announce=False, dial=False)  # then at 3.0 (1, 2, 4 ...)
    assert m.redial.attempts("X") == 2


def test_refusal_back_off_and_an_explicit_connect_asks_again() -> None:
    m = manager()
    m.remember("X", "@X")
    m.refused_by("X", "not in allowed_peers", 100.0)
    assert "X" not in m.known and m.refusal_from("X") == "not in allowed_peers"
    assert not m.may_dial("X", 100.0 + REFUSED_BACKOFF_S - 0.1) and m.may_dial("X", 100.0 + REFUSED_BACKOFF_S)
    m.connect_requested("X")
    assert m.refusal_from("X") is None and m.may_dial("X", 100.0)
    m.refused_by("X", "limit", 200.0)
    assert m.admitted("X", "@X") and m.refusal_from("X") is None  # admitted after all: forgiven


NEXT_DELAY = [
    # delay, woken, connected, known, interval -> next delay
    (8.0, True, (), (), 10.0, FIRST_ROUND_S),  # discover_peers(), a peer lost or refusing: at once
    (0.5, False, ("A", "B"), ("A", "B"), 10.0, 1.0),  # doubling while nothing changes ...
    (8.0, False, ("A", "B"), ("A", "B"), 10.0, 10.0),  # ... up to discovery_interval_s
    (10.0, False, (), (), 10.0, 10.0),  # nobody known: nothing missing
    (0.5, False, ("A",), ("A", "B"), 10.0, 1.0),
    (1.5, False, ("A",), ("A", "B"), 10.0, REDIAL_MAX_S),  # a known peer is missing: at most 2 s
    (1.0, False, ("A",), ("A", "B"), 1.0, 1.0),  # ... or discovery_interval_s when shorter
    (8.0, False, ("A", "B"), ("A", "B", "C"), 10.0, 10.0),  # at the target, C is not needed
]


@pytest.mark.parametrize("delay, woken, connected, known, interval, expected", NEXT_DELAY)
def test_discovery_loop_back_off(delay, woken, connected, known, interval, expected) -> None:
    m = manager(connected=connected)
    for p in known:
        m.remember(p, f"@{p}")
    assert m.next_delay(delay, woken=woken, interval=interval) == expected


def test_the_loop_wakes_for_the_next_redial_only_below_the_target() -> None:
    m = manager(connected=("A",))
    m.lost("A", 0.0)  # redial due at 1.0
    assert m.sleep_for(8.0, 0.0) == 1.0 and m.sleep_for(0.5, 0.0) == 0.5
    assert m.sleep_for(8.0, 0.99) == 0.05  # never a busy loop
    full = manager(connected=("B", "C"))
    full.lost("B", 0.0)
    assert full.admitted("D", "@D")
    assert full.sleep_for(8.0, 0.0) == 8.0  # at the target again: no early wake-up
    assert manager().sleep_for(8.0, 0.0) == 8.0  # nobody missing


def test_known_and_announced_peers_are_bounded_oldest_first() -> None:
    m = manager(max_peers=2, dial_target=1)  # keeps 8 of each
    for i in range(12):
        m.found(f"P{i}", f"@P{i}", 0.0)
    assert list(m.known) == [f"P{i}" for i in range(4, 12)]
    assert list(m.announced) == [f"P{i}" for i in range(4, 12)]
    m.remember("P4", "@P4-new")  # new addresses do not make an entry young again
    m.remember("P12", "@P12")
    assert "P4" not in m.known and m.known["P5"] == "@P5"


def test_a_round_dials_bootstrap_first_within_the_budget_and_forgets_the_departed() -> None:
    m = manager(dial_target=2)
    m.add_bootstrap("BOOT", "@BOOT")
    for p in ("X", "Y", "Z"):
        m.remember(p, f"@{p}")
    first = m.plan_round(0.0)
    assert first.forget == [] and len(first.dial) == 2 and first.dial[0] == ("BOOT", "@BOOT")
    for p, _ in first.dial:
        m.dial_started(p)
    assert m.plan_round(0.0).dial == []  # the budget is taken by the dials in flight
    for p, _ in first.dial:
        m.dial_ended(p)  # both failed
    # Nobody answers for 60 s (forget_after_s): the departed are forgotten, bootstrap never.
    t = 0.0
    while t <= 70.0:
        m.plan_round(t)
        t += 0.5
    assert set(m.known) == {"BOOT"} and m.redial.forgotten == 3
    # Refused by BOOT: out of `known` until the next round puts it back, not dialled for 30 s.
    m.refused_by("BOOT", "max_peers (24) reached", t)
    assert "BOOT" not in m.known
    assert m.plan_round(t + 8.0).dial == [] and "BOOT" in m.known
    assert m.plan_round(t + REFUSED_BACKOFF_S + 8.0).dial == [("BOOT", "@BOOT")]


def test_a_round_counts_connections_being_admitted() -> None:
    m = manager(dial_target=2, admitting=("A",))
    for p in ("X", "Y"):
        m.remember(p, f"@{p}")
    assert len(m.plan_round(0.0).dial) == 1


def test_dht_rounds_only_with_a_neighbour_and_too_few_known() -> None:
    assert not manager().wants_dht_round()
    m = manager(connected=("A",))
    m.remember("A", "@A")
    assert m.wants_dht_round()
    m.remember("B", "@B")
    assert not m.wants_dht_round()
