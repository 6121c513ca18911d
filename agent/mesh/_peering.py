"""Peer management, sans-I/O: who may connect and why not, whom to dial and when, whom to forget.

`PeerManager` owns every peer-related fact of a node: the connected peers, the connections being
admitted, the dials in flight, the known peers (bounded memory of where peers listen), the peers
announced as discovered, and the peers that refused us (back-off). The node does the I/O (the
admission protocol, dials, disconnects, events) and tells the manager what happened; the manager
answers what to do. Every call that depends on time takes ``now`` (any monotonic clock: the node
uses ``trio.current_time()``), so the decisions are tested as tables, without sockets or waiting
(tests/mesh/test_peering.py).

Bounded degree: a node keeps about `dial_target` connections, not one to every peer it hears of:
pub/sub (GossipSub forwards to a few mesh peers) and the DHT need only a few, and every connection
costs keepalives, gossip and memory. Dialling stops at the target; peers that dial us are admitted
up to `max_peers` (a hard cap), so a connection graph forms in which every node has between
`dial_target` and `max_peers` links. Peers to dial are picked at random among the candidates (the
known peers we are not connected to): a random graph of degree >= 3 is connected with high
probability and has a small diameter, where "the first peers heard of" would make hubs of the nodes
that started first. Redialling a departed peer (back-off, forgetting) is `RedialPolicy`'s part.
"""

from __future__ import annotations

import random
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from ._redial import RedialPolicy

__all__ = ["dial_budget", "choose_dials", "PeerManager", "Intake", "Round",
           "REFUSED_BACKOFF_S", "REDIAL_MAX_S", "FIRST_ROUND_S", "MAX_KNOWN_PEERS_FACTOR"]

P = TypeVar("P")
A = TypeVar("A")  # where a peer listens: py-libp2p's PeerInfo in the node, anything in tests

# A peer that refused our connection (its allow list, its max_peers) is not dialled again by
# discovery for this long; an explicit dial asks again at once.
REFUSED_BACKOFF_S = 30.0
# While a known peer is missing, the discovery loop runs at least this often (a failed dial is
# cheap), so a node rejoins within seconds of the network coming back.
REDIAL_MAX_S = 2.0
# The discovery loop's first gap, and its gap again after every wake-up.
FIRST_ROUND_S = 0.5
# Known peers (and peers announced as discovered) kept: this many times max_peers.
MAX_KNOWN_PEERS_FACTOR = 4


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


@dataclass(frozen=True, slots=True)
class Intake:
    """What to do with a peer that discovery (mDNS, the DHT) reported."""

    announce: bool  # first report: emit PeerDiscovered
    dial: bool  # dial it now


@dataclass(frozen=True, slots=True)
class Round(Generic[A]):
    """One round of the discovery loop: peers given up on, and peers to dial (with where)."""

    forget: list[str] = field(default_factory=list)
    dial: list[tuple[str, A]] = field(default_factory=list)


class PeerManager(Generic[A]):
    """The peer decisions of one node. Peer ids are strings; addresses (`A`) are opaque."""

    def __init__(self, local: str, *, allowed: Collection[str] = (), max_peers: int, dial_target: int,
                 redial: RedialPolicy, rng: random.Random | None = None,
                 refused_backoff_s: float = REFUSED_BACKOFF_S,
                 bootstrap: Mapping[str, A] | None = None) -> None:
        self.local = local
        self.allowed = frozenset(allowed)
        self.max_peers = max_peers
        self.dial_target = min(dial_target, max_peers)
        self.known_limit = max_peers * MAX_KNOWN_PEERS_FACTOR
        self.redial = redial
        self.refused_backoff_s = refused_backoff_s
        self._rng = rng or random.Random()
        self.connected: dict[str, str] = {}  # peer -> the address of its connection
        self.admitting: set[str] = set()  # connections open, admission not yet answered
        self.dialing: set[str] = set()  # dials in flight (until admitted or gone)
        self.known: dict[str, A] = {}  # worth (re)connecting to, oldest first
        self.announced: dict[str, None] = {}  # reported as PeerDiscovered (an ordered set)
        self._refused_us: dict[str, tuple[float, str]] = {}  # until when, why
        self.bootstrap: dict[str, A] = dict(bootstrap or {})
        self.refused = 0  # connections we refused (stats: connections_refused)

    # --- who may connect ---------------------------------------------------------------------
    def is_allowed(self, peer: str) -> bool:
        """False when an allow list is set and `peer` is not on it."""
        return not self.allowed or peer in self.allowed

    def refusal_reason(self, peer: str) -> str | None:
        """Why `peer` may not be connected to us, or None when it may."""
        if not self.is_allowed(peer):
            return "not in allowed_peers"
        # Peers still being admitted count too, or two newcomers could both take the last slot.
        others = len(self.connected) + len(self.admitting - {peer})
        if peer not in self.connected and others >= self.max_peers:
            return f"max_peers ({self.max_peers}) reached"
        return None

    def refused_us_recently(self, peer: str, now: float) -> bool:
        entry = self._refused_us.get(peer)
        return entry is not None and entry[0] > now

    def may_dial(self, peer: str, now: float) -> bool:
        """Not connected, no dial in flight, we would admit it, and it has not refused us lately."""
        return (peer not in self.dialing and peer not in self.connected and self.refusal_reason(peer) is None
                and not self.refused_us_recently(peer, now))

    # --- connections: what happened ----------------------------------------------------------
    def opened(self, peer: str) -> str | None:
        """A connection with `peer` opened (either direction): why to close it (counted as a
        refusal), or None to keep it."""
        reason = self.refusal_reason(peer)
        if reason is not None:
            self.refused += 1
        return reason

    def start_admission(self, peer: str) -> bool:
        """True when the connection needs admitting now (`peer` is neither connected nor being
        admitted already); the node then asks and reports `admission_ended`."""
        if peer in self.connected or peer in self.admitting:
            return False
        self.admitting.add(peer)
        return True

    def admission_ended(self, peer: str) -> None:
        self.admitting.discard(peer)

    def refused_by(self, peer: str, why: str, now: float) -> None:
        """`peer` refused our connection: not dialled by discovery for `refused_backoff_s`, and
        no longer known (a configured bootstrap peer comes back with the next round)."""
        self._refused_us[peer] = (now + self.refused_backoff_s, why)
        self.known.pop(peer, None)

    def refusal_from(self, peer: str) -> str | None:
        """Why `peer` refused us since the last `connect_requested`, or None."""
        entry = self._refused_us.get(peer)
        return None if entry is None else entry[1]

    def connect_requested(self, peer: str) -> None:
        """An explicit connect (dial(), a stream to a peer we are not connected to) asks again."""
        self._refused_us.pop(peer, None)

    def admitted(self, peer: str, address: str) -> bool:
        """Both sides admitted the connection: True when `peer` is newly connected."""
        if peer in self.connected:
            return False
        self._refused_us.pop(peer, None)
        self.redial.connected(peer)
        self.connected[peer] = address
        return True

    def lost(self, peer: str, now: float) -> None:
        """`peer`'s last connection closed: redialled after a moment, then backing off."""
        self.connected.pop(peer, None)
        self.redial.missing(peer, now, departed=True)

    def dial_started(self, peer: str) -> None:
        self.dialing.add(peer)

    def dial_ended(self, peer: str) -> None:
        self.dialing.discard(peer)

    # --- known peers -------------------------------------------------------------------------
    def remember(self, peer: str, where: A) -> None:
        """Keep where `peer` listens: a bounded memory, the oldest entry evicted first."""
        self.known[peer] = where
        while len(self.known) > self.known_limit:
            self.known.pop(next(iter(self.known)))

    def found(self, peer: str, where: A, now: float) -> Intake:
        """Discovery reported `peer` listening at `where`: remember it, announce it the first
        time, and dial it at once when it is due (a new peer is; a departed one keeps its
        back-off) and the dial budget has room."""
        if peer == self.local or not self.is_allowed(peer):
            return Intake(announce=False, dial=False)
        self.remember(peer, where)
        announce = peer not in self.announced
        if announce:
            self.announced[peer] = None
            while len(self.announced) > self.known_limit:
                self.announced.pop(next(iter(self.announced)))
        dial = False
        if peer not in self.connected:
            self.redial.missing(peer, now)  # new: due at once; already missing: keeps its back-off
            if peer in self.redial.due(now) and dial_budget(len(self.connected) + len(self.admitting),
                                                            len(self.dialing), self.dial_target) > 0:
                self.redial.attempted(peer, now)
                dial = self.may_dial(peer, now)
        return Intake(announce=announce, dial=dial)

    # --- the discovery loop ------------------------------------------------------------------
    def add_bootstrap(self, peer: str, where: A) -> None:
        """A configured bootstrap peer: always known, dialled first, never forgotten."""
        self.bootstrap[peer] = where

    def plan_round(self, now: float) -> Round[A]:
        """One round: bootstrap peers known again, departed peers given up on, and which
        missing peers to dial (those due by their back-off, within the dial budget)."""
        for peer, where in self.bootstrap.items():
            self.redial.add_permanent(peer, now)
            self.remember(peer, where)
        for peer in list(self.known):
            if peer in self.connected:
                self.redial.connected(peer)
            else:
                self.redial.missing(peer, now)
        forget = self.redial.expired(now)
        for peer in forget:
            self.known.pop(peer, None)
        candidates = [p for p in self.redial.due(now) if p in self.known and not self.refused_us_recently(p, now)]
        # Connections still being admitted count: under load admission takes seconds, and
        # counting only admitted peers dialled far past the target.
        dials = []
        for peer in choose_dials(candidates, self.connected.keys() | self.admitting, self.dialing,
                                 self.dial_target, self._rng, always=self.bootstrap.keys()):
            self.redial.attempted(peer, now)
            if self.may_dial(peer, now):
                dials.append((peer, self.known[peer]))
        return Round(forget=forget, dial=dials)

    def wants_dht_round(self) -> bool:
        """Kademlia rounds only while we know too few peers to choose from (at full degree they
        cost traffic), and only with a neighbour to ask."""
        return bool(self.connected) and len(self.known) < self.dial_target

    def next_delay(self, delay: float, *, woken: bool, interval: float) -> float:
        """The discovery loop's next gap after one of `delay`: back to `FIRST_ROUND_S` after a
        wake-up (discover_peers, a peer refused or lost), else doubling up to `interval`, or up
        to `REDIAL_MAX_S` while some known peer we would dial is missing."""
        if woken:
            return FIRST_ROUND_S
        missing = len(self.connected) < min(self.dial_target, len(self.known))
        cap = min(REDIAL_MAX_S, interval) if missing else interval
        return min(delay * 2, cap)

    def sleep_for(self, delay: float, now: float) -> float:
        """How long the loop sleeps now: `delay`, or less when below the target and a missing
        peer's redial comes sooner (never less than 50 ms)."""
        wake = self.redial.next_at() if len(self.connected) < self.dial_target else None
        return delay if wake is None else min(delay, max(0.05, wake - now))
