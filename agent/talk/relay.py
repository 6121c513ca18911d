"""Talk fan-out through a relay tree. Pure: no I/O, time passed in.

How a talk spreads (since the stream context, `/avi/audio/1.1.0`): every stream of a talk
carries a `TalkContext` (talker, press number, group) in its REQUEST, so a node that receives
one knows at once which talk it is and whether it hears it already, without waiting for any
pub/sub message. A node that accepts a talk passes it on over the connections it already has
(the mesh keeps a bounded set): `Spread` picks, among its connected members of the group that
are not known to hear the talk yet, at most ``fanout`` at a time; a member that already hears
the talk from someone else declines ("already hearing"), and the next one is offered. So the
talk floods the connection graph as a tree (each member accepts exactly one stream: N-1 copies
a frame, the minimum for unicast), no node sends more than ``fanout`` copies in the common case,
and no stream needs a new connection (connecting on demand costs a handshake, and a slot under
another node's ``max_peers``). ``sweep_after_s`` after it started, a node also offers the talk
to its remaining connected members: one whose neighbours all filled their ``fanout`` with
others would not hear otherwise; most decline (they hear already).

The older scheme, still understood (a talker of the previous version publishes it): the talker
plans the whole tree and publishes it on `PLAN_TOPIC`; see below.

A talker does not send one copy per listener. At a press it plans a tree over the members of
its talk group: it streams to at most ``fanout`` children, each child forwards every frame it
receives, unchanged (codec id and capture timestamp included: frames are opaque bytes), to at
most ``fanout`` children of its own, and so on. Every listener receives each frame once, so
the whole group costs N-1 copies per frame on the air (the minimum for unicast), the talker's
upload is ``fanout`` streams whatever the size of the group, and a relay's is the same. With
fanout 4, 49 listeners are at most 3 hops from the talker. A group no larger than ``fanout``
is a star: every listener hears the talker directly.

The plan travels as a signed pub/sub message on `PLAN_TOPIC` (``encode_plan``), published
before the talker opens its streams; a node that receives a stream from peer P and holds a
plan in which P is its parent forwards to its own children of that plan. The order of the
members is stable for a talker (a hash of talker and member), so repeated presses reuse the
same connections; the talker's already-connected members come first, so its own streams need
no new connection. A child that cannot be reached is skipped: its relay adopts its children.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, replace

__all__ = ["PLAN_TOPIC", "RelayPlan", "plan_tree", "encode_plan", "parse_plan", "RelayTable", "MAX_PLAN_BYTES",
           "TalkContext", "encode_context", "parse_context", "Spread", "ALREADY_HEARING", "MAX_CONTEXT_BYTES"]

PLAN_TOPIC = "avi/talk/plan"
MAX_PLAN_BYTES = 60 * 1024
_MAX_MEMBERS = 1024


@dataclass(frozen=True, slots=True)
class RelayPlan:
    talker: str
    plan_id: int
    group: str
    tree: Mapping[str, tuple[str, ...]]  # parent -> children (the talker is the root)

    def children(self, peer: str) -> tuple[str, ...]:
        return self.tree.get(peer, ())

    def parent_of(self, peer: str) -> str | None:
        for parent, kids in self.tree.items():
            if peer in kids:
                return parent
        return None

    def members(self) -> set[str]:
        return {c for kids in self.tree.values() for c in kids}

    def depth(self) -> int:
        """Hops from the talker to the farthest listener."""
        depth, level = 0, [self.talker]
        while True:
            level = [c for p in level for c in self.tree.get(p, ())]
            if not level:
                return depth
            depth += 1


def _rank(talker: str, peer: str) -> bytes:
    return hashlib.blake2b(f"{talker}/{peer}".encode(), digest_size=8).digest()


def plan_tree(talker: str, members: Collection[str], fanout: int, plan_id: int, group: str,
              connected: Collection[str] = ()) -> RelayPlan:
    """A tree rooted at ``talker`` over ``members`` (the talker excluded), each node with at
    most ``fanout`` children, in breadth-first (heap) order: node k's children are nodes
    fanout*k+1 .. fanout*k+fanout. Members in ``connected`` (the talker's peers) come first."""
    if fanout < 1:
        raise ValueError("fanout must be at least 1")
    others = sorted((m for m in set(members) if m != talker), key=lambda m: (m not in connected, _rank(talker, m)))
    order = [talker, *others]
    tree: dict[str, tuple[str, ...]] = {}
    for k, node in enumerate(order):
        kids = tuple(order[fanout * k + 1: fanout * k + 1 + fanout])
        if not kids:
            break
        tree[node] = kids
    return RelayPlan(talker, plan_id, group, tree)


def _v1_object(data: bytes, limit: int) -> dict | None:  # type: ignore[type-arg]
    """The JSON object of version 1 in ``data`` (at most ``limit`` bytes), or None."""
    if not data or len(data) > limit:
        return None
    try:
        obj = json.loads(data)
    except (ValueError, UnicodeDecodeError):
        return None
    return obj if isinstance(obj, dict) and obj.get("v") == 1 else None


def encode_plan(plan: RelayPlan) -> bytes:
    return json.dumps({"v": 1, "plan": plan.plan_id, "talker": plan.talker, "group": plan.group,
                       "tree": {p: list(c) for p, c in plan.tree.items()}}, separators=(",", ":")).encode()


def parse_plan(data: bytes, from_peer: str) -> RelayPlan | None:
    """The plan in ``data`` if it is a valid one published by its own talker, else None."""
    obj = _v1_object(data, MAX_PLAN_BYTES)
    if obj is None or "plan" not in obj:
        return None
    talker, pid, group, tree = obj.get("talker"), obj.get("plan"), obj.get("group"), obj.get("tree")
    if talker != from_peer or not isinstance(pid, int) or not isinstance(group, str) or not isinstance(tree, dict):
        return None  # a plan is only taken from the talker it names (pub/sub messages are signed)
    out: dict[str, tuple[str, ...]] = {}
    seen: set[str] = {talker}
    for parent, kids in tree.items():
        if not isinstance(parent, str) or not isinstance(kids, list) or not all(isinstance(k, str) for k in kids):
            return None
        if parent not in seen:
            return None  # not reachable from the talker (the tree is listed top-down)
        for k in kids:
            if k in seen:
                return None  # a cycle or a node listed twice
            seen.add(k)
        out[parent] = tuple(kids)
    if len(seen) > _MAX_MEMBERS:
        return None
    return RelayPlan(talker, pid, group, out)


class RelayTable:
    """The plans heard, newest per talker, each dropped ``ttl_s`` after it arrived."""

    def __init__(self, me: str, ttl_s: float = 180.0, max_plans: int = 64) -> None:
        self.me = me
        self.ttl_s = ttl_s
        self.max_plans = max_plans
        self._plans: dict[str, tuple[RelayPlan, float]] = {}

    def add(self, plan: RelayPlan, now: float) -> None:
        self._plans.pop(plan.talker, None)
        self._plans[plan.talker] = (plan, now + self.ttl_s)
        while len(self._plans) > self.max_plans:
            self._plans.pop(next(iter(self._plans)))

    def expire(self, now: float) -> None:
        for talker in [t for t, (_, until) in self._plans.items() if until <= now]:
            del self._plans[talker]

    def route(self, parent: str, now: float) -> RelayPlan | None:
        """The newest live plan in which ``parent`` is our parent, or None."""
        best: RelayPlan | None = None
        for plan, until in self._plans.values():
            if until > now and self.me in plan.children(parent):
                best = plan
        return best

    def __len__(self) -> int:
        return len(self._plans)


def adopt(plan: RelayPlan, unreachable: str) -> Sequence[str]:
    """The children a relay takes over when its child ``unreachable`` cannot be reached."""
    return plan.children(unreachable)


# --- the stream context and the spread of a talk ----------------------------------------------

MAX_CONTEXT_BYTES = 1024  # the mesh's limit for a REQUEST's context
ALREADY_HEARING = "already hearing this talk"  # the decline reason a spreading node learns from


@dataclass(frozen=True, slots=True)
class TalkContext:
    """What a stream of a talk is: whose press (``talk``: the talker's press number), in which
    group, and whether the receiver passes it on (``relay``; False for a small group that the
    talker streams to directly)."""

    talker: str
    talk: int
    group: str
    relay: bool = True
    # Peers the sender knows to hear the talk or is offering it to itself: the receiver does not
    # offer it to them (fewer offers that would be declined). At most MAX_COVERED.
    covered: tuple[str, ...] = ()

    @property
    def key(self) -> tuple[str, int]:
        return (self.talker, self.talk)


MAX_COVERED = 12


def encode_context(ctx: TalkContext) -> bytes:
    """The context's bytes; as many of ``covered`` as fit (MAX_COVERED, MAX_CONTEXT_BYTES)."""
    covered = list(ctx.covered[:MAX_COVERED])
    while True:
        obj: dict[str, object] = {"v": 1, "t": ctx.talker, "n": ctx.talk, "g": ctx.group, "r": int(ctx.relay)}
        if covered:
            obj["c"] = covered
        data = json.dumps(obj, separators=(",", ":")).encode()
        if len(data) <= MAX_CONTEXT_BYTES:
            return data
        if not covered:
            raise ValueError(f"talk context of {len(data)} bytes exceeds {MAX_CONTEXT_BYTES}")
        covered.pop()


def parse_context(data: bytes) -> TalkContext | None:
    """The context in a stream request, or None (no context: an older node; or not valid)."""
    obj = _v1_object(data, MAX_CONTEXT_BYTES)
    if obj is None:
        return None
    talker, talk, group, relay = obj.get("t"), obj.get("n"), obj.get("g"), obj.get("r", 1)
    covered = obj.get("c", [])
    if not isinstance(talker, str) or not talker or not isinstance(talk, int) or isinstance(talk, bool) \
            or not isinstance(group, str) or relay not in (0, 1) or not isinstance(covered, list) \
            or len(covered) > MAX_COVERED or not all(isinstance(c, str) for c in covered):
        return None
    return TalkContext(talker, talk, group, bool(relay), tuple(covered))


def spread_order(ctx: TalkContext, peers: Collection[str]) -> list[str]:
    """``peers`` in the order a node offers them this talk: stable per talk, different per talk
    and per node's set, so the tree does not always take the same edges."""
    return sorted(peers, key=lambda p: _rank(f"{ctx.talker}/{ctx.talk}", p))


class Spread:
    """Which peers one node offers one talk to, and when. Pure: the caller opens the streams and
    reports each outcome; time is passed in.

    ``confirmed`` peers hear the talk (the talker, our parent, peers that offered it to us or
    declined ours as ``ALREADY_HEARING``); ``told`` ones were named in the context of the offer
    we took (our parent hears them or is offering it to them). The waves skip both; an offer
    counts against ``fanout`` while it is pending (for ``patience_s`` at most: a peer that does
    not answer does not hold a place) and once accepted. From ``sweep_after_s`` after the start
    on, every connected candidate not *confirmed* is offered, whatever the fanout: a member
    whose neighbours all filled their fanout, or that a parent's offer never reached, hears
    too. The context of our own offers names only what we know first hand (never what we were
    told), so a peer left out by a failed offer is not left out further down the tree."""

    def __init__(self, me: str, ctx: TalkContext, fanout: int, now: float, *, parent: str | None = None,
                 sweep_after_s: float = 0.5, patience_s: float = 1.0) -> None:
        if fanout < 1:
            raise ValueError("fanout must be at least 1")
        self.ctx = ctx
        self.fanout = fanout
        self.started = now
        self.sweep_at = now + sweep_after_s
        self.patience_s = patience_s
        self.confirmed: set[str] = {me, ctx.talker} | ({parent} if parent is not None else set())
        self.told: set[str] = set(ctx.covered) - self.confirmed
        self.pending: dict[str, float] = {}  # peer -> when offered
        self.accepted: set[str] = set()
        self.declined: set[str] = set()      # declined or failed: not offered again this talk

    @property
    def known(self) -> set[str]:
        """Peers the waves do not offer the talk to: confirmed or told to hear it."""
        return self.confirmed | self.told

    def context_for(self, peer: str) -> TalkContext:
        """The context of our offer to ``peer``: the talk, and whom it need not offer it to
        (those nearest the talker first: they are the likeliest to be its neighbours too)."""
        near = [p for p in (self.ctx.talker, *sorted(self.accepted | set(self.pending)), *sorted(self.confirmed))
                if p != peer]
        return replace(self.ctx, covered=tuple(dict.fromkeys(near))[:MAX_COVERED])

    def heard_by(self, peer: str) -> None:
        """``peer`` hears this talk (it offered it to us, or said so)."""
        self.confirmed.add(peer)

    def offers(self, candidates: Sequence[str], now: float, *, unconnected: Sequence[str] = ()) -> list[str]:
        """The peers to offer the talk to now (each is then pending), in order. ``candidates``:
        connected members of the group, best first; ``unconnected``: members that need a new
        connection, offered only when no connected candidate is left (the talker of a fleet it
        is not connected into), never by the sweep."""
        busy_or_done = self.accepted | self.declined | set(self.pending)
        if now >= self.sweep_at:
            picked = [c for c in candidates if c not in busy_or_done and c not in self.confirmed]
        else:
            known = self.known
            fresh = [c for c in candidates if c not in busy_or_done and c not in known]
            busy = len(self.accepted) + sum(1 for t in self.pending.values() if now - t < self.patience_s)
            room = max(0, self.fanout - busy)
            picked = fresh[:room]
            if all(c in known or c in self.declined for c in candidates):
                # No connected candidate left (none pending or accepted either): connect.
                picked = [c for c in unconnected if c not in busy_or_done and c not in known][:room]
        for p in picked:
            self.pending[p] = now
        return picked

    def answered(self, peer: str, *, accepted: bool, hears: bool = False) -> None:
        """The outcome of our offer to ``peer``: accepted, or not (``hears``: it declined because
        it hears the talk already)."""
        self.pending.pop(peer, None)
        if accepted:
            self.accepted.add(peer)
            self.declined.discard(peer)
        else:
            self.accepted.discard(peer)
            self.declined.add(peer)
            if hears:
                self.confirmed.add(peer)

    def gone(self, peer: str) -> None:
        """An accepted child's stream ended before the talk: its place is free again (it is not
        offered again: if it still hears, it hears from someone else)."""
        if peer in self.accepted:
            self.accepted.discard(peer)
            self.declined.add(peer)
