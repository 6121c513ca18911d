"""agent.status: the v1 status message, the fleet view, and a real agent ignoring bad messages."""

from __future__ import annotations

import json
import signal
from pathlib import Path

import pytest
import trio
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.config import StatusConfig
from agent.status import (LISTED_PEERS_SENT, MAX_LISTED_PEERS, FleetView, LocalFigures, Status, StatusMessage,
                          StatusRejected,
                          decode_status, encode_status, fake_devices)
from tests.agent.test_service import AgentProc, write_config

PEER_A = "12D3KooWAarzhoLWpQDaDBzTEWRCN5u6NWPD34WvsXtm2TgzxFLP"
PEER_B = "12D3KooWSrvvFwwmqqc41LZY1RrEkoWwkoFoH2znHRdHaxQGee3b"


def msg(peer: str = PEER_A, node: str = "pi-a", seq: int = 0, **kw) -> StatusMessage:
    return StatusMessage(node=node, peer_id=peer, version="0.1.0", seq=seq, uptime_s=1.5, state="ok",
                         peers=1, **kw)


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def test_round_trip_and_version_field() -> None:
    m = msg(temp_c=48.2, last_error="audio: gone", connected_peers=[PEER_B])
    data = encode_status(m)
    assert json.loads(data)["v"] == 1
    assert decode_status(data, PEER_A, 4096) == m


def test_backends_field_names_fake_devices() -> None:
    m = msg(backends={"audio": "alsa", "gpio": "fake"})
    assert decode_status(encode_status(m), PEER_A, 4096).backends == {"audio": "alsa", "gpio": "fake"}
    assert fake_devices(m.backends) == ["fake gpio"]
    assert fake_devices({"audio": "fake", "gpio": "fake"}) == ["fake audio", "fake gpio"]
    assert fake_devices(msg().backends) == []  # a node of an older v1 sends none
    with pytest.raises(StatusRejected):  # bounded like every other field
        decode_status(json.dumps({**json.loads(encode_status(m)),
                                  "backends": {str(i): "x" for i in range(9)}}).encode(), PEER_A, 4096)


@pytest.mark.parametrize("data,kind", [
    (b"\xff\xfe not json", "malformed"),
    (b"[1, 2]", "malformed"),
    (b'{"v": 2, "node": "x"}', "version"),
    (b'{"node": "x"}', "version"),
    (json.dumps({**json.loads(encode_status(msg())), "peers": -1}).encode(), "malformed"),
    (json.dumps({**json.loads(encode_status(msg())), "peers": "3"}).encode(), "malformed"),
    (json.dumps({**json.loads(encode_status(msg())), "node": ""}).encode(), "malformed"),
    (encode_status(msg()).replace(b'"uptime_s":1.5', b'"uptime_s":NaN'), "malformed"),
    (encode_status(msg(peer=PEER_B)), "spoofed"),
    (b'{"v": 1, "pad": "' + b"x" * 5000 + b'"}', "oversized"),
])
def test_bad_messages_are_rejected_by_kind(data: bytes, kind: str) -> None:
    with pytest.raises(StatusRejected) as info:
        decode_status(data, PEER_A, 4096)
    assert info.value.kind == kind


def test_unknown_fields_within_v1_are_ignored() -> None:
    raw = {**json.loads(encode_status(msg())), "battery_pct": 80}
    assert decode_status(json.dumps(raw).encode(), PEER_A, 4096) == msg()


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=600) | st.builds(lambda d: json.dumps(d).encode(),
                                            st.dictionaries(st.text(max_size=8),
                                                            st.integers() | st.text(max_size=8) | st.none(),
                                                            max_size=6)))
def test_fleet_view_never_raises_on_garbage(data: bytes) -> None:
    view = FleetView()
    assert view.receive(PEER_A, data) is None
    assert view.stats().rejected == 1 and view.entries() == []


def test_fleet_view_last_seen_stale_and_bound() -> None:
    clock = Clock()
    view = FleetView(stale_after_s=10, max_nodes=2, local_peer_id="12D3KooWself", clock=clock)
    assert view.receive(PEER_A, encode_status(msg(PEER_A, "pi-a"))) is not None
    clock.t += 4
    assert view.receive(PEER_B, encode_status(msg(PEER_B, "pi-b"))) is not None
    clock.t += 7  # A heard 11 s ago, B 7 s ago
    a, b = view.entries()
    assert (a.status.node, a.stale, round(a.age(clock.t))) == ("pi-a", True, 11)
    assert (b.status.node, b.stale) == ("pi-b", False)
    assert view.fresh_count() == 1
    # A speaks again: fresh, latest message kept.
    view.receive(PEER_A, encode_status(msg(PEER_A, "pi-a", seq=5)))
    assert [(e.status.seq, e.stale, e.messages) for e in view.entries()] == [(5, False, 2), (0, False, 1)]
    # Bounded: a third node evicts the one quiet the longest (B).
    third = "12D3KooWFSBjazv5bKq3f69QRSa1WVdmEuBJPVVb81M7NUoeSHjX"
    clock.t += 1
    view.receive(third, encode_status(msg(third, "pi-c")))
    assert sorted(e.status.node for e in view.entries()) == ["pi-a", "pi-c"]
    assert view.stats().evicted == 1
    # Our own messages never enter the view.
    assert view.receive("12D3KooWself", encode_status(msg("12D3KooWself", "me"))) is None
    assert len(view.entries()) == 2


class FakeHandle:
    """Records publications (the publisher is tested against the real mesh in the process tests)."""

    def __init__(self) -> None:
        self.published: list[tuple[str, bytes]] = []
        self.published_at: list[float] = []  # trio time of each publication
        self.subscribed: list[str] = []

    async def subscribe(self, topic: str) -> None:
        self.subscribed.append(topic)

    async def publish(self, topic: str, data: bytes) -> None:
        self.published.append((topic, data))
        self.published_at.append(trio.current_time())


async def test_publisher_interval_change_and_coalescing(autojump_clock, hang_guard) -> None:
    """On trio's autojump clock, so the timing below is exact and the test is instant."""
    h = FakeHandle()
    t0 = trio.current_time()
    peers: list[str] = []
    state = ["ok"]
    status = Status(StatusConfig(interval_s=10.0, stale_after_s=30.0), h, "pi-a", PEER_A,
                    lambda: LocalFigures(state=state[0], peers=list(peers)))
    async with trio.open_nursery() as n:
        await n.start(status.run)
        assert h.subscribed == ["avi/status"]
        await trio.sleep(0.1)
        assert len(h.published) == 1  # at once on start
        # A new connection alone is no news for the fleet: it goes with the next message.
        peers.append(PEER_B)
        status.poke()
        await trio.sleep(0.5)
        assert len(h.published) == 1
        # A change a person would notice is published well before the next tick; a burst of
        # pokes coalesces.
        state[0] = "degraded"
        for _ in range(20):
            status.poke()
        await trio.sleep(0.5)
        assert len(h.published) == 2
        m = StatusMessage.model_validate_json(h.published[-1][1])
        assert (m.state, m.peers, m.connected_peers, m.seq) == ("degraded", 1, [PEER_B], 1)
        # A poke without a visible change does not publish.
        status.poke()
        await trio.sleep(1.0)
        assert len(h.published) == 2
        # The interval tick publishes anyway (10 s after the last tick).
        await trio.sleep(8.5)
        assert len(h.published) == 3
        # A reload to a shorter interval takes effect without waiting out the old one.
        status.reconfigure(StatusConfig(interval_s=1.0, stale_after_s=3.0))
        await trio.sleep(5.05)
        assert 6 <= len(h.published) <= 8
        # Exactly: the publisher wakes from its 1 s coalescing pause at 11.0 (the change was at
        # 10.6), takes the new interval (next tick 12.0), ticks at 12, 13, 14 and 15; we read at 15.65.
        assert len(h.published) == 7
        n.cancel_scope.cancel()
    # start; the change (after the 1 s coalescing pause); ticks at 10 s, then every second from 12 s
    assert [t - t0 for t in h.published_at] == pytest.approx([0, 1, 10, 12, 13, 14, 15], abs=1e-9)
    for topic, data in h.published:
        assert topic == "avi/status" and len(data) < 4096
        body = json.loads(data)
        assert not any("key" in k or "priv" in k for k in body)


def test_the_listed_peer_is_a_fleet_node_before_a_monitor() -> None:
    """`connected_peers` is a sample (LISTED_PEERS_SENT): a node connected to another node and
    to a monitor (which publishes no status) lists the node, whichever id sorts first."""
    monitor = "12D3KooW1111111111111111111111111111111111111111111"  # sorts before PEER_B
    peers = [PEER_B, monitor]
    s = Status(StatusConfig(), FakeHandle(), "pi-a", PEER_A, lambda: LocalFigures(state="ok", peers=peers))
    assert s.build().connected_peers == sorted(peers)[:LISTED_PEERS_SENT]  # nothing heard yet: id order
    assert s.view.receive(PEER_B, encode_status(msg(node="pi-b", peer=PEER_B))) is not None
    m = s.build()
    assert m.peers == 2 and m.connected_peers[0] == PEER_B


def test_message_stays_small_with_many_peers() -> None:
    s = Status(StatusConfig(), FakeHandle(), "n" * 64, PEER_A,
               lambda: LocalFigures(state="degraded", peers=[PEER_B + str(i) for i in range(100)],
                                    last_error="x" * 1000))
    m = s.build()
    assert m.peers == 100 and len(m.connected_peers) == LISTED_PEERS_SENT <= MAX_LISTED_PEERS
    assert len(encode_status(m)) < StatusConfig().max_message_bytes
    assert m.last_error is not None and len(m.last_error) == 300


async def test_agent_counts_and_ignores_malformed_status(tmp_path: Path) -> None:
    """A real agent process; the test is a mesh node that sends it bad status messages."""
    from agent.mesh import AviP2p, AviP2pConfig, Message

    agent = AgentProc(["run", "--config", str(write_config(tmp_path / "a.toml", interval=1.0, stale=3.0))])
    try:
        addr = await trio.to_thread.run_sync(agent.address)
        cfg = AviP2pConfig.local_only()
        async with AviP2p.start(cfg) as (node, events):
            h = node.handle()
            me = h.local_peer_id
            await h.subscribe("avi/status")
            await h.dial(addr)
            agent_peer = addr.rsplit("/p2p/", 1)[1]

            async def next_status(pred, timeout: float = 20.0) -> StatusMessage:
                with trio.fail_after(timeout):
                    async for ev in events:
                        if isinstance(ev, Message) and ev.topic == "avi/status" and ev.peer_id == agent_peer:
                            m = decode_status(ev.data, ev.peer_id, 4096)
                            if pred(m):
                                return m
                raise AssertionError("event channel closed")

            await next_status(lambda m: m.peers >= 1)
            bad = [b"not json at all", b'{"v": 99}', json.dumps({"v": 1, "node": "x"}).encode(),
                   encode_status(msg(PEER_B, "impostor")), b'{"v":1,"pad":"' + b"y" * 6000 + b'"}']
            for data in bad:
                await h.publish("avi/status", data)
            good = msg(me, "tester", seq=1)
            await h.publish("avi/status", encode_status(good))
            m = await next_status(lambda m: m.status_rejected >= len(bad) and m.fleet >= 1)
            assert m.status_rejected == len(bad)
            assert m.state == "ok" and m.node == "pi-a"
            assert agent.proc.poll() is None
        for kind in ("malformed", "version", "spoofed", "oversized"):
            await trio.to_thread.run_sync(agent.wait_log, f"dropped status message from {me[:6]}…{me[-8:]}: {kind}", 5.0)
        await trio.to_thread.run_sync(agent.wait_log, "fleet: first status from tester", 5.0)
        rc, _ = agent.signal_and_wait(signal.SIGTERM)
        assert rc == 0
    finally:
        agent.kill()


def test_health_figures(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import time
    from types import SimpleNamespace

    from agent import health
    from agent.health import ProcessCpu, load_average, rss_bytes, soc_temperature

    zone = tmp_path / "thermal_zone3"
    zone.mkdir()
    (zone / "type").write_text("cpu-thermal\n")
    (zone / "temp").write_text("48312\n")
    other = tmp_path / "thermal_zone0"
    other.mkdir()
    (other / "type").write_text("acpitz\n")
    (other / "temp").write_text("27800\n")
    assert soc_temperature(tmp_path) == 48.3  # the SoC zone, not the first
    (zone / "type").write_text("gpu\n")
    assert soc_temperature(tmp_path) == 27.8  # no SoC zone: thermal_zone0
    assert soc_temperature(tmp_path / "none") is None
    assert (rss_bytes() or 0) > 10 * 2**20
    assert load_average() is not None and load_average() >= 0
    # The real clocks: how much of a core this process gets depends on the machine's load (a
    # fixed "> 0.1" failed with every core busy), so the figure is checked against the same
    # clocks read just around its own window, which brackets it exactly under any load.
    c_a, w_a = time.process_time(), time.monotonic()
    cpu = ProcessCpu(min_window_s=0.2)
    c_b, w_b = time.process_time(), time.monotonic()
    end = time.monotonic() + 0.3
    while time.monotonic() < end or time.process_time() - c_b < 0.05:  # busy: close to one core
        pass
    c_c, w_c = time.process_time(), time.monotonic()
    busy = cpu.sample()
    c_d, w_d = time.process_time(), time.monotonic()
    assert busy > 0
    assert (c_c - c_b) / (w_d - w_a) - 0.0005 <= busy <= (c_d - c_a) / (w_c - w_b) + 0.0005
    # The window logic, on clocks the test sets: exact.
    clock = {"cpu": 10.0, "wall": 100.0}
    monkeypatch.setattr(health, "time", SimpleNamespace(process_time=lambda: clock["cpu"],
                                                        monotonic=lambda: clock["wall"]))
    cpu = ProcessCpu(min_window_s=0.2)
    clock.update(cpu=10.15, wall=100.3)
    assert cpu.sample() == 0.5
    clock.update(cpu=10.25, wall=100.4)
    assert cpu.sample() == 0.5  # too soon for a new window: the previous figure
    clock.update(cpu=10.25, wall=100.8)
    assert cpu.sample() == 0.2  # (10.25 - 10.15) / (100.8 - 100.3)


def test_talk_stream_fields_round_trip_and_are_bounded() -> None:
    from agent.status import MAX_LISTED_STREAMS, StatusMessage, TalkStreamStatus, decode_status, encode_status

    st = TalkStreamStatus(peer="12D3KooWxyz", codec="opus", delay_ms=62.5, target_ms=60.0, concealed=3,
                          stretched_ms=41.2, late=0)
    base = dict(node="n", peer_id="p", version="0", seq=1, uptime_s=1.0, state="ok", peers=0)
    msg = StatusMessage(**base, frames_concealed=3, stretched_ms=41.2, talk_streams=[st])
    back = decode_status(encode_status(msg), "p", 4096)
    assert back.talk_streams == [st] and back.frames_concealed == 3 and back.stretched_ms == 41.2
    with pytest.raises(ValueError):
        StatusMessage(**base, talk_streams=[st] * (MAX_LISTED_STREAMS + 1))


def test_interval_grows_with_the_fleet_and_staleness_follows_the_senders_interval() -> None:
    from agent.status import FLEET_STATUS_RATE, STALE_INTERVALS, fleet_interval

    assert fleet_interval(5.0, 0, FLEET_STATUS_RATE) == 5.0
    assert fleet_interval(5.0, 49, 1.0) == 50.0  # 50 nodes: 1 message/s for the whole fleet
    now = [100.0]
    view = FleetView(stale_after_s=15.0, clock=lambda: now[0])
    slow = StatusMessage(node="big", peer_id=PEER_B, version="1", seq=1, uptime_s=1.0, state="ok", peers=1,
                         interval_s=50.0)
    assert view.receive(PEER_B, encode_status(slow)) is not None
    now[0] += 60.0  # silent for more than stale_after_s, less than 2.5 of its own intervals
    assert view.fresh_count() == 1
    now[0] += STALE_INTERVALS * 50.0
    assert view.fresh_count() == 0


def test_a_retained_copy_counts_from_when_it_was_sent_and_never_rolls_back() -> None:
    now = [1000.0]
    view = FleetView(stale_after_s=15.0, clock=lambda: now[0])
    msg = StatusMessage(node="n", peer_id=PEER_B, version="1", seq=3, uptime_s=1.0, state="ok", peers=1)
    assert view.receive(PEER_B, encode_status(msg), age_s=10.0) is not None
    assert view.entries()[0].last_seen == 990.0
    assert view.receive(PEER_B, encode_status(msg), age_s=20.0) is None  # older than what we have
    now[0] += 6.0
    assert view.fresh_count() == 0  # 16 s since it was sent


def test_an_older_message_arriving_late_does_not_replace_a_newer_one() -> None:
    """Measured at N = 50: a node's first messages (published before it had peers) reached a
    neighbour after its third, and the view went back to "starting" with a 5 s interval: that
    node showed stale 15 s later. The origin's pub/sub sequence number orders its messages."""
    now = [1000.0]
    view = FleetView(stale_after_s=15.0, clock=lambda: now[0])

    def status(seq: int, uptime: float, interval: float, state: str = "ok") -> bytes:
        return encode_status(StatusMessage(node="n30", peer_id=PEER_B, version="1", seq=seq, uptime_s=uptime,
                                           state=state, peers=6, interval_s=interval))

    base = 1_796_000_000  # py-libp2p starts a node's sequence numbers at its start's unix time
    assert view.receive(PEER_B, status(2, 5.0, 34.0), seqno=base + 3) is not None
    assert view.receive(PEER_B, status(0, 0.0, 5.0, "starting"), seqno=base + 1) is None  # late, older
    assert view.receive(PEER_B, status(1, 0.5, 5.0), seqno=base + 2) is None
    assert view.receive(PEER_B, status(2, 5.0, 34.0), seqno=base + 3) is None  # a duplicate
    (entry,) = view.entries()
    assert (entry.status.seq, entry.status.state, entry.messages) == (2, "ok", 1)
    now[0] += 30.0  # within 2.5 of its 34 s interval: fresh (the older message would say stale)
    assert view.fresh_count() == 1
    # A restart: its seq starts at 0 again, its sequence numbers from the (later) clock.
    assert view.receive(PEER_B, status(0, 0.0, 5.0, "starting"), seqno=base + 100) is not None
    assert view.entries()[0].status.state == "starting"
    # Without sequence numbers (an older sender of events), the latest to arrive wins.
    assert view.receive(PEER_B, status(1, 0.4, 5.0)) is not None
    assert view.entries()[0].status.seq == 1


async def test_a_starting_node_publishes_first_when_ready(autojump_clock, hang_guard) -> None:
    """One message per node start less: the "starting" one (no peers yet) is not sent when the
    node is ready within STARTING_GRACE_S; a node that stays "starting" publishes it then."""
    from agent.status import STARTING_GRACE_S

    for ready_after, expect in ((0.3, ["ok"]), (None, ["starting"])):
        h = FakeHandle()
        state = ["starting"]
        status = Status(StatusConfig(interval_s=10.0, stale_after_s=30.0), h, "pi-a", PEER_A,
                        lambda: LocalFigures(state=state[0], peers=[]))
        t0 = trio.current_time()
        async with trio.open_nursery() as n:
            await n.start(status.run)
            if ready_after is not None:
                await trio.sleep(ready_after)
                state[0] = "ok"
                status.poke()
            await trio.sleep(STARTING_GRACE_S + 1.0)
            assert [StatusMessage.model_validate_json(d).state for _, d in h.published] == expect
            # the next one is a tick: an interval after the first
            first_at = h.published_at[0] - t0
            await trio.sleep(10.0 + first_at - (STARTING_GRACE_S + 1.0 + (ready_after or 0)) + 0.01)
            assert len(h.published) == 2 and h.published_at[1] - h.published_at[0] == pytest.approx(10.0, abs=1e-6)
            n.cancel_scope.cancel()
