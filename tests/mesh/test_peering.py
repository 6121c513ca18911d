"""Bounded degree: the pure dial policy (agent/mesh/peering.py)."""

from __future__ import annotations

import random
from collections import Counter

from agent.mesh.peering import choose_dials, dial_budget


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
