"""Talk fan-out through a relay tree. Pure: no I/O, time passed in.

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
from dataclasses import dataclass

__all__ = ["PLAN_TOPIC", "RelayPlan", "plan_tree", "encode_plan", "parse_plan", "RelayTable", "MAX_PLAN_BYTES"]

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


def encode_plan(plan: RelayPlan) -> bytes:
    return json.dumps({"v": 1, "plan": plan.plan_id, "talker": plan.talker, "group": plan.group,
                       "tree": {p: list(c) for p, c in plan.tree.items()}}, separators=(",", ":")).encode()


def parse_plan(data: bytes, from_peer: str) -> RelayPlan | None:
    """The plan in ``data`` if it is a valid one published by its own talker, else None."""
    if len(data) > MAX_PLAN_BYTES:
        return None
    try:
        obj = json.loads(data)
    except (ValueError, UnicodeDecodeError):
        return None
    if not isinstance(obj, dict) or obj.get("v") != 1 or "plan" not in obj:
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
