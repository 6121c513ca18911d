"""Abusive but authenticated peers, forged pub/sub messages and half-open TCP connections
(issue 9). Real py-libp2p over 127.0.0.1; each test prints what it measured (run with `-s`).

- A peer flooding a topic far past `pubsub_rate_limit`: the node stays up, a well-behaved peer
  on the same topic loses nothing, and every flood message is either delivered or counted.
- A peer writing audio frames flat out on its stream: every frame is delivered or counted as
  dropped, and a paced 20 ms stream from another peer arrives complete and in order (its
  latency with and without the flood is printed).
- Pub/sub messages with a missing, wrong or tampered signature never reach the application.
- Raw TCP connections that never finish the handshake are closed by the node.
"""

from __future__ import annotations

import os
import statistics
from contextlib import AsyncExitStack, asynccontextmanager

import multiaddr
import trio
from libp2p.crypto.ed25519 import create_new_key_pair
from libp2p.peer.id import ID
from libp2p.peer.peerinfo import info_from_p2p_addr
from libp2p.pubsub.gossipsub import PROTOCOL_ID as GOSSIPSUB_PROTOCOL_ID
from libp2p.pubsub.gossipsub import GossipSub
from libp2p.pubsub.pb import rpc_pb2
from libp2p.pubsub.pubsub import PUBSUB_SIGNING_PREFIX, Pubsub
from libp2p.tools.anyio_service import background_trio_service

from agent.measure import percentile
from agent.mesh import (AudioData, AudioStreamAccepted, AudioStreamClosed, AudioStreamRequested,
                        AviP2p, Message)
from agent.mesh import _compat as compat
from agent.mesh import _audio_protocol as ap
from agent.mesh import now_us
from agent.mesh._frames import PROTOCOL_ID
from tests.mesh.meshutil import Node, cfg, until_connected
from tests.poll import wait_until

TOPIC = "abuse"
PCM = 640  # one 20 ms frame of 16 kHz mono s16le


class StampedNode(Node):
    """A `Node` that also notes when each AudioData reached the application (µs, monotonic)."""

    def __init__(self, node: AviP2p, events) -> None:  # type: ignore[no-untyped-def]
        super().__init__(node, events)
        self.arrived: dict[tuple[int, int], int] = {}

    async def record(self) -> None:
        async for ev in self.events:
            if isinstance(ev, AudioData):
                self.arrived[(ev.stream_id, ev.sequence)] = now_us()
            self.seen.append(ev)
            self._changed.set()
            self._changed = trio.Event()


@asynccontextmanager
async def started(*configs: dict):
    async with AsyncExitStack() as stack:
        nursery = await stack.enter_async_context(trio.open_nursery())
        out = []
        for c in configs:
            node, events = await stack.enter_async_context(AviP2p.start(cfg(**c)))
            rec = StampedNode(node, events)
            nursery.start_soon(rec.record)
            out.append(rec)
        try:
            yield out
        finally:
            nursery.cancel_scope.cancel()


def messages(node: Node, peer: str) -> list[bytes]:
    return [e.data for e in node.of(Message) if e.peer_id == peer and e.topic == TOPIC]


# --- 1. topic flood ------------------------------------------------------------------------

FLOOD_MESSAGES = 1000
FLOOD_BATCH = 100  # messages per RPC
LEGIT_PACE = 0.2  # 5 messages a second
# The target's limit in this test. The flood reaches the limiter only as fast as the node
# verifies it and forwards it (flooder, target and polite peer share one process): one message
# per RPC, at the default 200/s (the node also forwards 200/s to the polite peer), that ran at
# ~150-250 messages/s on this 2-core machine under load, and at 50/s at ~850/s idle, ~450/s
# with two CPU hogs, and ~30/s at a load average of 24: nothing over the limit to cut. So the
# flooder sends 100 messages per RPC (a hostile peer may batch): the node verifies each batch
# in one go, so they reach the limiter within a fraction of a second however slow the machine,
# and 50/s leaves the polite peer's 5/s a tenfold margin if its messages arrive bunched.
FLOOD_RATE_LIMIT = 50
# How long the node may take to account for the whole flood: ~1 s idle, ~35 s at a load
# average of 24 (one message per RPC); 120 s leaves room for a machine busier than that.
FLOOD_ACCOUNTING_TIMEOUT = 120.0


def raw_router(**kw) -> GossipSub:  # type: ignore[no-untyped-def]
    return GossipSub([GOSSIPSUB_PROTOCOL_ID], degree=6, degree_low=4, degree_high=12,
                     heartbeat_initial_delay=0.1, heartbeat_interval=0.3,
                     eclipse_protection_enabled=False, **kw)


class FloodingPubsub(compat.DeliveringPubsub):
    """The flooder's pub/sub: counts the flood messages (data starting with b"F") it actually
    wrote to the target's stream, so the test judges the node against what reached it (a
    py-libp2p peer drops what does not fit its outbound queue before it is ever sent)."""

    def __init__(self, host, router: GossipSub, target: ID) -> None:  # type: ignore[no-untyped-def]
        super().__init__(host, router, lambda m: None, 64 * 1024)
        self.target = target
        self.flood_written = 0

    def make_room(self, messages: int) -> None:
        """Let the outbound queue to the target hold a whole flood (nothing dropped unsent)."""
        self.peer_queues[self.target]._queue.max_size = messages + 256

    def flood_batch(self, topic: str, payloads: list[bytes]) -> None:
        """Queue one RPC carrying a signed message per payload (what `publish` does for one)."""
        batch = []
        for data in payloads:
            msg = rpc_pb2.Message(data=data, topicIDs=[topic], from_id=self.my_id.to_bytes(),
                                  seqno=self._next_seqno())
            msg.signature = self.sign_key.sign(PUBSUB_SIGNING_PREFIX.encode() + msg.SerializeToString())
            msg.key = self.host.get_public_key().serialize()
            batch.append(msg)
        self.router.send_rpc(self.target, rpc_pb2.RPC(publish=batch))

    async def write_msg(self, stream, rpc_msg: rpc_pb2.RPC) -> bool:  # type: ignore[no-untyped-def]
        ok = await super().write_msg(stream, rpc_msg)
        if ok and stream.muxed_conn.peer_id == self.target:
            self.flood_written += sum(1 for m in rpc_msg.publish if m.data.startswith(b"F"))
        return ok


@asynccontextmanager
async def raw_pubsub(target: Node, pubsub: Pubsub):
    """Run `pubsub` (on a raw host) connected to `target`, subscribed to TOPIC, and return once
    it knows `target` subscribes too."""
    router = pubsub.router
    async with background_trio_service(pubsub), background_trio_service(router):
        await pubsub.wait_until_ready()
        await pubsub.host.connect(info_from_p2p_addr(multiaddr.Multiaddr(target.addr)))
        await pubsub.subscribe(TOPIC)
        await wait_until(lambda: ID.from_base58(target.peer_id) in pubsub.peer_topics.get(TOPIC, set()), 10,
                         "the target's subscription")
        yield pubsub


async def probe_until_heard(t: Node, publish, peer: str) -> None:  # type: ignore[no-untyped-def]
    """Until the mesh is up, early messages may be lost (GossipSub): probe until one lands."""
    with trio.fail_after(10):
        while not messages(t, peer):
            await publish(TOPIC, b"probe")
            await trio.sleep(0.2)


async def test_topic_flood_is_cut_and_a_polite_peer_loses_nothing():
    async with started(dict(gossip_heartbeat_s=0.3, pubsub_rate_limit=FLOOD_RATE_LIMIT), {}) as (t, polite), \
            raw_host() as raw:
        await polite.h.dial(t.addr)
        for n in (t, polite):
            await n.h.subscribe(TOPIC)
        # The flooder: a peer whose router has no spam protection of its own (a node's router
        # would cut its own flood at the limit before sending it), with an outbound queue that
        # holds the whole flood, so every flood message goes on the wire.
        flooder = FloodingPubsub(raw, raw_router(spam_protection_enabled=False), ID.from_base58(t.peer_id))
        async with raw_pubsub(t, flooder):
            flooder.make_room(FLOOD_MESSAGES)
            flooder_id = raw.get_id().to_base58()
            await probe_until_heard(t, flooder.publish, flooder_id)
            await probe_until_heard(t, polite.h.publish, polite.peer_id)
            base = {p: len(messages(t, p)) for p in (flooder_id, polite.peer_id)}
            dropped_before = t.node.stats().messages_dropped
            rate_limit = t.node.config.pubsub_rate_limit

            def flood_got() -> list[bytes]:
                return [d for d in messages(t, flooder_id)[base[flooder_id]:] if d.startswith(b"F")]

            def flood_dropped() -> int:
                return t.node.stats().messages_dropped - dropped_before

            flood_done = trio.Event()
            polite_sent: list[bytes] = []
            flood_took = 0.0
            t0 = trio.current_time()

            async def flood() -> None:
                nonlocal flood_took
                for first in range(0, FLOOD_MESSAGES, FLOOD_BATCH):
                    flooder.flood_batch(TOPIC, [b"F%06d" % i + bytes(200)
                                                for i in range(first, first + FLOOD_BATCH)])
                    await trio.sleep(0)
                flood_took = trio.current_time() - t0
                flood_done.set()

            async def politely() -> None:
                for i in range(200):  # bounded: 40 s at most
                    data = b"P%04d" % i
                    await polite.h.publish(TOPIC, data)
                    polite_sent.append(data)
                    if flood_done.is_set() and i >= 5:
                        return
                    await trio.sleep(LEGIT_PACE)

            async with trio.open_nursery() as nursery:
                nursery.start_soon(flood)
                nursery.start_soon(politely)
            # The flood reached the node: every message the flooder published went on the
            # wire, and the node accounts for each one (delivered or counted as dropped).
            # How fast depends on this machine's load, so wait for it instead of guessing.
            with trio.fail_after(FLOOD_ACCOUNTING_TIMEOUT):
                while (flooder.flood_written < FLOOD_MESSAGES
                       or len(flood_got()) + flood_dropped() < flooder.flood_written):
                    await trio.sleep(0.05)
            # The flood's arrival lies inside [t0, t_end]; the limiter's one-second windows
            # over it number at most span + 2.
            span = trio.current_time() - t0
            await t.wait_for(lambda e: isinstance(e, Message) and e.data == polite_sent[-1])

            polite_got = [d for d in messages(t, polite.peer_id)[base[polite.peer_id]:] if d.startswith(b"P")]
            got, dropped = flood_got(), flood_dropped()
            rate = FLOOD_MESSAGES / flood_took
            print(f"\n[topic flood] flooder published {FLOOD_MESSAGES} in {flood_took:.2f} s "
                  f"({rate:.0f}/s; promised limit {rate_limit}/s per peer and topic) and wrote "
                  f"{flooder.flood_written} to the wire; the node accounted for them in {span:.2f} s "
                  f"({flooder.flood_written / span:.0f}/s): delivered {len(got)}, messages_dropped "
                  f"+{dropped}; polite peer sent {len(polite_sent)} at {1 / LEGIT_PACE:.0f}/s, "
                  f"{len(polite_got)} delivered")
            assert rate > 2 * rate_limit, "the flood was not a flood: the test proves nothing"
            assert flooder.flood_written == FLOOD_MESSAGES, "the flood did not all reach the node"
            assert len(got) + dropped == FLOOD_MESSAGES, "flood messages neither delivered nor counted"
            assert polite_got == polite_sent, "the polite peer lost messages to the flood"
            assert len(set(got)) == len(got), "duplicates delivered"
            # The excess is cut: at most the promised rate over the flood's arrival (plus a
            # window's worth at each end), and what is cut at the node is counted.
            allowed = rate_limit * (span + 2)
            assert len(got) <= allowed, f"{len(got)} delivered, limit allows {allowed:.0f}"
            assert dropped > 0, "the cut excess was not counted"
            # The node stays up and serves both peers.
            assert polite.peer_id in t.h.connected_peers()
            await polite.h.publish(TOPIC, b"after")
            await t.wait_for(lambda e: isinstance(e, Message) and e.data == b"after")


# --- 2. audio faster than real time -------------------------------------------------------

FLOOD_FRAMES = 5000
PACE = 0.02


@asynccontextmanager
async def raw_host():
    host = compat.secure_host(create_new_key_pair(), enable_mdns=False, max_connections=8)
    async with host.run(listen_addrs=[multiaddr.Multiaddr("/ip4/127.0.0.1/tcp/0")]):
        try:
            yield host
        finally:
            with trio.CancelScope(shield=True), trio.move_on_after(5):
                await compat.close_host(host)


async def open_paced(sender: Node, t: Node) -> int:
    sid = await sender.h.request_audio_stream(t.peer_id)
    await t.wait_for(lambda e: isinstance(e, AudioStreamRequested) and e.stream_id == sid)
    await t.h.accept_audio_stream(sid)
    await sender.wait_for(lambda e: isinstance(e, AudioStreamAccepted) and e.stream_id == sid)
    return sid


async def send_paced(sender: Node, sid: int, first: int, count: int, stamps: dict[int, int]) -> None:
    """`count` frames at 20 ms pace (absolute schedule, so a late wake-up does not slow it)."""
    start = trio.current_time()
    for i in range(first, first + count):
        await trio.sleep_until(start + (i - first) * PACE)
        stamps[i] = now_us()
        await sender.h.send_audio(sid, i.to_bytes(4, "big") + bytes(PCM - 4), timestamp_us=stamps[i])


def latencies_ms(t: StampedNode, sid: int, stamps: dict[int, int], seqs: range) -> list[float]:
    return [(t.arrived[(sid, s)] - stamps[s]) / 1000 for s in seqs if (sid, s) in t.arrived]


async def test_audio_flood_is_counted_and_a_paced_stream_is_intact():
    async with started({}, {}) as (t, paced), raw_host() as raw:
        await paced.h.dial(t.addr)
        sid = await open_paced(paced, t)
        stamps: dict[int, int] = {}
        quiet = 100  # 2 s without the flood
        await send_paced(paced, sid, 0, quiet, stamps)
        await t.wait_for(lambda e: isinstance(e, AudioData) and e.stream_id == sid, count=quiet)

        # The abusive peer: a raw stream that writes DATA frames flat out once accepted.
        await raw.connect(info_from_p2p_addr(multiaddr.Multiaddr(t.addr)))
        stream = await raw.new_stream(ID.from_base58(t.peer_id), [PROTOCOL_ID])
        conn = ap.AudioStreamConnection(ap.Role.INITIATOR)
        flood_sid = 0xF100D
        await stream.write(conn.request(flood_sid))
        await t.wait_for(lambda e: isinstance(e, AudioStreamRequested) and e.stream_id == flood_sid)
        await t.h.accept_audio_stream(flood_sid)
        with trio.fail_after(10):
            while conn.state is not ap.StreamState.OPEN:
                conn.receive_data(await compat.read_some(stream, 4096))

        flood_took = 0.0

        async def flood() -> None:
            nonlocal flood_took
            t0 = trio.current_time()
            batch = 10
            for i in range(0, FLOOD_FRAMES, batch):
                await stream.write(b"".join(conn.data(bytes(PCM), timestamp_us=now_us())
                                            for _ in range(batch)))
            flood_took = trio.current_time() - t0

        loud = 150  # 3 s of paced audio while the flood runs
        async with trio.open_nursery() as nursery:
            nursery.start_soon(flood)
            await trio.sleep(0.05)
            await send_paced(paced, sid, quiet, loud, stamps)
        total = quiet + loud
        got = await t.wait_for(lambda e: isinstance(e, AudioData) and e.stream_id == sid, count=total,
                               timeout=15)

        # Every flood frame the node read is delivered or counted as dropped. (A hang guard: the
        # node has read them all within ~1 s idle; 60 s leaves room for a machine far busier.)
        with trio.fail_after(60):
            while True:
                flood_stats = next(s for s in t.node.stats().streams if s.stream_id == flood_sid)
                if flood_stats.frames_received == FLOOD_FRAMES:
                    break
                await trio.sleep(0.1)
        await trio.sleep(0.5)  # let the application drain the event queue
        flood_stats = next(s for s in t.node.stats().streams if s.stream_id == flood_sid)
        paced_stats = next(s for s in t.node.stats().streams if s.stream_id == sid)
        delivered = len([e for e in t.of(AudioData) if e.stream_id == flood_sid])
        before = latencies_ms(t, sid, stamps, range(10, quiet))  # skip the first frames (warm-up)
        during = latencies_ms(t, sid, stamps, range(quiet, total))
        print(f"\n[audio flood] {FLOOD_FRAMES} frames in {flood_took:.2f} s "
              f"({FLOOD_FRAMES / flood_took:.0f} frames/s = {FLOOD_FRAMES * PACE / flood_took:.0f}x real "
              f"time); node read {flood_stats.frames_received}, delivered {delivered}, dropped "
              f"{flood_stats.frames_dropped} (node audio_frames_dropped "
              f"{t.node.stats().audio_frames_dropped}); paced stream: {len(got)}/{total} frames, "
              f"dropped {paced_stats.frames_dropped}, lost {paced_stats.frames_lost}")
        print(f"[audio flood] paced latency without flood p50 {statistics.median(before):.2f} ms "
              f"p99 {percentile(before, 99):.2f} ms; during flood p50 {statistics.median(during):.2f} ms "
              f"p99 {percentile(during, 99):.2f} ms (max {max(during):.1f} ms)")
        # Measured ~330-390x real time (5,000 frames written in ~0.3 s, the writes are buffered):
        # the bound is ~70x below that.
        assert FLOOD_FRAMES * PACE / flood_took > 5, "not faster than real time"
        # Flood frames: nothing vanishes silently.
        assert delivered + flood_stats.frames_dropped == FLOOD_FRAMES
        assert t.node.stats().audio_frames_dropped >= flood_stats.frames_dropped
        # The paced stream: complete, in order, nothing dropped, still open.
        assert [e.sequence for e in got] == list(range(total))
        assert [int.from_bytes(e.data[:4], "big") for e in got] == list(range(total))
        assert paced_stats.frames_dropped == 0 and paced_stats.frames_lost == 0
        assert not [e for e in t.of(AudioStreamClosed) if e.stream_id == sid]
        # Generous: a 2-core shared machine, with flooder, target and sender in one process.
        # Measured p50 ~0.7 ms during the flood (p99 15-30 ms); a paced frame queued behind the
        # flood would wait for seconds. 250 ms is ~350x the measured median.
        assert percentile(during, 50) < 250


# --- 3. bad signatures ----------------------------------------------------------------------


class ForgingPubsub(Pubsub):
    """A raw pub/sub that can publish messages it spoils after signing (or never signs)."""

    async def publish_spoiled(self, topic: str, data: bytes, how: str, other_key=None) -> None:  # type: ignore[no-untyped-def]
        msg = rpc_pb2.Message(data=data, topicIDs=[topic], from_id=self.my_id.to_bytes(),
                              seqno=self._next_seqno())
        if how == "other-origin":  # claims another peer's id, signed with our key
            msg.from_id = other_key
        if how != "unsigned":
            msg.signature = self.sign_key.sign(PUBSUB_SIGNING_PREFIX.encode() + msg.SerializeToString())
            msg.key = self.host.get_public_key().serialize()
        if how == "tampered-data":
            msg.data = data + b"!"
        elif how == "tampered-signature":
            sig = bytearray(msg.signature)
            sig[0] ^= 0x01
            msg.signature = bytes(sig)
        elif how == "foreign-signature":  # signed (and keyed) by someone else entirely
            stranger = create_new_key_pair()
            msg.ClearField("signature")
            msg.ClearField("key")
            msg.signature = stranger.private_key.sign(PUBSUB_SIGNING_PREFIX.encode() + msg.SerializeToString())
            msg.key = stranger.public_key.serialize()
        # Straight to the router: our own `push_msg` would refuse to send these.
        await self.router.publish(self.my_id, msg)


SPOILED = ["unsigned", "tampered-data", "tampered-signature", "foreign-signature", "other-origin"]


async def test_messages_with_bad_or_missing_signature_are_dropped():
    async with started({}, {}) as (t, other), raw_host() as raw:
        await t.h.subscribe(TOPIC)
        async with raw_pubsub(t, ForgingPubsub(raw, raw_router(), strict_signing=True)) as pubsub:
            raw_id = raw.get_id().to_base58()
            await probe_until_heard(t, pubsub.publish, raw_id)  # well-signed messages get through
            dropped_before = t.node.stats().messages_dropped
            for how in SPOILED:
                await pubsub.publish_spoiled(TOPIC, how.encode(), how,
                                             other_key=ID.from_base58(other.peer_id).to_bytes())
            await pubsub.publish(TOPIC, b"control")  # same connection, sent after the bad ones
            await t.wait_for(lambda e: isinstance(e, Message) and e.data == b"control")
            await trio.sleep(0.5)
            got = [(e.peer_id, e.data) for e in t.of(Message)]
            print(f"\n[signatures] sent {len(SPOILED)} spoiled ({', '.join(SPOILED)}) + control; "
                  f"target delivered {[d for _, d in got if d != b'probe']}, messages_dropped "
                  f"{dropped_before} -> {t.node.stats().messages_dropped}")
            assert (raw_id, b"control") in got
            for how in SPOILED:
                assert not [d for _, d in got if d.startswith(how.encode())], f"{how} was delivered"
            assert not [p for p, _ in got if p == other.peer_id], "a forged origin was delivered"
            await until_connected(t, raw_id)


# --- 4. half-open connections ---------------------------------------------------------------

HALF_OPEN = 20
REAP_BOUND = 20.0  # py-libp2p's inbound upgrade timeout is 10 s


async def test_half_open_connections_are_reaped_while_a_peer_is_served():
    async with started({}, {}) as (t, legit):
        await legit.h.dial(t.addr)
        for n in (t, legit):
            await n.h.subscribe(TOPIC)
        port = int(t.addr.split("/tcp/")[1].split("/")[0])
        closed_after: list[float] = []
        still_open = 0
        fds_before = len(os.listdir("/proc/self/fd"))
        t0 = trio.current_time()

        async def idle_client(header: bool) -> None:
            nonlocal still_open
            s = await trio.open_tcp_stream("127.0.0.1", port)
            try:
                if header:
                    await s.send_all(b"\x13/multistream/1.0.0\n")
                with trio.move_on_after(REAP_BOUND + 5):
                    for _ in range(100):  # bounded: whatever the node answers, then its close
                        try:
                            if not await s.receive_some(4096):
                                break
                        except (trio.BrokenResourceError, trio.ClosedResourceError):
                            break
                    closed_after.append(trio.current_time() - t0)
                    return
                still_open += 1
            finally:
                await s.aclose()

        async def ping() -> int:
            """The legit peer publishes every 0.5 s meanwhile; returns how many arrived."""
            sent = 0
            while len(closed_after) + still_open < HALF_OPEN and sent < 100:
                await legit.h.publish(TOPIC, b"ping%d" % sent)
                sent += 1
                await trio.sleep(0.5)
            return sent

        sent = 0

        async def run_ping() -> None:
            nonlocal sent
            sent = await ping()

        async with trio.open_nursery() as nursery:
            for i in range(HALF_OPEN):
                nursery.start_soon(idle_client, i % 2 == 1)
            nursery.start_soon(run_ping)
            await trio.sleep(1.0)
            # Meanwhile a newcomer connects and is served.
            async with started({}) as (newcomer,):
                with trio.fail_after(10):
                    await newcomer.h.dial(t.addr)
                await until_connected(t, newcomer.peer_id)
        await trio.sleep(1.0)
        pings = [d for d in messages(t, legit.peer_id) if d.startswith(b"ping")]
        fds_after = len(os.listdir("/proc/self/fd"))
        print(f"\n[half-open] {HALF_OPEN} idle TCP connections (half of them sent the multistream "
              f"header): {len(closed_after)} closed by the node, after "
              f"{min(closed_after, default=0):.1f}-{max(closed_after, default=0):.1f} s; {still_open} "
              f"still open after {REAP_BOUND + 5:.0f} s; legit peer's pings {len(pings)}/{sent}; "
              f"process fds {fds_before} before, {fds_after} after")
        assert still_open == 0, f"{still_open} half-open connections were never closed"
        assert max(closed_after) < REAP_BOUND
        assert sent >= 3 and len(pings) >= sent - 1  # the last may still be in flight
        assert legit.peer_id in t.h.connected_peers()
        assert fds_after <= fds_before + 2, "the node kept sockets of reaped connections"


async def test_event_queue_drops_from_the_flooding_stream_not_the_paced_one():
    """When the application falls behind, the frames dropped are the flooding stream's, even
    when a paced stream's frame is the oldest in the queue."""
    from agent.mesh._eventqueue import EventQueue

    dropped: list[AudioData] = []
    q = EventQueue(8, dropped.append)
    q.put_audio(AudioData("p", 1, b"paced", 0))
    for i in range(20):
        q.put_audio(AudioData("f", 2, b"flood", i))
    q.put_audio(AudioData("p", 1, b"paced", 1))
    kept = [await q.get() for _ in range(len(q))]
    print(f"\n[event queue] dropped {len(dropped)} (streams {sorted({d.stream_id for d in dropped})}); "
          f"kept {[(e.stream_id, e.sequence) for e in kept]}")
    assert {d.stream_id for d in dropped} == {2} and len(dropped) == 22 - 8
    assert [e.sequence for e in kept if e.stream_id == 1] == [0, 1]
