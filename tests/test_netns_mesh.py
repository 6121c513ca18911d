"""The mesh across real hosts: `tests/netrig/meshnode.py` processes in the rig's namespaces.

Discovery (mDNS, bootstrap + Kademlia), pub/sub under loss and delay, an audio stream under
loss, a link cut mid-stream, a partition and its healing. Every test prints its figures;
run with `-s` to see them:

    timeout -s KILL 600 .venv/bin/python -m pytest tests/test_netns_mesh.py -s -q

Every wait is bounded; every process is killed after its test (and by the rig's teardown).
"""

from __future__ import annotations

import json
import math
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from agent.measure import percentile
from tests.netrig import Host, Rig, read_line
from tests.netrig.marks import skip_unless_netns

pytest_plugins = ["tests.netrig.fixtures"]

REPO = Path(__file__).resolve().parents[1]
PY = sys.executable
Ev = dict[str, Any]


# -- a mesh node process, driven from the test ----------------------------------------------


class MeshProc:
    """One `meshnode` process on a rig host: its events collected by a reader thread."""

    def __init__(self, host: Host, log_dir: Path, **config: Any) -> None:
        self.host = host
        self.config = {"node_name": host.name, "listen_host": host.ip, **config}
        self.events: list[Ev] = []
        self._cond = threading.Condition()
        self._ids = iter(range(1, 1 << 30))
        self._stdin_lock = threading.Lock()
        self.log = log_dir / f"{host.name}-{int(time.monotonic() * 1000)}.log"
        self.proc = host.exec([PY, "-m", "tests.netrig.meshnode", json.dumps(self.config)],
                              cwd=REPO, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              stderr=self.log.open("w"), text=True, bufsize=1)
        self.peer_id = ""
        self.addr = ""

    def started(self, timeout: float = 30.0) -> "MeshProc":
        """Wait for `Started`, then collect the rest of stdout on a thread."""
        try:
            first = json.loads(read_line(self.proc, timeout))
        except (TimeoutError, EOFError) as exc:
            raise AssertionError(f"{self.host.name}: node did not start: {exc}\n{self.stderr()}") from exc
        assert first["event"] == "Started", first
        self.events.append(first)
        self.peer_id = first["local_peer_id"]
        self.addr = first["listen_addresses"][0]
        threading.Thread(target=self._read, daemon=True).start()
        return self

    def stderr(self) -> str:
        try:
            return self.log.read_text()[-3000:]
        except OSError:
            return ""

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            try:
                ev = json.loads(line)
            except json.JSONDecodeError:
                ev = {"event": "BadLine", "line": line}
            with self._cond:
                self.events.append(ev)
                self._cond.notify_all()

    def send(self, cmd: str, timeout: float = 15.0, **args: Any) -> Ev:
        """Send a command and wait for its reply (raises AssertionError when it failed)."""
        assert self.proc.stdin is not None
        with self._stdin_lock:
            cid = next(self._ids)
            self.proc.stdin.write(json.dumps({"cmd": cmd, "id": cid, **args}) + "\n")
            self.proc.stdin.flush()
        [reply] = self.wait_for(lambda e: e.get("reply") == cmd and e.get("id") == cid, timeout,
                                what=f"reply to {cmd}")
        assert reply["ok"], f"{self.host.name}: {cmd} failed: {reply}"
        return reply

    def wait_for(self, pred: Callable[[Ev], bool], timeout: float = 15.0, count: int = 1,
                 what: str = "event") -> list[Ev]:
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                hits = [e for e in self.events if pred(e)]
                if len(hits) >= count:
                    return hits
                left = deadline - time.monotonic()
                if left <= 0 or self.proc.poll() is not None:
                    raise AssertionError(
                        f"{self.host.name}: {what}: {len(hits)}/{count} after {timeout} s "
                        f"(exit {self.proc.poll()})\n{self.stderr()}")
                self._cond.wait(min(left, 0.5))

    def of(self, kind: str, since: float = 0.0) -> list[Ev]:
        with self._cond:
            return [e for e in self.events if e.get("event") == kind and e.get("t", 0) >= since]

    def connected(self) -> set[str]:
        """Peers connected now, by the node's own events (Connected minus Disconnected)."""
        peers: set[str] = set()
        with self._cond:
            for e in self.events:
                if e.get("event") == "PeerConnected":
                    peers.add(e["peer_id"])
                elif e.get("event") == "PeerDisconnected":
                    peers.discard(e["peer_id"])
        return peers

    def messages(self, topic: str, since: float = 0.0) -> list[Ev]:
        return [e for e in self.of("Message", since) if e["topic"] == topic]

    def alive(self) -> bool:
        return self.proc.poll() is None


def wait_until(cond: Callable[[], bool], timeout: float, step: float = 0.1) -> float | None:
    """Poll `cond` until true; returns the seconds it took, or None on timeout."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        if cond():
            return time.monotonic() - t0
        time.sleep(step)
    return None


def full_mesh(nodes: list[MeshProc]) -> bool:
    ids = {n.peer_id for n in nodes}
    return all(n.connected() >= ids - {n.peer_id} for n in nodes)


# -- fixtures -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def rig4() -> Iterator[Rig]:
    skip_unless_netns()
    with Rig(4) as rig:
        yield rig


@pytest.fixture
def fleet(rig4: Rig, tmp_path: Path) -> Iterator[Callable[..., MeshProc]]:
    """`fleet(host, **config)` starts a node (not yet waited for); all are killed after the test,
    faults cleared."""
    started: list[MeshProc] = []

    def start(host: Host, **config: Any) -> MeshProc:
        node = MeshProc(host, tmp_path, **config)
        started.append(node)
        return node

    try:
        yield start
    finally:
        crashed = [n.host.name for n in started if n.proc.poll() is not None]
        for n in started:
            n.host.kill(n.proc)
        rig4.reset_faults()
        assert not crashed, f"node process(es) exited during the test: {crashed}"


NO_DISCOVERY = dict(enable_mdns=False, enable_kad=False)


# -- shared steps --------------------------------------------------------------------------


def start_all(nodes: list[MeshProc]) -> list[MeshProc]:
    for n in nodes:
        n.started()
    return nodes


def dial_full_mesh(nodes: list[MeshProc]) -> None:
    for i, a in enumerate(nodes):
        for b in nodes[i + 1:]:
            a.send("dial", addr=b.addr)
    assert wait_until(lambda: full_mesh(nodes), timeout=15) is not None


def publish(node: MeshProc, topic: str, seq: int) -> None:
    body = json.dumps({"from": node.host.name, "seq": seq, "ts": time.monotonic()})
    node.send("publish", topic=topic, data=body)


def received(node: MeshProc, topic: str, sender: MeshProc, since: float = 0.0) -> list[dict]:
    """Payloads `node` got from `sender` on `topic`, published at or after `since`, with arrival `t`."""
    out = []
    for e in node.messages(topic):
        body = json.loads(e["data"])
        if e["peer_id"] == sender.peer_id and body["ts"] >= since:
            out.append({**body, "t": e["t"]})
    return out


def warm_up(nodes: list[MeshProc], topic: str, timeout: float = 15.0) -> float | None:
    """Publish from every node until every node has heard every other once (GossipSub needs a
    heartbeat or two to graft its mesh; earlier messages may be lost). Returns the time taken."""
    t0 = time.monotonic()
    seq = 0

    def everyone_heard() -> bool:
        return all(received(n, topic, m) for n in nodes for m in nodes if m is not n)

    while time.monotonic() - t0 < timeout:
        for n in nodes:
            publish(n, topic, -1 - seq)
        seq += 1
        if wait_until(everyone_heard, timeout=0.5, step=0.05) is not None:
            return time.monotonic() - t0
    return None


def latencies_ms(node: MeshProc, topic: str, senders: list[MeshProc], since: float) -> list[float]:
    return [(m["t"] - m["ts"]) * 1000 for s in senders for m in received(node, topic, s, since) if m["seq"] >= 0]


def fmt_ms(values: list[float]) -> str:
    if not values:
        return "n/a"
    return (f"p50 {statistics.median(values):.1f} ms, p99 {percentile(values, 99, math.nan):.1f} ms, "
            f"max {max(values):.1f} ms (n={len(values)})")


# -- 1. mDNS --------------------------------------------------------------------------------

MDNS = dict(enable_mdns=True, enable_kad=False)


@pytest.mark.netns
def test_mdns_discovery_connects_four_hosts_started_one_after_another(rig4: Rig, fleet) -> None:
    """No bootstrap config at all: each host is found over multicast on the bridge. zeroconf's
    default interface choice (every interface, IP_MULTICAST_IF per address) works in a namespace."""
    nodes = []
    t0 = time.monotonic()
    for h in rig4:
        nodes.append(fleet(h, **MDNS).started())
    t_up = time.monotonic()
    took = wait_until(lambda: full_mesh(nodes), timeout=30)
    for n in nodes:
        print(f"  {n.host.name}: PeerDiscovered {len(n.of('PeerDiscovered'))}, connected {len(n.connected())}")
    print(f"mDNS, hosts started one by one ({t_up - t0:.1f} s): full mesh {took and round(took, 2)} s "
          "after the last started")
    assert took is not None, "mDNS did not connect every host to every other"
    for n in nodes:
        assert set(n.send("connected_peers")["peers"]) == {m.peer_id for m in nodes} - {n.peer_id}


@pytest.mark.netns
def test_mdns_discovery_connects_four_hosts_started_together(rig4: Rig, fleet) -> None:
    """A fleet powered on at once: every announcement lands in the others' start-up window."""
    nodes = start_all([fleet(h, **MDNS) for h in rig4])
    took = wait_until(lambda: full_mesh(nodes), timeout=15)
    print(f"mDNS, hosts started together: full mesh after {took} s; connected per host "
          f"{[len(n.connected()) for n in nodes]}")
    assert took is not None, "hosts started together did not find each other over mDNS"


# -- 2. bootstrap + Kademlia ----------------------------------------------------------------


@pytest.mark.netns
def test_discovery_through_one_bootstrap_host_without_mdns(rig4: Rig, fleet) -> None:
    hub = fleet(rig4[0], enable_mdns=False, enable_kad=True).started()
    t0 = time.monotonic()
    others = start_all([fleet(h, enable_mdns=False, enable_kad=True, bootstrap_peers=[hub.addr])
                        for h in rig4[1:]])
    nodes = [hub, *others]
    took = wait_until(lambda: full_mesh(nodes), timeout=45)
    for n in others:
        found = {e["peer_id"] for e in n.of("PeerDiscovered")}
        print(f"  {n.host.name}: PeerDiscovered {len(found)}, connected {len(n.connected())}")
    print(f"bootstrap + DHT: hosts 1..3 started in {time.monotonic() - t0 - (took or 0):.1f} s; "
          f"full mesh after {took and round(took, 2)} s")
    assert took is not None, f"not a full mesh: {[len(n.connected()) for n in nodes]}"
    for a in others:
        for b in others:
            if a is not b:
                assert b.peer_id in a.connected(), f"{a.host.name} never connected to {b.host.name}"


# -- 3. pub/sub under loss and delay --------------------------------------------------------

N_MSGS = 20


def publish_round(nodes: list[MeshProc], topic: str, count: int, gap: float = 0.05) -> float:
    """Every node publishes `count` messages (seq 0..count-1), interleaved; returns the start."""
    t0 = time.monotonic()
    for seq in range(count):
        for n in nodes:
            publish(n, topic, seq)
        time.sleep(gap)
    return t0


def all_delivered(nodes: list[MeshProc], topic: str, since: float, count: int) -> bool:
    return all(len({m["seq"] for m in received(n, topic, s, since) if m["seq"] >= 0}) >= count
               for n in nodes for s in nodes if s is not n)


@pytest.mark.netns
def test_pubsub_reaches_every_host_with_5_percent_loss_on_every_link(rig4: Rig, fleet) -> None:
    nodes = start_all([fleet(h, **NO_DISCOVERY, subscribe=["lobby"]) for h in rig4])
    dial_full_mesh(nodes)
    assert warm_up(nodes, "lobby") is not None
    clean_t0 = publish_round(nodes, "lobby", N_MSGS)
    assert wait_until(lambda: all_delivered(nodes, "lobby", clean_t0, N_MSGS), timeout=15) is not None
    clean = [x for n in nodes for x in latencies_ms(n, "lobby", nodes, clean_t0)]
    for h in rig4:
        h.set_loss(5)
    lossy_t0 = publish_round(nodes, "lobby", N_MSGS)
    took = wait_until(lambda: all_delivered(nodes, "lobby", lossy_t0, N_MSGS), timeout=30)
    lossy = [x for n in nodes for x in latencies_ms(n, "lobby", nodes, lossy_t0)]
    expected = len(nodes) * (len(nodes) - 1) * N_MSGS
    got = sum(len({m["seq"] for m in received(n, "lobby", s, lossy_t0)})
              for n in nodes for s in nodes if s is not n)
    print(f"pub/sub, 4 hosts, {N_MSGS} msgs each: no loss {fmt_ms(clean)}")
    print(f"pub/sub, 5% loss on every link: {got}/{expected} delivered, {fmt_ms(lossy)}; "
          f"complete {took and round(took, 2)} s after the round ended")
    assert took is not None and got == expected, f"{got}/{expected} delivered under 5% loss"


@pytest.mark.netns
def test_pubsub_through_30ms_jittered_relays(rig4: Rig, fleet) -> None:
    """Hosts 1..3 reach host 0 only through a relay adding 30 +- 10 ms each way; leaf to leaf
    crosses two relays (GossipSub forwards through host 0)."""
    nodes = start_all([fleet(h, **NO_DISCOVERY, subscribe=["lobby"]) for h in rig4])
    hub, leaves = nodes[0], nodes[1:]
    hub_port = int(hub.addr.split("/tcp/")[1].split("/")[0])
    for i, leaf in enumerate(leaves):
        relay = leaf.host.start_relay((rig4[0], hub_port), delay_ms=30, jitter_ms=10, seed=i)
        leaf.send("dial", addr=f"/ip4/{relay.address[0]}/tcp/{relay.address[1]}/p2p/{hub.peer_id}")
    assert wait_until(lambda: len(hub.connected()) == 3, timeout=15) is not None
    assert all(leaf.connected() == {hub.peer_id} for leaf in leaves), "leaves must meet only through the hub"
    assert warm_up(nodes, "lobby", timeout=20) is not None
    t0 = publish_round(nodes, "lobby", N_MSGS)
    took = wait_until(lambda: all_delivered(nodes, "lobby", t0, N_MSGS), timeout=20)
    one_hop = [x for leaf in leaves for x in latencies_ms(leaf, "lobby", [hub], t0)] + \
        latencies_ms(hub, "lobby", leaves, t0)
    two_hops = [x for a in leaves for x in latencies_ms(a, "lobby", [b for b in leaves if b is not a], t0)]
    print(f"pub/sub through 30+-10 ms relays: one relay {fmt_ms(one_hop)}; two relays {fmt_ms(two_hops)}; "
          f"all delivered {took and round(took, 2)} s after the round")
    assert took is not None, "not every message reached every host through the relays"
    assert statistics.median(one_hop) >= 20, "the relay's delay is missing"
    assert statistics.median(two_hops) >= 40, "leaf-to-leaf traffic did not cross two relays"
    assert max(two_hops) < 5000


# -- 4. audio under loss --------------------------------------------------------------------


def open_stream(sender: MeshProc, receiver: MeshProc) -> int:
    sid = sender.send("request_audio_stream", peer=receiver.peer_id)["stream_id"]
    sender.wait_for(lambda e: e.get("event") == "AudioStreamAccepted" and e["stream_id"] == sid,
                    what="AudioStreamAccepted")
    return sid


def frames(node: MeshProc, sid: int, since: float = 0.0, until: float = float("inf")) -> list[Ev]:
    return [e for e in node.of("AudioData", since) if e["stream_id"] == sid and e["t"] < until]


def send_done(node: MeshProc, sid: int, after: int, timeout: float) -> Ev:
    return node.wait_for(lambda e: e.get("event") == "SendDone" and e["stream_id"] == sid,
                         timeout, count=after, what="SendDone")[after - 1]


@pytest.mark.netns
def test_audio_stream_under_5_percent_loss_stays_up_in_order(rig4: Rig, fleet) -> None:
    tx, rx = start_all([fleet(h, **NO_DISCOVERY) for h in rig4[:2]])
    tx.send("dial", addr=rx.addr)
    sid = open_stream(tx, rx)
    tx.send("send_frames", stream_id=sid, seconds=4)
    clean_sent = send_done(tx, sid, 1, timeout=20)["sent"]
    wait_until(lambda: len(frames(rx, sid)) >= clean_sent, timeout=5)
    t_loss = time.monotonic()
    rx.host.set_loss(5)  # both directions of the receiver's link: data and ACKs
    tx.send("send_frames", stream_id=sid, seconds=8, first=clean_sent)
    lossy_done = send_done(tx, sid, 2, timeout=30)
    wait_until(lambda: len(frames(rx, sid)) >= clean_sent + lossy_done["sent"], timeout=10)

    got = frames(rx, sid)
    clean = [(e["arrival_us"] - e["timestamp_us"]) / 1000 for e in got if e["t"] < t_loss]
    lossy = [(e["arrival_us"] - e["timestamp_us"]) / 1000 for e in got if e["t"] >= t_loss]
    sent = clean_sent + lossy_done["sent"]
    stats = tx.send("stats")["stats"]
    print(f"audio 20 ms frames, no loss: {fmt_ms(clean)}")
    print(f"audio under 5% loss: {fmt_ms(lossy)}")
    print(f"audio frames: sent {sent}, received {len(got)}, lost {sent - len(got)} "
          f"(sender dropped {stats['audio_frames_dropped']})")
    closed = tx.of("AudioStreamClosed") + rx.of("AudioStreamClosed")
    assert not closed, f"the stream closed under loss: {closed}"
    assert lossy_done["error"] is None
    seqs, marks = [e["sequence"] for e in got], [e["mark"] for e in got]
    assert seqs == sorted(set(seqs)) and marks == sorted(marks), "frames out of order"
    assert sent - len(got) <= sent * 0.05, "more than 5% of the frames lost"
    assert percentile(lossy, 99, math.nan) < 2000, "p99 latency under 5% loss above 2 s"


# -- 5. link down mid-stream, and back ------------------------------------------------------

DOWN_S = 10.0
GOAL_S = 10.0  # the goal for detecting a lost peer and for reconnecting
RECOVER_S = 30.0  # the hard bound the tests assert (a shared, noisy machine)


def report_goals(times: dict[str, float | None]) -> str:
    return ", ".join(f"{k} {'never' if v is None else f'{v:.1f} s'}"
                     f"{'' if v is not None and v < GOAL_S else ' (GOAL MISSED)'}" for k, v in times.items())


def first_after(node: MeshProc, kind: str, t: float, peer: str | None = None) -> float | None:
    """Seconds from `t` to the first `kind` event at or after `t` (for `peer`), or None."""
    for e in node.of(kind, t):
        if peer is None or e.get("peer_id") == peer:
            return e["t"] - t
    return None


def heard_again(node: MeshProc, sender: MeshProc, topic: str, since: float) -> float | None:
    """Seconds from `since` to the arrival of the first message `sender` published after `since`."""
    got = received(node, topic, sender, since)
    return min(m["t"] for m in got) - since if got else None


def publish_while(nodes: list[MeshProc], topic: str, seconds: float, done: Callable[[], bool] = lambda: False,
                  every: float = 0.25) -> None:
    """Every node publishes a status message every `every` s for `seconds` (or until `done()`)."""
    t_end = time.monotonic() + seconds
    seq = 0
    while time.monotonic() < t_end and not done():
        for n in nodes:
            publish(n, topic, seq)
        seq += 1
        time.sleep(every)


@pytest.mark.netns
def test_link_down_10s_mid_stream_then_reconnect(rig4: Rig, fleet) -> None:
    tx = fleet(rig4[0], **NO_DISCOVERY, subscribe=["status"]).started()
    rx = fleet(rig4[1], **NO_DISCOVERY, subscribe=["status"], bootstrap_peers=[tx.addr]).started()
    pair = [tx, rx]
    assert wait_until(lambda: full_mesh(pair), timeout=15) is not None, "bootstrap did not connect"
    assert warm_up(pair, "status") is not None
    sid = open_stream(tx, rx)
    tx.send("send_frames", stream_id=sid, seconds=60)
    publish_while(pair, "status", 2.0)

    t_down = time.monotonic()
    rx.host.link_down()  # the cable, pulled at the switch
    publish_while(pair, "status", DOWN_S)
    t_up = time.monotonic()
    rx.host.link_up()
    publish_while(pair, "status", 30.0, done=lambda: heard_again(rx, tx, "status", t_up) is not None
                  and heard_again(tx, rx, "status", t_up) is not None)
    publish_while(pair, "status", 1.0)
    done = send_done(tx, sid, 1, timeout=5)

    got = frames(rx, sid)
    closes = {n.host.name: n.of("AudioStreamClosed", t_down) for n in pair}
    detect = {n.host.name: first_after(n, "AudioStreamClosed", t_down) for n in pair}
    lost_peer = {n.host.name: first_after(n, "PeerDisconnected", t_down) for n in pair}
    reconnect = {n.host.name: first_after(n, "PeerConnected", t_up) for n in pair}
    flow = {"h1<-h0": heard_again(rx, tx, "status", t_up), "h0<-h1": heard_again(tx, rx, "status", t_up)}
    sent_before_cut = len([e for e in got if e["t"] < t_down])
    print(f"link down {DOWN_S:g} s: AudioStreamClosed after {detect} s, reasons "
          f"{ {k: [e['reason'] for e in v] for k, v in closes.items()} }")
    print(f"link down: PeerDisconnected after {lost_peer} s (None = never)")
    print(f"link up: PeerConnected again after {reconnect} s (None = connection never dropped); "
          f"status heard again after {flow} s")
    print(f"link down: frames sent {done['sent']}, received {len(got)} ({sent_before_cut} before the cut), "
          f"lost {done['sent'] - len(got)}; sender stopped with: {done['error']}")

    goals = {f"stream closed ({k})": v for k, v in detect.items()}
    goals.update({f"peer lost ({k})": v for k, v in lost_peer.items()})
    goals.update({f"status flows {k}": v for k, v in flow.items()})
    print("goals (< 10 s):", report_goals(goals))

    for name, t in detect.items():
        assert t is not None and t < GOAL_S, f"{name}: stream not closed within {GOAL_S} s of the cut"
        assert all(e["reason"] for e in closes[name]), closes
    for direction, t in flow.items():  # the hard bound; the 10 s goal is reported above
        assert t is not None and t < RECOVER_S, f"status {direction} did not flow within {RECOVER_S} s of link up"
    assert set(rx.send("connected_peers")["peers"]) == {tx.peer_id}
    seqs = [e["sequence"] for e in got]
    assert seqs == sorted(set(seqs)), "frames out of order"
    for name, t in lost_peer.items():  # TCP keepalive + user timeout on every connection
        assert t is not None and t < GOAL_S, f"{name}: no PeerDisconnected within {GOAL_S:g} s of the cut"


# -- 6. partition and heal ------------------------------------------------------------------


@pytest.mark.netns
def test_partition_halves_work_alone_and_heal(rig4: Rig, fleet) -> None:
    hub = fleet(rig4[0], enable_mdns=False, enable_kad=True, subscribe=["status"]).started()
    others = start_all([fleet(h, enable_mdns=False, enable_kad=True, subscribe=["status"],
                              bootstrap_peers=[hub.addr]) for h in rig4[1:]])
    nodes = [hub, *others]
    assert wait_until(lambda: full_mesh(nodes), timeout=45) is not None, "no full mesh before the cut"
    assert warm_up(nodes, "status") is not None
    halves = [nodes[:2], nodes[2:]]

    t_cut = time.monotonic()
    rig4.partition([n.host for n in halves[0]], [n.host for n in halves[1]])
    publish_while(nodes, "status", DOWN_S)
    view = {n.host.name: len(n.send("connected_peers")["peers"]) for n in nodes}
    t_heal = time.monotonic()
    rig4.heal()

    def everyone_heard_everyone() -> bool:
        return all(heard_again(n, m, "status", t_heal) is not None for n in nodes for m in nodes if m is not n)

    publish_while(nodes, "status", 30.0, done=everyone_heard_everyone)

    inside, across = [], []
    for half in halves:
        for n in half:
            for m in nodes:
                if m is n:
                    continue
                during = [x for x in received(n, "status", m, t_cut) if x["t"] < t_heal]
                (inside if m in half else across).append(len(during))
    sent_each = len([x for x in received(nodes[1], "status", nodes[0], t_cut) if x["ts"] < t_heal])
    lost_peer = {n.host.name: first_after(n, "PeerDisconnected", t_cut) for n in nodes}
    heal = {n.host.name: max((heard_again(n, m, "status", t_heal) or float("inf"))
                             for m in nodes if m is not n) for n in nodes}
    print(f"partition {DOWN_S:g} s: messages heard inside a half per pair {inside} "
          f"(~{sent_each} sent per node), across the cut {across}")
    print(f"partition: PeerDisconnected after {lost_peer} s (None = never); peers each host still "
          f"listed as connected at the end of the cut: {view}")
    print(f"heal: every host heard every other again after {heal} s")
    assert min(inside) >= 0.8 * sent_each > 0, "a half did not keep pub/sub working alone"
    assert max(across) == 0, "messages crossed the partition"
    print("goals (< 10 s):", report_goals({f"heal {k}": v for k, v in heal.items()}))
    for name, t in heal.items():
        assert t < RECOVER_S, f"{name}: not hearing every host within {RECOVER_S} s of the heal"
    # Pub/sub flows again through whichever links come back first; every direct connection
    # follows once the redial loop (backing off to redial_max_s) gets through.
    t_full = wait_until(lambda: full_mesh(nodes), timeout=RECOVER_S)
    print(f"heal: every host connected to every other again {t_full} s later")
    for n in nodes:
        assert set(n.send("connected_peers")["peers"]) == {m.peer_id for m in nodes} - {n.peer_id}, \
            f"{n.host.name}: fleet view incomplete after the heal"


# -- 7. agent level -------------------------------------------------------------------------

AGENT_PORT = 4001
AGENT_PRESS_AT_S = 6.0  # after the agent starts: the mesh and the group announcements, under loss
AGENT_HOLD_S = 2.0
AGENT_TAIL_S = 4.0


def last_status(monitor_out: Path) -> dict[str, dict[str, Any]]:
    """Each node's latest status, by name, from `avi-agent monitor --json` output."""
    latest: dict[str, dict[str, Any]] = {}
    for line in monitor_out.read_text().splitlines():
        try:
            view = json.loads(line)
        except json.JSONDecodeError:
            continue
        for node in view.get("nodes", []):
            latest[node["node"]] = node
    return latest


def tcp_counters(host: Host) -> dict[str, int]:
    """The host's TCP counters (its namespace's /proc/net/snmp): OutSegs, RetransSegs, ..."""
    names, values = [line.split()[1:] for line in host.run(["cat", "/proc/net/snmp"]).stdout.splitlines()
                     if line.startswith("Tcp:")]
    return {k: int(v) for k, v in zip(names, values)}


@pytest.mark.netns
def test_agent_push_to_talk_over_a_lossy_link(rig4: Rig, tmp_path: Path) -> None:
    """Two `avi-agent run` processes with fake hardware on two hosts, 5% loss on the listener's
    link (both directions): A holds the button 2 s with a 440 Hz tone; B's WAV is still 440 Hz
    and about 2 s long. Figures from B's own status (read by `avi-agent monitor` on B's host)."""
    from agent.simulate import SimNode, prepare, start, stop
    from tests.test_e2e_agents import SILENT_RMS, analyse

    ha, hb = rig4[0], rig4[1]
    a = SimNode("a", 440.0, [(AGENT_PRESS_AT_S, AGENT_HOLD_S)], port=AGENT_PORT, host=ha.ip)
    b = SimNode("b", 660.0, [], port=AGENT_PORT, host=hb.ip)
    prepare(tmp_path, [a, b])  # keys and configs; b bootstraps to a by address and peer id, mDNS off
    watch_s = AGENT_PRESS_AT_S + AGENT_HOLD_S + AGENT_TAIL_S
    monitor_out = tmp_path / "monitor.jsonl"
    monitor: subprocess.Popen | None = None
    codes: dict[str, int | None] = {}
    tcp0 = {h.name: tcp_counters(h) for h in (ha, hb)}
    hb.set_loss(5)
    try:
        start(a, ha.exec)
        start(b, hb.exec)
        with monitor_out.open("w") as out, (tmp_path / "monitor.log").open("w") as err:
            monitor = hb.exec([PY, "-m", "agent", "monitor", "--config", str(b.dir / "agent.toml"),
                               "--dial", b.addr, "--json", "--duration", str(watch_s)],
                              cwd=REPO, stdout=out, stderr=err)
        t0 = time.monotonic()
        while time.monotonic() - t0 < watch_s + 15 and monitor.poll() is None:
            for n in (a, b):
                assert n.proc is not None and n.proc.poll() is None, \
                    f"agent {n.name} exited ({n.proc and n.proc.returncode}):\n{n.log.read_text()[-3000:]}"
            time.sleep(0.2)
        assert monitor.poll() == 0, f"monitor: exit {monitor.poll()}\n{(tmp_path / 'monitor.log').read_text()}"
        tcp = {h.name: {k: v - tcp0[h.name][k] for k, v in tcp_counters(h).items()} for h in (ha, hb)}
    finally:
        for n in (a, b):
            codes[n.name] = stop(n)  # SIGTERM, then SIGKILL to its group after 10 s
        if monitor is not None:
            hb.kill(monitor)
        rig4.reset_faults()

    status = last_status(monitor_out)
    sa, sb = status.get("a", {}), status.get("b", {})
    heard = analyse(b.wav)
    print(f"agent push-to-talk, 5% loss on b's link: a sent {sa.get('frames_sent')} frames; b received "
          f"{sb.get('frames_received')}, late {sb.get('frames_late')}, dropped {sb.get('drops')}; "
          f"mouth-to-ear p50/p99 {sb.get('latency_p50_ms')}/{sb.get('latency_p99_ms')} ms")
    print(f"b heard: {heard}")
    print("TCP segments sent/retransmitted: " + ", ".join(
        f"{name} {t['OutSegs']}/{t['RetransSegs']}" for name, t in tcp.items()))
    why = f"b's log:\n{b.log.read_text()[-3000:]}"
    assert codes == {"a": 0, "b": 0}, f"agents did not exit 0 on SIGTERM: {codes}"
    assert sum(t["RetransSegs"] for t in tcp.values()) > 0, "no TCP retransmit: was the link lossy?"
    assert heard.peaks and abs(heard.peaks[0][0] - 440) < 5, f"dominant {heard.peaks[:1]}, not 440 Hz; {why}"
    # A loss while the stream opens costs a 200 ms retransmit timeout: frames captured before
    # the stream is open are not sent, so allow a shorter talk than under no loss.
    assert 1.2 <= heard.sound_s <= 2.6, f"expected about {AGENT_HOLD_S} s of sound, got {heard.sound_s} s; {why}"
    assert heard.outside_rms < SILENT_RMS, f"sound outside the talk ({heard.outside_rms:.0f} RMS)"
    sent, received = sa.get("frames_sent", 0), sb.get("frames_received", 0)
    assert sent >= 60 and received >= 0.9 * sent, f"a sent {sent}, b received {received} (TCP retransmits)"
