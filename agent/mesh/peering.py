"""Bounded degree: which known peers to dial. Pure (no I/O, randomness passed in).

A node keeps about `target_peers` connections, not one to every peer it hears of: pub/sub
(GossipSub forwards to a few mesh peers) and the DHT need only a few, and every connection costs
keepalives, gossip and memory. Dialling stops at the target; peers that dial us are admitted up
to `max_peers` (a hard cap), so a connection graph forms in which every node has between
`target_peers` and `max_peers` links. Peers to dial are picked at random among the candidates
(the known peers we are not connected to): a random graph of degree ≥ 3 is connected with high
probability and has a small diameter, where "the first peers heard of" would make hubs of the
nodes that started first.

Redialling a departed peer (back-off, forgetting) is a separate policy; this module only
decides how many of the candidates to dial now and which.
"""

from __future__ import annotations

import random
from collections.abc import Collection, Sequence
from typing import TypeVar

__all__ = ["dial_budget", "choose_dials"]

P = TypeVar("P")


def dial_budget(connected: int, dialing: int, target: int) -> int:
    """How many more dials to start: enough to reach `target` counting dials in flight."""
    return max(0, target - connected - dialing)


def choose_dials(candidates: Sequence[P], connected: Collection[P], dialing: Collection[P], target: int,
                 rng: random.Random, *, always: Collection[P] = ()) -> list[P]:
    """The candidates to dial now: at most `dial_budget(...)` of them, `always` (bootstrap
    peers) first, then a random sample of the rest. Connected or in-flight peers are skipped."""
    budget = dial_budget(len(connected), len(dialing), target)
    if budget == 0:
        return []
    fresh = [p for p in dict.fromkeys(candidates) if p not in connected and p not in dialing]
    first = [p for p in fresh if p in always]
    rest = [p for p in fresh if p not in always]
    rng.shuffle(rest)
    return (first + rest)[:budget]
