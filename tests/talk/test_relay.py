"""The relay tree of a talk (agent/talk/relay.py): pure planning, parsing and routing."""

from __future__ import annotations

import pytest

from agent.talk.relay import RelayTable, adopt, encode_plan, parse_plan, plan_tree

PEERS = [f"peer{i:02d}" for i in range(50)]


@pytest.mark.parametrize("n", [2, 3, 5, 10, 25, 50])
def test_every_member_once_bounded_fanout_log_depth(n: int) -> None:
    talker, members = PEERS[0], PEERS[1:n]
    plan = plan_tree(talker, PEERS[:n], 4, 1, "g")
    kids = [c for cs in plan.tree.values() for c in cs]
    assert sorted(kids) == sorted(members)          # everyone, exactly once (N-1 copies a frame)
    assert max(len(cs) for cs in plan.tree.values()) <= 4  # upload per node bounded
    assert plan.depth() <= {2: 1, 3: 1, 5: 1, 10: 2, 25: 3, 50: 3}[n]
    for m in members:
        assert plan.parent_of(m) is not None


def test_small_group_is_a_star() -> None:
    plan = plan_tree("t", ["a", "b", "c"], 4, 1, "g")
    assert set(plan.tree) == {"t"} and set(plan.children("t")) == {"a", "b", "c"}


def test_order_is_stable_per_talker_and_connected_peers_come_first() -> None:
    a = plan_tree("t", PEERS, 4, 1, "g")
    b = plan_tree("t", list(reversed(PEERS)), 4, 2, "g")
    assert a.tree == b.tree
    c = plan_tree("t", PEERS, 4, 3, "g", connected={"peer07", "peer33"})
    assert set(c.children("t")[:2]) == {"peer07", "peer33"}


def test_plan_round_trip_and_only_from_its_talker() -> None:
    plan = plan_tree("t", PEERS, 4, 7, "g")
    assert parse_plan(encode_plan(plan), "t") == plan
    assert parse_plan(encode_plan(plan), "someone-else") is None
    assert parse_plan(b"not json", "t") is None
    assert parse_plan(b'{"v":1,"name":"x","groups":["g"],"current":"g"}', "t") is None  # an announcement
    # A node listed twice (a loop) or a parent not reachable from the talker is refused.
    assert parse_plan(b'{"v":1,"plan":1,"talker":"t","group":"g","tree":{"t":["a","b"],"a":["b"]}}', "t") is None
    assert parse_plan(b'{"v":1,"plan":1,"talker":"t","group":"g","tree":{"t":["a"],"x":["b"]}}', "t") is None
    assert len(encode_plan(plan_tree("12D3KooW" + "x" * 44, ["12D3KooW%044d" % i for i in range(49)],
                                     4, 1, "g"))) < 4000


def test_table_routes_by_parent_newest_plan_and_expires() -> None:
    t = RelayTable("b", ttl_s=10.0)
    p1 = plan_tree("t", ["a", "b", "c", "d", "e", "f"], 2, 1, "g")
    t.add(p1, now=0.0)
    parent = p1.parent_of("b")
    assert parent is not None and t.route(parent, 1.0) == p1
    assert t.route("nobody", 1.0) is None
    p2 = plan_tree("t", ["a", "b", "c", "d", "e", "f"], 2, 2, "g")
    t.add(p2, now=2.0)
    assert len(t) == 1 and t.route(p2.parent_of("b") or "", 3.0) == p2
    assert t.route(p2.parent_of("b") or "", 12.5) is None
    t.expire(12.5)
    assert len(t) == 0


def test_a_relay_adopts_the_children_of_an_unreachable_child() -> None:
    plan = plan_tree("t", PEERS[:21], 4, 1, "g")
    child = plan.children("t")[0]
    assert adopt(plan, child) == plan.children(child) and len(plan.children(child)) == 4
