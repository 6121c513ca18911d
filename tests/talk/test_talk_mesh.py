"""Push-to-talk end to end in one process: real mesh nodes over 127.0.0.1, fake hardware."""

from __future__ import annotations

from contextlib import AsyncExitStack
from pathlib import Path

import trio

from agent.mesh import AviP2p, AviP2pConfig, AudioStreamClosed
from agent.talk import TOPIC
from agent.talk.groups import encode_announcement

from tests.poll import wait_until

from .rig import agent, analyse, know_each_other

# Waits for a talk to END are hang guards (20 s): it ends within ~0.5 s of the release. Waits
# for something during a 2 s talk stay short: past the talk they could never succeed.

HOLD_S = 2.0


async def test_two_nodes_each_hears_the_other(tmp_path: Path) -> None:
    async with agent("a", tmp_path, freq=440) as a, agent("b", tmp_path, freq=660) as b:
        await a.node.handle().dial(b.addr)
        await know_each_other(a, b)
        assert a.led.pattern.name == "idle"

        await a.button.press()
        await wait_until(lambda: b.talk.stats().streams_in == 1, 5, "b to accept a's stream")
        await trio.sleep(0.5)
        assert a.led.pattern.name == "transmitting" and b.led.pattern.name == "receiving"
        assert a.talk.stats().transmitting and a.talk.stats().streams_out == 1
        await trio.sleep(HOLD_S - 0.5 - 0.1)
        await a.button.release()
        await wait_until(lambda: b.talk.stats().streams_in == 0 and b.led.pattern.name == "idle", 20,
                         "b to hear the end of a's talk")
        assert a.led.pattern.name == "idle" and a.talk.stats().streams_out == 0
        await trio.sleep(0.5)

        await b.hold(HOLD_S)
        await wait_until(lambda: a.talk.stats().streams_in == 0 and a.talk.stats().frames_played > 80, 20,
                         "a to hear b's talk")
        await trio.sleep(0.5)
        sa, sb = a.talk.stats(), b.talk.stats()

    for st in (sa, sb):
        print(st)
    ha, hb = analyse(a.wav), analyse(b.wav)  # type: ignore[arg-type]
    print("a heard", ha, "\nb heard", hb)
    for heard, freq, sent, rx in ((hb, 440, sa, sb), (ha, 660, sb, sa)):
        assert 1.6 <= heard.sound_s <= 2.4, f"expected about 2 s of tone, got {heard.sound_s:.2f} s"
        assert heard.span[1] - heard.span[0] <= 2.6
        assert abs(heard.peaks_hz[0] - freq) < 5, f"dominant {heard.peaks_hz[0]:.1f} Hz, expected {freq}"
        assert heard.outside_peak == 0, "sound outside the talk"
        assert heard.total_s > heard.span[1] + 0.3  # silence played before and after
        # nearly every frame sent arrived and played; latency is measured
        assert rx.frames_received >= 0.95 * sent.frames_sent > 80
        assert rx.frames_played >= 0.9 * sent.frames_sent
        assert rx.latency_samples >= 80 and rx.latency_p50_ms is not None
        # Measured p50 ~95-100 ms (with two CPU hogs too). The adaptive playout may raise its
        # delay up to jitter_max_ms (220 ms) when a busy machine makes arrivals jittery, so the
        # bound is that plus 180 ms: a value past it means latency is not under control.
        assert 20 <= rx.latency_p50_ms < 400, rx.latency_p50_ms


async def test_three_nodes_two_talk_at_once_listener_hears_both(tmp_path: Path) -> None:
    async with agent("a", tmp_path, freq=440) as a, agent("b", tmp_path, freq=660) as b, \
            agent("c", tmp_path, freq=1000) as c:
        await a.node.handle().dial(c.addr)
        await b.node.handle().dial(c.addr)
        await a.node.handle().dial(b.addr)
        await know_each_other(a, b, c)
        async with trio.open_nursery() as n:
            n.start_soon(a.hold, HOLD_S)
            n.start_soon(b.hold, HOLD_S)
            await wait_until(lambda: c.talk.stats().streams_in == 2, 5, "c to hear two talkers")
            assert c.led.pattern.name == "receiving"
        await wait_until(lambda: c.talk.stats().streams_in == 0, 20, "both talks to end")
        await trio.sleep(0.3)
        sc = c.talk.stats()
    print(sc)
    hc, ha, hb = analyse(c.wav), analyse(a.wav), analyse(b.wav)  # type: ignore[arg-type]
    print("c heard", hc)
    assert 1.6 <= hc.sound_s <= 2.6
    assert {round(f / 20) * 20 for f in hc.peaks_hz[:2]} == {440, 660}, hc.peaks_hz
    assert hc.peak_ratio > 0.3, "one talker is much quieter than the other"
    assert hc.outside_peak == 0
    # the talkers hear each other too (full duplex between talkers)
    assert abs(ha.peaks_hz[0] - 660) < 5 and abs(hb.peaks_hz[0] - 440) < 5
    assert sc.frames_received >= 180 and sc.streams_rejected == 0


async def test_peer_in_another_group_is_not_streamed_to_and_a_late_joiner_is(tmp_path: Path) -> None:
    async with agent("a", tmp_path, groups=("ops", "all")) as a, \
            agent("b", tmp_path, groups=("sales",)) as b, \
            agent("c", tmp_path, groups=("all", "ops"), current="all") as c:
        await a.node.handle().dial(b.addr)
        await wait_until(lambda: b.peer_id in a.talk._dir._by_peer, 20, "a to hear b's groups")
        await a.button.press()
        await trio.sleep(0.5)
        assert a.talk.stats().streams_out == 0  # b is not in group ops
        # c (in ops) connects while the button is held: it gets a stream too
        await c.node.handle().dial(a.addr)
        await wait_until(lambda: c.talk.stats().streams_in == 1, 20, "c to be streamed to after joining")
        await trio.sleep(0.5)
        await a.button.release()
        await wait_until(lambda: c.talk.stats().streams_in == 0, 20, "the talk to end")
        assert c.talk.stats().frames_played > 10
        assert b.talk.stats().frames_received == 0 and b.talk.stats().streams_rejected == 0


async def test_streams_from_other_groups_or_unknown_peers_are_refused(tmp_path: Path) -> None:
    import agent.talk.engine as engine

    engine_grace = engine.PENDING_GRACE_S
    engine.PENDING_GRACE_S = 1.0
    try:
        async with agent("r", tmp_path, groups=("ops",), record=False) as r, \
                AviP2p.start(AviP2pConfig.local_only()) as (raw, raw_events):
            seen: list[object] = []

            async def record() -> None:
                async for ev in raw_events:
                    seen.append(ev)

            async with trio.open_nursery() as n:
                n.start_soon(record)
                h = raw.handle()
                await h.dial(r.addr)
                # unknown group: waits for an announcement, then is refused
                sid = await h.request_audio_stream(r.peer_id)
                await wait_until(lambda: any(isinstance(e, AudioStreamClosed) and e.stream_id == sid
                                             for e in seen), 10, "the unknown peer's stream to be refused")
                closed = [e for e in seen if isinstance(e, AudioStreamClosed) and e.stream_id == sid][0]
                assert "unknown" in closed.reason
                # announced, but talking to a group r is not in
                await h.subscribe(TOPIC)
                await _announce(h, ["sales", "ops"], "sales", r)
                sid2 = await h.request_audio_stream(r.peer_id)
                await wait_until(lambda: any(isinstance(e, AudioStreamClosed) and e.stream_id == sid2
                                             for e in seen), 10, "the foreign group's stream to be refused")
                closed2 = [e for e in seen if isinstance(e, AudioStreamClosed) and e.stream_id == sid2][0]
                assert "not in talk group 'sales'" in closed2.reason
                assert r.talk.stats().streams_rejected == 2 and r.talk.stats().frames_received == 0
                n.cancel_scope.cancel()
    finally:
        engine.PENDING_GRACE_S = engine_grace


async def _announce(h, groups: list[str], current: str, r) -> None:  # type: ignore[no-untyped-def]
    """Publish an announcement until r has heard it (pub/sub may drop the first ones)."""
    with trio.fail_after(20):
        while r.talk._dir.get(h.local_peer_id) is None:
            await h.publish(TOPIC, encode_announcement("raw", groups, current))
            await trio.sleep(0.3)


async def test_a_busy_receiver_refuses_without_stopping_the_other_streams(tmp_path: Path) -> None:
    async with agent("a", tmp_path, freq=440) as a, agent("b", tmp_path, freq=660) as b, \
            agent("c", tmp_path, max_streams=1) as c:
        await a.node.handle().dial(c.addr)
        await b.node.handle().dial(c.addr)
        await a.node.handle().dial(b.addr)
        await know_each_other(a, b, c)
        await a.button.press()
        await wait_until(lambda: c.talk.stats().streams_in == 1, 5, "c to hear a")
        await b.button.press()
        await wait_until(lambda: c.talk.stats().streams_rejected == 1, 5, "c to refuse b (busy)")
        await wait_until(lambda: b.talk.stats().streams_out == 1, 5, "b's refused stream to go")
        await trio.sleep(1.0)
        assert b.talk.stats().transmitting and a.talk.stats().streams_in == 1  # a still hears b
        await a.button.release()
        await b.button.release()
        await wait_until(lambda: a.talk.stats().streams_in == 0 and c.talk.stats().streams_in == 0, 20,
                         "the talks to end")
        await trio.sleep(0.3)
    ha, hc = analyse(a.wav), analyse(c.wav)  # type: ignore[arg-type]
    assert abs(ha.peaks_hz[0] - 660) < 5 and ha.sound_s >= 0.9
    assert abs(hc.peaks_hz[0] - 440) < 5 and hc.peak_ratio < 0.05  # c never mixed in b


async def test_a_stuck_button_stops_transmitting_after_max_talk_s(tmp_path: Path) -> None:
    async with agent("a", tmp_path, max_talk_s=1.0) as a, agent("b", tmp_path) as b:
        await a.node.handle().dial(b.addr)
        await know_each_other(a, b)
        await a.button.press()
        await wait_until(lambda: a.talk.stats().transmitting, 2, "a to transmit")
        await trio.sleep(2.5)
        assert a.button.pressed and not a.talk.stats().transmitting
        assert a.led.pattern.name == "idle"
        await a.button.release()
        await wait_until(lambda: b.talk.stats().streams_in == 0, 20, "b to hear the end")
        await trio.sleep(0.3)
        sent_once = a.talk.stats().frames_sent
        await a.hold(0.5)  # a fresh press transmits again
        assert a.talk.stats().frames_sent > sent_once
    hb = analyse(b.wav)  # type: ignore[arg-type]
    assert 1.1 <= hb.sound_s <= 2.0, hb  # about 1 s, then about 0.5 s


async def test_a_relay_tree_reaches_every_member_with_bounded_upload(tmp_path: Path) -> None:
    """Six members, all connected to each other, relay_fanout 2: the talker streams to two of
    them only, the talk spreads over the members' connections (each stream says which talk it
    carries: a member that hears it already declines a second offer), every listener hears it
    exactly once and plays about 2 s of the talker's tone, and no node sends more than two
    streams."""
    names = ["t", "l1", "l2", "l3", "l4", "l5"]
    async with AsyncExitStack() as stack:
        agents = [await stack.enter_async_context(agent(n, tmp_path, relay_fanout=2)) for n in names]
        for i, x in enumerate(agents):  # connected to every other: no connection on demand here
            for y in agents[i + 1:]:
                await x.node.handle().dial(y.addr)
        await know_each_other(*agents)
        talker, listeners = agents[0], agents[1:]
        await talker.button.press()
        await wait_until(lambda: all(x.talk.stats().streams_in == 1 for x in listeners), 10,
                         "every listener to hear the talker")
        max_out = most_in = 0
        for _ in range(15):  # past the sweep (SPREAD_SWEEP_S): offers then are declined
            await trio.sleep(0.1)
            # Streams that carry audio (open); an offer being declined is not upload.
            max_out = max(max_out, *(len([s for s in x.node.stats().streams if s.direction == "out"
                                          and s.state == "open"]) for x in agents))
            most_in = max(most_in, *(x.talk.stats().streams_in for x in listeners))
        await trio.sleep(HOLD_S - 1.5)
        await talker.button.release()
        await wait_until(lambda: all(x.talk.stats().streams_in == 0 for x in listeners), 10,
                         "every listener to hear the end")
        relayed = sum(x.talk.frames_relayed for x in listeners)
        direct = talker.talk.stats().streams_out
        declined = sum(x.talk.offers_declined for x in agents)
        failed = talker.talk.stats().streams_failed + sum(x.talk.relay_failures for x in listeners)
    print(f"spread: talker streams {direct}, frames relayed {relayed}, max streams out of one node "
          f"{max_out}, offers declined {declined}, failed stream requests {failed}")
    assert max_out <= 2 and most_in == 1, (max_out, most_in, failed)
    assert declined >= 1  # with fanout 2 in a full mesh of 6, some member is offered the talk twice
    assert relayed > 3 * 80, f"relays forwarded only {relayed} frames"
    for x in listeners:
        heard = analyse(x.wav)  # type: ignore[arg-type]
        # About 2 s. Six real-time agents share one process here: on a busy machine the playout
        # conceals and waits out stalls, which lengthens what is heard (2.76 s seen with two CPU
        # hogs), so the ceiling is 3 s; the tone must still be the talker's.
        assert 1.5 <= heard.sound_s <= 3.0, f"{x.name}: {heard}"
        assert abs(heard.peaks_hz[0] - 440) < 5, f"{x.name}: {heard}"


async def test_the_next_stream_from_a_peer_starts_from_the_delays_its_last_stream_learnt(tmp_path: Path) -> None:
    async with agent("a", tmp_path, freq=440) as a, agent("b", tmp_path, freq=660) as b:
        await a.node.handle().dial(b.addr)
        await know_each_other(a, b)
        await a.hold(HOLD_S)
        await wait_until(lambda: b.talk.stats().streams_in == 0 and a.peer_id in b.talk._learnt, 20,
                         "b to retire a's stream and keep what it learnt")
        learnt = b.talk._learnt[a.peer_id][1]
        mass = float(learnt._hist.sum())
        assert mass > 0.1, mass  # ~100 packets of 40 ms
        await a.button.press()
        await wait_until(lambda: any(i.peer == a.peer_id for i in b.talk._in.values()), 5, "a's second stream")
        est = next(i for i in b.talk._in.values() if i.peer == a.peer_id).playout.estimator
        fresh = 1 - est.forget ** est.samples  # what a stream starting from nothing holds by now
        assert float(est._hist.sum()) > fresh + 0.5 * est.forget ** est.samples * mass
        await a.button.release()
        await wait_until(lambda: b.talk.stats().streams_in == 0, 20, "b to hear the end of a's second talk")
