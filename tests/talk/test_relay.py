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


# --- the stream context and the spread over connections (relay.Spread) ------------------------

import random  # noqa: E402

from agent.talk.relay import ALREADY_HEARING, Spread, TalkContext, encode_context, parse_context, spread_order  # noqa: E402


def test_context_round_trip_and_bad_input() -> None:
    ctx = TalkContext("12D3KooW" + "x" * 44, 7, "default", relay=True)
    assert parse_context(encode_context(ctx)) == ctx
    assert parse_context(encode_context(TalkContext("t", 1, "g", relay=False))) == TalkContext("t", 1, "g", False)
    assert len(encode_context(ctx)) < 120
    for bad in (b"", b"not json", b"[]", b'{"v":2,"t":"t","n":1,"g":"g"}', b'{"v":1,"t":"","n":1,"g":"g"}',
                b'{"v":1,"t":"t","n":true,"g":"g"}', b'{"v":1,"t":"t","n":1,"g":3}', b'{"v":1,"t":"t","n":1,"g":"g","r":5}',
                b"x" * 2000):
        assert parse_context(bad) is None, bad


def test_spread_offers_fanout_at_a_time_then_the_next_when_one_declines() -> None:
    ctx = TalkContext("t", 1, "g")
    sp = Spread("me", ctx, 2, now=0.0, parent="p", sweep_after_s=1.0, patience_s=0.5)
    cands = ["t", "p", "a", "b", "c", "d"]
    assert sp.offers(cands, 0.0) == ["a", "b"]          # never the talker or our parent
    assert sp.offers(cands, 0.1) == []                  # two pending: the fanout is full
    sp.answered("a", accepted=True)
    sp.answered("b", accepted=False, hears=True)        # hears it already: the next one
    assert sp.offers(cands, 0.2) == ["c"]
    sp.heard_by("d")                                    # d offered it to us: it hears
    sp.answered("c", accepted=True)
    assert sp.offers(cands, 0.3) == []
    sp.gone("c")                                        # c's stream ended: a place again
    assert sp.offers(cands + ["e"], 0.4) == ["e"]


def test_spread_a_silent_peer_does_not_hold_a_place_and_the_sweep_offers_the_rest() -> None:
    sp = Spread("me", TalkContext("t", 1, "g"), 1, now=10.0, sweep_after_s=1.0, patience_s=0.3)
    cands = ["a", "b", "c", "d"]
    assert sp.offers(cands, 10.0) == ["a"]
    assert sp.offers(cands, 10.2) == []
    assert sp.offers(cands, 10.35) == ["b"]             # a did not answer within patience_s
    sp.answered("b", accepted=True)
    assert sp.offers(cands, 10.5) == []
    assert sp.offers(cands, 11.0) == ["c", "d"]         # the sweep: everyone left, fanout or not
    assert sp.offers(cands, 11.1) == []                 # each offered once


def test_spread_connects_only_when_no_connected_member_is_left() -> None:
    sp = Spread("t", TalkContext("t", 1, "g"), 2, now=0.0)
    assert sp.offers([], 0.0, unconnected=["x", "y", "z"]) == ["x", "y"]
    sp2 = Spread("t", TalkContext("t", 1, "g"), 2, now=0.0)
    assert sp2.offers(["a"], 0.0, unconnected=["x", "y"]) == ["a"]
    sp2.answered("a", accepted=False, hears=False)     # refused (another group): connect instead
    assert sp2.offers(["a"], 0.1, unconnected=["x", "y"]) == ["x", "y"]
    assert sp2.offers(["a"], 5.0, unconnected=["z"]) == []  # the sweep never connects


def simulate(n: int, degree: int, fanout: int, seed: int, sweep: bool = True,
             share: bool = False) -> tuple[int, dict[str, int], int]:
    """The spread over a random graph of bounded degree, each offer answered 20-300 ms later
    (random): every node runs relay.Spread as the engine drives it (offers on start, on each
    answer, and at the sweep, 0.5 s after it started). Returns (members reached, children per
    node, declined offers)."""
    rng = random.Random(seed)
    names = [f"n{i:02d}" for i in range(n)]
    adj: dict[str, set[str]] = {x: set() for x in names}
    for x in names:  # each node dials random others until it has `degree` connections
        for y in rng.sample(names, n):
            if len(adj[x]) >= degree:
                break
            if y != x and len(adj[y]) < degree + 4:
                adj[x].add(y)
                adj[y].add(x)
    talker = names[-1]
    ctx = TalkContext(talker, 1, "g")
    spreads = {talker: Spread(talker, ctx, fanout, 0.0, sweep_after_s=0.5)}
    hearing = {talker}
    children: dict[str, int] = {x: 0 for x in names}
    declined = 0
    # events: (time, kind, from, to)
    queue: list[tuple[float, int, str, str]] = []
    seq = 0
    told: dict[tuple[str, str], frozenset[str]] = {}

    def offer_from(x: str, now: float) -> None:
        nonlocal seq
        for y in spreads[x].offers(spread_order(ctx, sorted(adj[x])), now):
            if share:
                told[(x, y)] = frozenset(spreads[x].context_for(y).covered)
            seq += 1
            queue.append((now + rng.uniform(0.02, 0.3), seq, x, y))

    offer_from(talker, 0.0)
    if sweep:
        queue.append((0.5, 0, talker, ""))
    while queue:
        queue.sort()
        now, _, x, y = queue.pop(0)
        if not y:  # x's sweep
            offer_from(x, now)
            continue
        if y in hearing:
            declined += 1
            spreads[x].answered(y, accepted=False, hears=True)
        else:
            hearing.add(y)
            children[x] += 1
            spreads[x].answered(y, accepted=True)
            spreads[y] = Spread(y, ctx, fanout, now, parent=x, sweep_after_s=0.5)
            for z in told.get((x, y), ()):
                spreads[y].heard_by(z)
            offer_from(y, now)
            if sweep:
                queue.append((now + 0.5, 0, y, ""))
        offer_from(x, now)
    return len(hearing) - 1, children, declined


@pytest.mark.parametrize("n", [10, 25, 50])
def test_spread_over_a_bounded_degree_graph_reaches_everyone_once_with_bounded_upload(n: int) -> None:
    for seed in range(20):
        reached, children, declined = simulate(n, degree=6, fanout=4, seed=seed, share=True)
        assert reached == n - 1, (seed, reached)       # every member hears (the sweep if need be)
        assert sum(children.values()) == n - 1         # each once: N-1 copies a frame
        assert max(children.values()) <= 4              # offers in waves: never beyond the fanout here
        # Each node offers the talk to about its connections, most of which hear it already
        # (the price of not knowing the graph); what the offers carry (``covered``) saves some.
        _, _, unshared = simulate(n, degree=6, fanout=4, seed=seed)
        assert declined < unshared and declined <= 6 * n, (declined, unshared)


def test_the_sweep_offers_what_we_were_only_told_and_we_pass_on_only_what_we_know() -> None:
    """A peer named in our parent's context (the parent was offering it the talk) is skipped by
    our waves but not by our sweep (the parent's offer may have failed), and it is not named in
    the context of our own offers (so it is not left out further down)."""
    ctx = TalkContext("t", 1, "g", covered=("t", "x"))
    sp = Spread("me", ctx, 2, now=0.0, parent="p", sweep_after_s=0.5)
    assert sp.offers(["x", "a"], 0.0) == ["a"]
    assert "x" not in sp.context_for("a").covered and "p" in sp.context_for("a").covered
    assert sp.offers(["x", "a"], 0.5) == ["x"]
