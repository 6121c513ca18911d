"""Every workaround for py-libp2p 0.8 lives here, each named after the defect it covers.

`tests/mesh/test_compat.py` shows each defect against the unpatched library, so a py-libp2p upgrade
that fixes one makes its test fail, and the workaround can then be deleted.

1. Insecure default security (`secure_host`): `new_host()` also offers SECIO and
   `/plaintext/2.0.0`; a plaintext dialer gets a cleartext connection. We offer Noise only.
2. Subscription queue of 32 that drops silently (`DeliveringPubsub`): `Pubsub.notify_subscriptions`
   does `send_nowait` on a 32-slot channel and logs a warning when full. We hand each message to
   the node's own bounded inbox instead, where overflow is counted.
3. GossipSub defaults (`gossip_router`): a 120 s heartbeat and spam protection at 10 msgs/s per
   peer and topic, which loses bursts. We set both from the node's config.
4. Listener left open after `host.run()` exits (`close_host`): the swarm closes it inside a
   cancelled scope; `host.close()` as the last step inside the run block releases it. Also a
   socket left open when a connection's close was cut short by a cancellation (two connected
   nodes stopping one after the other): the SwarmConn is marked closed, so `host.close()` skips
   it, and its socket waits for the garbage collector. We close those sockets ourselves.
5. Per-peer outbound queue of 32 RPCs that drops the rest (`_RoomyQueues`): a burst of 100
   published at once loses two thirds before it leaves. We give each peer's queue
   `OUTBOUND_QUEUE` slots (still bounded). What a full queue still refuses py-libp2p drops
   with a debug log only; we count the messages in it (`DeliveringPubsub.unsent`).
6. The swarm's auto-connector cannot be turned off (`_disable_auto_connector`): it dials peers
   from the peerstore towards the midpoint of its watermarks, including peers we refused
   (allow list, max_peers), and a zero high watermark would instead prune every connection.
   The node keeps its own peers connected, so the auto-connector's `maybe_connect` is a no-op.
7. A thread leaked per node (`DeliveringPubsub.release`): `Pubsub.seen_messages` starts a
   sweeper thread that nothing stops; a process that starts and stops nodes gains one
   thread each time. We stop it when the node stops.
8. A task kept per inbound connection for the swarm's lifetime (`_reap_inbound_handlers`):
   after upgrading an inbound connection the swarm's handler awaits `wait_finished()` of the
   whole swarm, so every connection ever accepted leaves a task behind (a peer reconnecting,
   or anyone opening connections in a loop, grows the node without bound). We end the
   handler once its socket is closed.
9. No liveness on idle connections (`enable_tcp_liveness`): a peer that is cut off stays
   "connected" until TCP gives up by itself (minutes when idle). We turn on TCP keepalive
   and TCP_USER_TIMEOUT on each connection's socket, so the kernel notices within seconds.
   Same place: a 20 ms minimum retransmission timeout (TCP_RTO_MIN_US, Linux >= 6.15), because
   audio streams are thin (one small segment per packet, rarely 3 in flight for fast
   retransmit): a lost segment waits for the RTO, 200 ms minimum by default, and with it every
   later frame. Measured (bench/tcp_thin.py, 10 % loss both ways): one-way delay p99 479 ms by
   default, 36 ms with a 20 ms minimum. Older kernels refuse the option (a per-route
   ``rto_min`` does the same, see the README).
10. A failed dial blocks the peer for 60 s (`forget_failed_dials`): the swarm's negative
    peer cache refuses every dial to a peer whose last dial failed, so a node that comes back
    after a restart cannot be reached for a minute. Our dials are already paced by the node's
    own redial loop, so the cache is cleared before each one.
11. `stream.read()` raises `StreamEOF` (not `b""`) when the other side closes (`read_some`).
12. A WARNING per published message for every connected peer not subscribed to its topic
    (`_QuietGossipSub`): GossipSub queues each message for every connected pub/sub peer that
    is not (yet) in the topic, "until it subscribes", up to 100 per peer for 30 s, and logs
    "pending message queue ... exceeded limit (101 > 100)" each time it trims. A peer that
    never subscribes to that topic (a monitor listens to status only) makes every node log a
    line per message, forever. The queue covers the subscription race of a new connection,
    which lasts about a second: we keep it, shorter (`PENDING_TTL_S`, `PENDING_MAX`), trimmed
    silently.
13. Kademlia dials every peer it queries (`DhtHost`): a lookup opens a connection to each
    peer it asks (py-libp2p has no connection-manager hook), and its refresh at start asks up
    to 20; with mDNS filling the peerstore, every node ended up connected to every other,
    whatever the node's own policy (bounded degree). The DHT gets a view of the host whose
    `new_stream` only uses existing connections: lookups go through the peers we are
    connected to, and what they return is dialled (or not) by the node's policy.
14. A WINDOW_UPDATE frame after every read (`quiet_yamux_window_updates`): py-libp2p's Yamux
    releases receive window on (nearly) every read, so every
    small message received (a gossip RPC, a 20 ms audio frame) costs one more frame sent back:
    twice the packets and a write per read. go-yamux sends one when half the window is used;
    so do we (`half_window_update` replaces the per-read auto-tuning).
15. The signed peer record (213 bytes) on every pub/sub RPC (`DeliveringPubsub.write_msg`):
    py-libp2p attaches the sender's record to each RPC, and each receiver verifies it again.
    A peer gets it in our first RPC (the subscriptions "hello") and whenever subscriptions
    change; RPCs carrying messages or gossip control go without it. GossipSub also builds that
    record for every message it sends or forwards and every control RPC (`env_to_send_in_RPC`:
    the host's addresses parsed again, the cached envelope compared and marshalled), ~1 % of a
    core per node while a 50-node fleet starts, for a field we then drop: for a node's own
    pub/sub (`_lean_record_hosts`) GossipSub's copy of that function returns nothing.
16. A node's own messages go to its topic mesh only (`_QuietGossipSub._get_peers_to_send`):
    a node that just connected has an empty mesh until the next heartbeat grafts, so what it
    publishes meanwhile (its first status, its talk groups) reaches nobody. go-libp2p floods
    a node's own messages to every peer in the topic ("flood publish"); so do we, for our own
    messages only (forwarded ones still go to the mesh), while the topic's mesh is thinner
    than `degree_low` (once grafted, a flood cost a copy per topic peer: at N = 10 a third of a
    node's idle status traffic).
17. The public key on every message a node publishes (`DeliveringPubsub.push_msg`): py-libp2p
    sets `Message.key` (36 bytes for Ed25519) although an Ed25519 peer id holds the key itself;
    receivers (py-libp2p's included) take it from the `from` peer id when `key` is absent, and
    go-libp2p leaves it out for such keys. Every node receives every status message about D
    times: we leave it out of our own messages when the peer id inlines the key.
18. A malformed pub/sub RPC from a peer stops the node (`DeliveringPubsub.stream_handler`):
    `Pubsub.continuously_read_stream` parses each RPC with protobuf, whose `DecodeError` is not
    among the errors `stream_handler` handles (framing, stream errors), so it leaves the
    swarm's stream task and takes the whole host down (seen at N = 50: "fault: mesh:
    DecodeError", the node restarted its mesh). A peer that sends garbage (a bug, a write cut
    off half-way, malice) must cost only its own pub/sub stream: we reset that stream and drop
    the peer from pub/sub, as py-libp2p does for a bad length prefix.
19. IHAVE gossip to at least 6 peers every heartbeat, whatever the settings
    (`_QuietGossipSub._get_adaptive_gossip_peers_count`): py-libp2p has no D_lazy parameter
    (it returns max(6 or 8, a share of the topic's peers)). Each heartbeat a node sent the ids of
    the last 3 heartbeats' messages to 6 non-mesh peers: at N = 50, 19 ids/s (0.95 kB/s, plus a
    packet and an ACK per RPC) of a node's 2.7 kB/s idle upload, for messages the mesh had
    already delivered (IWANT 0.1/s). We gossip to `GOSSIP_PEERS` peers: gossip only repairs what
    the mesh lost, and each id is still offered in 3 heartbeats by every node that has it.
"""

from __future__ import annotations

import logging
import socket
import weakref
from collections.abc import Callable, Sequence

import multiaddr
import trio
from libp2p import new_host
from libp2p.abc import IHost, INetStream
from libp2p.crypto import x25519
from libp2p.crypto.keys import KeyPair
from libp2p.network.config import ConnectionConfig
from libp2p.network.stream.exceptions import StreamClosed, StreamEOF, StreamError, StreamReset
from libp2p.pubsub.gossipsub import PROTOCOL_ID as GOSSIPSUB_PROTOCOL_ID
from libp2p.pubsub.gossipsub import GossipSub
from libp2p.pubsub.pb import rpc_pb2
from libp2p.peer.id import ID
from google.protobuf.message import DecodeError
from libp2p.pubsub.pubsub import Pubsub
from libp2p.security.noise.transport import PROTOCOL_ID as NOISE_PROTOCOL_ID
from libp2p.security.noise.transport import Transport as NoiseTransport
from libp2p.stream_muxer.yamux.yamux import PROTOCOL_ID as YAMUX_PROTOCOL_ID
from libp2p.stream_muxer.yamux.yamux import Yamux

log = logging.getLogger("agent.mesh.compat")  # the name logs had before the module went private

# What a stream's read or write raises when the stream or its connection goes away: EOF, reset,
# closed, and the plain StreamError that NetStream raises for a broken connection ("Write
# operation failed: ... Broken pipe"; without it a peer's TCP reset mid-talk escaped an audio
# session and restarted the whole mesh, seen at N = 50).
STREAM_ERRORS = (StreamEOF, StreamReset, StreamClosed, StreamError)


def secure_host(key_pair: KeyPair, *, enable_mdns: bool, max_connections: int) -> IHost:
    """A host that offers and accepts Noise only, with Yamux as the only muxer."""
    noise = NoiseTransport(key_pair, noise_privkey=x25519.create_new_key_pair().private_key)
    host = new_host(
        key_pair=key_pair,
        sec_opt={NOISE_PROTOCOL_ID: noise},
        muxer_opt={YAMUX_PROTOCOL_ID: Yamux},
        enable_mDNS=enable_mdns,
        # The node keeps its own peers connected (bootstrap, discovery, allow list, max_peers);
        # py-libp2p's auto-connector would redial refused peers, so its watermarks are zero.
        connection_config=ConnectionConfig(max_connections=max_connections, min_connections=0,
                                           low_watermark=0, high_watermark=max_connections),
    )
    _disable_auto_connector(host)
    _reap_inbound_handlers(host)
    quiet_yamux_window_updates()
    return host


from libp2p.stream_muxer.yamux import yamux as _yamux_module  # noqa: E402
from libp2p.pubsub import gossipsub as _gossipsub_module  # noqa: E402

ORIGINAL_ENV_TO_SEND_IN_RPC = _gossipsub_module.env_to_send_in_RPC
_lean_record_hosts: "weakref.WeakSet[IHost]" = weakref.WeakSet()


def _env_for_gossip_rpcs(host: IHost) -> tuple[bytes, bool]:
    """GossipSub's `env_to_send_in_RPC`: every RPC it builds carries messages or control, which
    `DeliveringPubsub.write_msg` sends without the record (defect 15), so for those hosts there
    is nothing to build."""
    if host in _lean_record_hosts:
        return b"", False
    return ORIGINAL_ENV_TO_SEND_IN_RPC(host)


_gossipsub_module.env_to_send_in_RPC = _env_for_gossip_rpcs

ORIGINAL_WINDOW_UPDATE = _yamux_module.YamuxStream._auto_tune_and_send_window_update


async def half_window_update(self, *, bytes_read: int = 0) -> None:  # type: ignore[no-untyped-def]
    """go-yamux's rule: give the window back once half of it is used, not after every read."""
    total = 0
    async with self.window_lock:
        buffered = len(self.conn.stream_buffers.get(self.stream_id, b""))
        delta = self.target_recv_window - (self.recv_window + buffered)
        if delta > 0 and delta >= self._grow_threshold():
            total = self._grow_to_delta(buffered)
            self._pending_recv_release = 0
    if total > 0:
        await self.send_window_update(total, skip_lock=True)


def quiet_yamux_window_updates() -> None:
    """Yamux window updates when half the window is used, not after every read (defect 14)."""
    _yamux_module.YamuxStream._auto_tune_and_send_window_update = half_window_update


NOT_CONNECTED = "(the node decides whom to dial)"


class _NotConnectedFilter(logging.Filter):
    """Kademlia logs a WARNING per peer it could not ask; for peers we are not connected to
    (by design, see DhtHost) that is no news."""

    def filter(self, record: logging.LogRecord) -> bool:
        return NOT_CONNECTED not in record.getMessage()


_NOT_CONNECTED_FILTER = _NotConnectedFilter()


class DhtHost:
    """The host as the Kademlia DHT sees it: streams only over existing connections (defect 13)."""

    def __init__(self, host: IHost) -> None:
        self._host = host
        routing_log = logging.getLogger("libp2p.kad_dht.peer_routing")
        if _NOT_CONNECTED_FILTER not in routing_log.filters:
            routing_log.addFilter(_NOT_CONNECTED_FILTER)

    def __getattr__(self, name: str):  # type: ignore[no-untyped-def]
        return getattr(self._host, name)

    async def new_stream(self, peer_id, protocol_ids):  # type: ignore[no-untyped-def]
        conns = self._host.get_network().get_connections(peer_id)
        if not any(not getattr(c, "is_closed", False) for c in conns):
            raise ConnectionError(f"not connected to {peer_id} {NOT_CONNECTED}")
        return await self._host.new_stream(peer_id, protocol_ids)


REAP_INTERVAL = 1.0


def _socket_closed(read_write_closer: object) -> bool:
    stream = getattr(read_write_closer, "stream", read_write_closer)
    sock = getattr(stream, "socket", None)
    return sock is not None and sock.fileno() == -1


def _reap_inbound_handlers(host: IHost) -> None:
    swarm = host.get_network()
    original = getattr(swarm, "_handle_inbound_connection", None)
    if original is None:
        return

    async def handle(read_write_closer, maddr):  # type: ignore[no-untyped-def]
        async with trio.open_nursery() as nursery:
            async def reap_when_closed() -> None:
                while not _socket_closed(read_write_closer):
                    await trio.sleep(REAP_INTERVAL)
                nursery.cancel_scope.cancel()

            nursery.start_soon(reap_when_closed)
            await original(read_write_closer, maddr)
            nursery.cancel_scope.cancel()

    swarm._handle_inbound_connection = handle


def _disable_auto_connector(host: IHost) -> None:
    connector = getattr(host.get_network(), "auto_connector", None)
    if connector is not None:
        async def maybe_connect() -> None:
            return None

        connector.maybe_connect = maybe_connect


PENDING_TTL_S = 5.0
PENDING_MAX = 32
# Non-mesh peers each heartbeat's IHAVE goes to (GossipSub's D_lazy; go-libp2p's default is 6).
GOSSIP_PEERS = 2


class _QuietGossipSub(GossipSub):
    """GossipSub whose per-peer "until it subscribes" queue is trimmed without a warning."""

    pending_trimmed = 0

    def _prune_pending_messages(self, peer_id) -> None:  # type: ignore[no-untyped-def]
        queue = self._pending_messages.get(peer_id)
        if queue is not None and len(queue) > self._max_pending_messages_per_peer:
            self.pending_trimmed += len(queue) - self._max_pending_messages_per_peer
            del queue[: len(queue) - self._max_pending_messages_per_peer]
        super()._prune_pending_messages(peer_id)

    def _get_adaptive_gossip_peers_count(self, topic: str, total_peers: int) -> int:
        return min(GOSSIP_PEERS, max(0, total_peers))  # D_lazy (defect 19)

    def _get_peers_to_send(self, topic_ids, msg_forwarder, origin, msg_id=None):  # type: ignore[no-untyped-def]
        topic_ids = list(topic_ids)
        peers = set(super()._get_peers_to_send(topic_ids, msg_forwarder, origin, msg_id))
        pubsub = self.pubsub
        if pubsub is not None and origin == pubsub.my_id:  # flood publish our own (defect 16)
            for topic in topic_ids:
                if len(self.mesh.get(topic, ())) >= self.degree_low:
                    continue  # grafted: the mesh carries it (a flood costs every topic peer a copy)
                peers.update(p for p in pubsub.peer_topics.get(topic, ()) if p in pubsub.peers)
            peers.discard(origin)
        return peers


def gossip_router(*, heartbeat: float, rate_limit: int, all_on_loopback: bool) -> GossipSub:
    """GossipSub with a usable heartbeat and a spam limit that admits the node's promised rate."""
    return _QuietGossipSub(
        max_pending_messages_per_peer=PENDING_MAX,
        pending_messages_ttl=PENDING_TTL_S,
        protocols=[GOSSIPSUB_PROTOCOL_ID],
        # Each node forwards a message to its mesh peers, so a node receives each message
        # about `degree` times: 3 (not 6) keeps idle traffic down; 2..4 keeps the mesh connected.
        degree=3,
        degree_low=2,
        degree_high=4,
        heartbeat_initial_delay=0.1,
        heartbeat_interval=heartbeat,  # typed int upstream, used as a float by trio.sleep
        max_messages_per_topic_per_second=float(rate_limit),
        # The distinct-IP rule would keep every peer on one address (a test, one LAN host
        # behind NAT) out of the mesh.
        eclipse_protection_enabled=not all_on_loopback,
    )


OUTBOUND_QUEUE = 1024


class _RoomyQueues(dict):  # type: ignore[type-arg]
    """`Pubsub.peer_queues`, enlarging each per-peer RpcQueue as py-libp2p inserts it, and
    reporting the pub/sub messages in each RPC a full queue refuses to `on_refused` (py-libp2p
    drops them with a debug log only). A closed queue (the peer left) is not counted."""

    def __init__(self, on_refused: Callable[[int], None] | None = None) -> None:
        super().__init__()
        self._on_refused = on_refused

    def __setitem__(self, peer, queue) -> None:  # type: ignore[no-untyped-def]
        inner = getattr(queue, "_queue", None)
        if inner is not None and getattr(inner, "max_size", OUTBOUND_QUEUE) < OUTBOUND_QUEUE:
            inner.max_size = OUTBOUND_QUEUE
        push = getattr(queue, "push", None)
        on_refused = self._on_refused
        if push is not None and on_refused is not None:
            def counting_push(rpc: rpc_pb2.RPC, priority: bool = False) -> bool:
                ok = push(rpc, priority)
                if not ok and len(rpc.publish) and not getattr(queue, "closed", False):
                    on_refused(len(rpc.publish))
                return ok

            queue.push = counting_push
        super().__setitem__(peer, queue)


def _inlines_key(peer_id: bytes) -> bool:
    """True when the peer id is an identity multihash of its public key (Ed25519 keys are)."""
    try:
        return ID(peer_id).extract_public_key() is not None
    except Exception:  # not a peer id py-libp2p can read: keep the key
        return False


class DeliveringPubsub(Pubsub):
    """Pubsub that hands each message for a subscribed topic to `deliver` instead of a
    32-slot channel that drops silently. `deliver` must not block (it runs inside
    GossipSub's receive path); the node's inbox behind it is bounded and counts overflow."""

    def __init__(self, host: IHost, router: GossipSub, deliver: Callable[[rpc_pb2.Message], None],
                 max_message_size: int) -> None:
        super().__init__(host, router, strict_signing=True, max_inbound_rpc_size=max_message_size + 4096)
        _lean_record_hosts.add(host)  # GossipSub's RPCs go without the record (defect 15)
        self._deliver = deliver
        self.unsent = 0  # messages an outbound queue refused (see _RoomyQueues)
        self.peer_queues = _RoomyQueues(self._count_unsent)

    def _count_unsent(self, messages: int) -> None:
        self.unsent += messages
        if self.unsent == messages or self.unsent // 1000 != (self.unsent - messages) // 1000:
            log.warning("pub/sub: %d messages not sent so far: a peer's outbound queue (%d RPCs) "
                        "was full", self.unsent, OUTBOUND_QUEUE)

    def release(self) -> None:
        """Stop the seen-messages sweeper thread (py-libp2p never does)."""
        stop = getattr(self.seen_messages, "stop", None)
        if stop is not None:
            stop()

    async def push_msg(self, msg_forwarder: ID, msg: rpc_pb2.Message) -> None:
        # Our own messages go without the public key our peer id already holds (defect 17).
        if msg_forwarder == self.my_id and msg.HasField("key") and _inlines_key(msg.from_id):
            msg.ClearField("key")
        await super().push_msg(msg_forwarder, msg)

    async def write_msg(self, stream: INetStream, rpc_msg: rpc_pb2.RPC) -> bool:
        # Our signed record goes with subscription RPCs only (defect 15). The RPC object may
        # be shared by several peers' queues: they all had our hello already.
        if (len(rpc_msg.publish) or rpc_msg.HasField("control")) and rpc_msg.HasField("senderRecord"):
            rpc_msg.ClearField("senderRecord")
        return await super().write_msg(stream, rpc_msg)

    def notify_subscriptions(self, publish_message: rpc_pb2.Message) -> None:
        if any(topic in self.topic_ids for topic in publish_message.topicIDs):
            self._deliver(publish_message)

    malformed = 0  # pub/sub streams reset because a peer sent an RPC that does not parse

    async def stream_handler(self, stream: INetStream) -> None:
        # A malformed RPC costs the sender its stream, not us the node (defect 18).
        try:
            await super().stream_handler(stream)
        except DecodeError as exc:
            peer_id = stream.muxed_conn.peer_id
            self.malformed += 1
            level = logging.WARNING if self.malformed in (1, 10, 100) or self.malformed % 1000 == 0 \
                else logging.DEBUG
            log.log(level, "pub/sub: malformed RPC from %s (%s): its stream is reset (%d so far)",
                    peer_id, exc, self.malformed)
            try:
                await stream.reset()
            except Exception as reset_exc:  # already gone
                log.debug("reset after a malformed RPC: %s", reset_exc)
            self._handle_dead_peer(peer_id)


async def read_some(stream: INetStream, max_bytes: int) -> bytes:
    """Read up to `max_bytes`; b"" at end of stream, as a reader would expect."""
    try:
        return await stream.read(max_bytes)
    except StreamEOF:
        return b""


async def close_host(host: IHost) -> None:
    """Release listeners, system tasks and sockets; call as the last statement inside `host.run()`."""
    conns = [c for cs in list(getattr(host.get_network(), "connections", {}).values()) for c in cs]
    await host.close()
    for conn in conns:
        muxed = getattr(conn, "muxed_conn", None)
        if muxed is not None and not muxed.is_closed:
            try:
                await muxed.secured_conn.close()
            except Exception as exc:  # already broken: nothing more to release
                log.debug("closing a half-closed connection: %s", exc)


# A dead peer is noticed after IDLE + INTERVAL * COUNT seconds with no traffic, or USER_TIMEOUT
# after data stops being acknowledged.
TCP_KEEPIDLE_S = 5
TCP_KEEPINTVL_S = 1
TCP_KEEPCNT = 3
TCP_USER_TIMEOUT_MS = 5000
# Minimum retransmission timeout for our connections (the kernel's default is 200 ms). The RTO
# is still srtt + 4 x rttvar when that is larger, so a slow link is not flooded with retries.
TCP_RTO_MIN_US_OPT = getattr(socket, "TCP_RTO_MIN_US", 45)  # linux/tcp.h, Linux >= 6.15
TCP_RTO_MIN_US = 20_000


def _find_socket(conn: object) -> socket.socket | None:
    """The TCP socket under a swarm connection (SwarmConn -> Yamux -> Noise -> raw -> trio)."""
    obj: object | None = conn
    for attr in ("muxed_conn", "secured_conn", "conn", "conn", "stream", "stream"):
        obj = getattr(obj, attr, None)
        if obj is None:
            return None
        if isinstance(obj, trio.SocketStream):
            return obj.socket  # type: ignore[return-value]
    return None


def enable_tcp_liveness(conn: object) -> bool:
    """Set keepalive and user-timeout options (and the thin-stream minimum RTO, where the kernel
    has it) on a connection's socket; False if not TCP."""
    sock = _find_socket(conn)
    if sock is None or sock.fileno() == -1:
        return False
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, TCP_KEEPIDLE_S)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, TCP_KEEPINTVL_S)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT, TCP_KEEPCNT)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT, TCP_USER_TIMEOUT_MS)
    except OSError as exc:
        log.debug("cannot set TCP liveness options: %s", exc)
        return False
    try:
        sock.setsockopt(socket.IPPROTO_TCP, TCP_RTO_MIN_US_OPT, TCP_RTO_MIN_US)
    except OSError as exc:  # kernel older than 6.15: the route's rto_min (or 200 ms) applies
        log.debug("cannot set TCP_RTO_MIN_US: %s", exc)
    return True


def forget_failed_dials(host: IHost, peer_id: object) -> None:
    unblock = getattr(host.get_network(), "unblock_peer", None)
    if unblock is not None:
        unblock(peer_id)


def check_port_free(host: str, port: int) -> None:
    """Raise OSError if another process holds host:port. py-libp2p listens with SO_REUSEPORT
    (for hole punching), so a second node on the same port would silently share it and take
    half of the first one's connections; a plain bind finds the holder."""
    if port == 0:
        return
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        # SO_REUSEADDR: connections of a previous run in TIME_WAIT do not count, a listener does.
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        probe.bind((host, port))


def listen_multiaddr(host: str, port: int) -> multiaddr.Multiaddr:
    proto = "ip6" if ":" in host else "ip4"
    return multiaddr.Multiaddr(f"/{proto}/{host}/tcp/{port}")


def all_loopback(addrs: Sequence[str]) -> bool:
    return all(a.startswith("127.") or a == "::1" for a in addrs)
