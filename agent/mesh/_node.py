"""`AviP2p`: the mesh node. Owns the libp2p host, pub/sub, discovery and audio sessions.

Everything runs in one trio nursery that `AviP2p.start()` opens; leaving the block (or
`node.shutdown()`) closes every stream and connection and leaves no task or socket behind.
"""

from __future__ import annotations

import logging
import random
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, TypeVar

import multiaddr
import trio
from libp2p.abc import IHost, INetConn, INetStream, INetwork, INotifee
from libp2p.crypto.keys import KeyPair
from libp2p.discovery.events.peerDiscovery import peerDiscovery
from libp2p.kad_dht.kad_dht import DHTMode, KadDHT
from libp2p.peer.id import ID
from libp2p.peer.peerinfo import PeerInfo, info_from_p2p_addr
from libp2p.pubsub.pb import rpc_pb2
from libp2p.tools.anyio_service import background_trio_service

from . import _audio_protocol as ap
from ._audio_session import AudioSession, Direction, StreamStats
from ._compat import (STREAM_ERRORS, DeliveringPubsub, DhtHost, all_loopback, check_port_free, close_host,
                     enable_tcp_liveness, forget_failed_dials, gossip_router, listen_multiaddr,
                     read_some, secure_host)
from ._config import AviP2pConfig
from ._errors import (AviP2pError, DialError, LimitError, NotAllowedError, NotRunningError,
                     ProtocolError, PubSubError, TimeoutError, UnknownPeerError, UnknownStreamError)
from ._eventqueue import EventQueue
from ._events import (AudioData, AudioStreamClosed, AudioStreamRequested, Event, Message,
                     PeerConnected, PeerDisconnected, PeerDiscovered, PeerId, Started, StreamId)
from ._frames import MAX_CONTEXT, PROTOCOL_ID, PROTOCOL_ID_CONTEXT, StreamParams
from ._handle import AviP2pHandle
from ._identity import load_or_create_identity
from ._peering import FIRST_ROUND_S, MAX_KNOWN_PEERS_FACTOR, PeerManager
from ._redial import RedialPolicy
from ._retained import MAX_RETAINED_SYNC_BYTES, RETAINED_PROTOCOL_ID, RetainedStore

log = logging.getLogger("agent.mesh")
T = TypeVar("T")

# Messages waiting between GossipSub and the event queue. GossipSub hands them over without
# waiting, so this is where a flood beyond the promised rate is cut (and counted).
INBOX_FACTOR = 4
PEERSTORE_CLEANUP_S = 60
# Asked by `dial()` once connected: the answer says whether the peer keeps the connection.
ADMISSION_PROTOCOL_ID = "/avi/admission/1.0.0"
# Each missing peer has its own schedule (agent/mesh/_redial.py): 1 s after it left, then doubling
# gaps up to `redial_max_s`; forgotten after `forget_after_s` of failed dials (bootstrap excepted).
REDIAL_FIRST_S = 1.0
# Shutdown budget (SIGTERM to exit within ~2 s in a busy fleet): telling stream peers why, then
# closing connections. Whatever is not closed by then is closed by the process exit, and the
# peers notice the TCP close at once.
SHUTDOWN_SESSIONS_S = 0.5
SHUTDOWN_HOST_S = 1.0
DIAL_TIMEOUT_S = 5.0


class _ConnectionGone(Exception):
    """Internal: the connection closed while we asked for admission."""


@dataclass(frozen=True, slots=True)
class NodeStats:
    """A snapshot of the node's counters (trio's `statistics()` habit)."""

    peers: int
    connected_peers: tuple[PeerId, ...]
    bytes_in: int
    bytes_out: int
    messages_published: int
    messages_received: int
    messages_dropped: int
    audio_frames_dropped: int
    connections_refused: int
    streams: tuple[StreamStats, ...]
    peers_forgotten: int = 0  # departed peers given up on after `forget_after_s`
    messages_unsent: int = 0  # published or forwarded, but refused by a peer's full outbound queue


class _NetworkEvents(INotifee):
    """Swarm notifications, handed to the node's task without waiting (the swarm must not stall)."""

    def __init__(self, send: trio.MemorySendChannel[tuple[str, INetConn]]) -> None:
        self._send = send

    def _put(self, kind: str, conn: INetConn) -> None:
        try:
            self._send.send_nowait((kind, conn))
        except (trio.WouldBlock, trio.ClosedResourceError, trio.BrokenResourceError):
            log.warning("network event %s dropped: node is not keeping up or is stopping", kind)

    async def opened_stream(self, network: INetwork, stream: INetStream) -> None:
        return None

    async def closed_stream(self, network: INetwork, stream: INetStream) -> None:
        return None

    async def connected(self, network: INetwork, conn: INetConn) -> None:
        self._put("connected", conn)

    async def disconnected(self, network: INetwork, conn: INetConn) -> None:
        self._put("disconnected", conn)

    async def listen(self, network: INetwork, multiaddr: multiaddr.Multiaddr) -> None:
        return None

    async def listen_close(self, network: INetwork, multiaddr: multiaddr.Multiaddr) -> None:
        return None


def _peer(conn: INetConn) -> ID:
    return conn.muxed_conn.peer_id


def _seqno(msg: rpc_pb2.Message) -> int:
    """A pub/sub message's sequence number (8 bytes, big-endian, as GossipSub sends it)."""
    return int.from_bytes(bytes(msg.seqno)[:8], "big") if msg.seqno else 0


def _conn_address(conn: INetConn) -> str:
    try:
        addrs = conn.get_transport_addresses()
        if addrs:
            return str(addrs[0])
    except Exception:  # an address is informative only
        pass
    return ""


class AviP2p:
    """The node. Create it with `AviP2p.start(config)`; talk to it through `node.handle()`."""

    def __init__(self, config: AviP2pConfig, key_pair: KeyPair) -> None:
        self.config = config
        self._key_pair = key_pair
        # zeroconf starts browsing as soon as the host exists and reports each service once:
        # be ready to take its reports before the host is even created.
        self._trio_token: trio.lowlevel.TrioToken | None = trio.lowlevel.current_trio_token()
        self._found_send, self._found_recv = trio.open_memory_channel[PeerInfo](config.max_peers * 4 + 16)
        peerDiscovery.register_peer_discovered_handler(self._on_mdns_peer)
        self._host: IHost = secure_host(key_pair, enable_mdns=config.enable_mdns,
                                        max_connections=config.max_peers * 3 + 8)
        self.local_peer_id = PeerId(self._host.get_id().to_base58())
        router = gossip_router(heartbeat=config.gossip_heartbeat_s, rate_limit=config.pubsub_rate_limit,
                               all_on_loopback=all_loopback([config.listen_host]))
        self._router = router
        self._pubsub = DeliveringPubsub(self._host, router, self._deliver_message, config.max_message_size)
        self._dht = KadDHT(DhtHost(self._host), DHTMode.SERVER) if config.enable_kad else None  # type: ignore[arg-type]
        self._inbox_send, self._inbox_recv = trio.open_memory_channel[rpc_pb2.Message](
            config.event_buffer * INBOX_FACTOR)
        self._net_send, self._net_recv = trio.open_memory_channel[tuple[str, INetConn]](
            config.max_peers * 8 + 64)
        self._events = EventQueue(config.event_buffer, self._count_audio_drop)
        self._events_send, self.events = trio.open_memory_channel[Event](0)
        self._commands = trio.CapacityLimiter(config.command_buffer)
        # Who is connected, admitted, dialled, known, refused: the peer manager decides, the
        # node does the I/O.
        rng = random.Random()
        redial = RedialPolicy(first_s=REDIAL_FIRST_S, max_s=config.redial_max_s,
                              forget_after_s=config.forget_after_s,
                              max_tracked=config.max_peers * MAX_KNOWN_PEERS_FACTOR, rng=rng)
        self._peering: PeerManager[PeerInfo] = PeerManager(
            self.local_peer_id, allowed=config.allowed_peers, max_peers=config.max_peers,
            dial_target=config.dial_target, redial=redial, rng=rng)
        self._sessions: dict[StreamId, AudioSession] = {}
        self._topics: set[str] = set()
        self._nursery: trio.Nursery | None = None
        self._running = False
        self._stop_requested = trio.Event()
        self._stopped = trio.Event()
        self._discover_now = trio.Event()
        self._listen_addrs: tuple[str, ...] = ()
        # counters
        self._bytes_in = 0
        self._bytes_out = 0
        self._published = 0
        self._received = 0
        self._messages_dropped = 0
        self._audio_dropped = 0
        # Per (origin, topic) message counts in the current one-second window (see _over_rate).
        self._rate_window = 0.0
        self._rate_counts: dict[tuple[bytes, str], int] = {}
        self._retained = RetainedStore(config.retained_topics)
        self.retained_received = 0

    # --- lifecycle --------------------------------------------------------------------------
    @classmethod
    @asynccontextmanager
    async def start(cls, config: AviP2pConfig | None = None
                    ) -> AsyncIterator[tuple[AviP2p, trio.MemoryReceiveChannel[Event]]]:
        """Start a node; yields `(node, events)`. Leaving the block shuts the node down."""
        config = config or AviP2pConfig()
        key_pair = load_or_create_identity(config.identity_path)
        try:
            check_port_free(config.listen_host, config.listen_port)
        except OSError as exc:
            raise DialError(f"cannot listen on {config.listen_host}:{config.listen_port}: "
                            f"{exc.strerror or exc}") from None
        node = cls(config, key_pair)
        try:
            async with trio.open_nursery() as nursery:
                try:
                    await nursery.start(node._run)
                finally:
                    if not node._stopped.is_set() and not node._running:
                        peerDiscovery.unregister_peer_discovered_handler(node._on_mdns_peer)
                try:
                    yield node, node.events
                finally:
                    with trio.CancelScope(shield=True):
                        await node.shutdown()
        except BaseExceptionGroup as group:
            # One mesh error (e.g. failing to start) reaches the caller as itself, not in a group.
            if len(group.exceptions) == 1 and isinstance(group.exceptions[0], AviP2pError):
                raise group.exceptions[0] from None
            raise

    def handle(self) -> AviP2pHandle:
        return AviP2pHandle(self)

    async def shutdown(self) -> None:
        """Close every audio stream (telling peers why), stop the host, end the event channel."""
        if self._stopped.is_set():
            await trio.lowlevel.checkpoint()  # already stopped: a checkpoint all the same
            return
        if self._running:
            self._running = False
            with trio.move_on_after(SHUTDOWN_SESSIONS_S):
                async with trio.open_nursery() as n:
                    for session in list(self._sessions.values()):
                        n.start_soon(session.close, "shutdown")
        self._stop_requested.set()
        await self._stopped.wait()

    async def _run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        cfg = self.config
        self._host.get_network().register_notifee(_NetworkEvents(self._net_send))
        self._host.set_stream_handler(PROTOCOL_ID, self._on_incoming_stream)
        self._host.set_stream_handler(PROTOCOL_ID_CONTEXT, self._on_incoming_stream)
        self._host.set_stream_handler(ADMISSION_PROTOCOL_ID, self._on_admission)
        self._host.set_stream_handler(RETAINED_PROTOCOL_ID, self._on_retained)
        try:
            try:
                async with self._host.run([listen_multiaddr(cfg.listen_host, cfg.listen_port)]):
                    try:
                        await self._run_services(task_status)
                    finally:
                        with trio.CancelScope(shield=True), trio.move_on_after(SHUTDOWN_HOST_S):
                            await close_host(self._host)
            except OSError as exc:
                raise DialError(f"cannot listen on {cfg.listen_host}:{cfg.listen_port}: {exc}") from exc
        finally:
            peerDiscovery.unregister_peer_discovered_handler(self._on_mdns_peer)
            self._pubsub.release()
            self._running = False
            self._events_send.close()  # sync: a cancelled scope must not skip the next line
            self._stopped.set()

    async def _run_services(self, task_status: trio.TaskStatus[None]) -> None:
        async with background_trio_service(self._pubsub), background_trio_service(self._router):
            try:
                if self._dht is not None:
                    async with background_trio_service(self._dht):
                        await self._run_tasks(task_status)
                else:
                    await self._run_tasks(task_status)
            finally:
                # Close connections while pub/sub still runs: its stream readers live in the
                # swarm's tasks and fail (taking the swarm down) once its service has stopped.
                with trio.CancelScope(shield=True), trio.move_on_after(SHUTDOWN_HOST_S):
                    await close_host(self._host)

    async def _run_tasks(self, task_status: trio.TaskStatus[None]) -> None:
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            nursery.start_soon(self._pump_events)
            with trio.fail_after(self.config.request_timeout_s):
                await self._pubsub.wait_until_ready()
            self._listen_addrs = tuple(str(a) for a in self._host.get_addrs())
            if not self._listen_addrs:
                raise DialError(f"not listening on {self.config.listen_host}:{self.config.listen_port} "
                                "(py-libp2p could not open the listener; see the log above)")
            self._running = True
            # `Started` is always the first event: what arrived meanwhile waits in the channels.
            await self._events.put(Started(self.local_peer_id, self._listen_addrs))
            nursery.start_soon(self._pump_messages)
            nursery.start_soon(self._pump_network)
            nursery.start_soon(self._pump_found)
            nursery.start_soon(self._maintain_connections)
            # py-libp2p only evicts expired peer records when someone runs this task.
            nursery.start_soon(self._host.get_peerstore().start_cleanup_task, PEERSTORE_CLEANUP_S)
            log.info("node %s listening on %s", self.local_peer_id, ", ".join(self._listen_addrs))
            task_status.started()
            await self._stop_requested.wait()
            nursery.cancel_scope.cancel()
        self._nursery = None

    def _require_running(self) -> trio.Nursery:
        if not self._running or self._nursery is None:
            raise NotRunningError("the node is not running")
        return self._nursery

    # --- events -----------------------------------------------------------------------------
    async def _emit(self, event: Event) -> None:
        await self._events.put(event)

    def _queue_audio(self, event: AudioData) -> None:
        self._events.put_audio(event)

    def _count_audio_drop(self, event: AudioData) -> None:
        session = self._sessions.get(event.stream_id)
        if session is not None:
            session.frames_dropped += 1
        else:
            self._audio_dropped += 1  # its stream is gone: keep the count at node level

    async def _pump_events(self) -> None:
        while True:
            event = await self._events.get()
            try:
                await self._events_send.send(event)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                return  # nobody listens any more; keep draining would only spin

    # --- pub/sub ----------------------------------------------------------------------------
    def _over_rate(self, msg: rpc_pb2.Message) -> bool:
        """True if the message's origin already sent `pubsub_rate_limit` messages on one of its
        topics in this one-second window. py-libp2p hands a message to the subscriber before
        GossipSub's own spam check (which only stops forwarding), so without this a flooding
        peer reaches the application at any rate. The table is cleared every window."""
        now = time.monotonic()
        if now - self._rate_window >= 1.0:
            self._rate_window = now
            self._rate_counts.clear()
        over = False
        for topic in msg.topicIDs:
            key = (bytes(msg.from_id), topic)
            n = self._rate_counts.get(key, 0) + 1
            self._rate_counts[key] = n
            over = over or n > self.config.pubsub_rate_limit
        return over

    def _deliver_message(self, msg: rpc_pb2.Message) -> None:
        if self._over_rate(msg):
            self._messages_dropped += 1
            if self._messages_dropped in (1, 10, 100) or self._messages_dropped % 1000 == 0:
                log.warning("pub/sub: a peer exceeds pubsub_rate_limit (%d/s on a topic): %d messages "
                            "dropped so far", self.config.pubsub_rate_limit, self._messages_dropped)
            return
        try:
            self._inbox_send.send_nowait(msg)
        except trio.WouldBlock:
            self._messages_dropped += 1
            if self._messages_dropped in (1, 10, 100) or self._messages_dropped % 1000 == 0:
                log.warning("pub/sub inbox full: %d messages dropped so far (the application is "
                            "not reading events fast enough)", self._messages_dropped)

    async def _pump_messages(self) -> None:
        async for msg in self._inbox_recv:
            try:
                origin = PeerId(ID(msg.from_id).to_base58())
            except Exception:
                self._messages_dropped += 1
                continue
            self._retained.keep(msg, trio.current_time())
            if origin == self.local_peer_id:
                continue  # our own publication, echoed by the router
            if not self._peering.is_allowed(origin):
                self._messages_dropped += 1
                continue
            self._received += 1
            self._bytes_in += len(msg.data)
            for topic in msg.topicIDs:
                if topic in self._topics:
                    await self._emit(Message(origin, topic, bytes(msg.data), seqno=_seqno(msg)))

    # --- retained messages (kept and encoded by RetainedStore) -----------------------------
    async def _send_retained(self, peer: ID) -> None:
        out = self._retained.encode_for(peer.to_bytes(), trio.current_time())
        if not out:
            return
        with trio.move_on_after(self.config.request_timeout_s):
            try:
                stream = await self._host.new_stream(peer, [RETAINED_PROTOCOL_ID])
                await stream.write(out)
                await stream.close()
            except Exception as exc:  # the peer may not speak it, or went away: gossip still works
                log.debug("retained messages not sent to %s: %s", peer, exc)

    async def _on_retained(self, stream: INetStream) -> None:
        """A neighbour's retained messages: each one's signature is checked as GossipSub would,
        messages already seen (or older than what we hold from that origin) are skipped, the
        rest are delivered as `Message` with their age, and not forwarded."""
        from libp2p.pubsub.validators import signature_validator

        peer = PeerId(stream.muxed_conn.peer_id.to_base58())
        if not self._peering.is_allowed(peer):
            await stream.reset()
            return
        data = bytearray()
        with trio.move_on_after(self.config.request_timeout_s):
            try:
                while len(data) <= MAX_RETAINED_SYNC_BYTES:
                    chunk = await read_some(stream, 65536)
                    if not chunk:
                        break
                    data += chunk
            except STREAM_ERRORS as exc:
                log.debug("retained messages from %s cut short: %s", peer, exc)
        for msg, age_ms in RetainedStore.decode(bytes(data), self.config.max_message_size + 4096):
            try:
                if msg is None:
                    raise ValueError("not a pub/sub message")
                origin = PeerId(ID(msg.from_id).to_base58())
            except Exception:
                self._messages_dropped += 1
                continue
            topics = [t for t in msg.topicIDs if t in self._topics and t in self._retained.topics]
            if not topics or origin == self.local_peer_id or not self._peering.is_allowed(origin):
                continue
            if self._pubsub._is_msg_seen(msg):
                continue
            if not self._retained.is_news(msg, topics[0]):
                continue  # we hold the same or a newer one from that origin
            if not signature_validator(msg):
                self._messages_dropped += 1
                log.debug("retained message from %s with a bad signature (via %s)", origin, peer)
                continue
            self._pubsub._mark_msg_seen(msg)
            self._retained.keep(msg, trio.current_time())
            self.retained_received += 1
            self._received += 1
            self._bytes_in += len(msg.data)
            for topic in topics:
                await self._emit(Message(origin, topic, bytes(msg.data), age_s=age_ms / 1000, seqno=_seqno(msg)))

    # --- connections (decisions: PeerManager; here the I/O) -----------------------------------
    async def _pump_network(self) -> None:
        network = self._host.get_network()
        async for kind, conn in self._net_recv:
            peer = PeerId(_peer(conn).to_base58())
            if kind == "connected":
                refusal = self._peering.opened(peer)
                if refusal is not None:
                    log.info("refusing connection from %s: %s", peer, refusal)
                    with trio.move_on_after(2.0):
                        try:
                            await conn.close()
                        except Exception as exc:
                            log.debug("closing refused connection: %s", exc)
                    continue
                if getattr(conn, "is_closed", False):
                    continue  # closed before we got to it (e.g. refused by the other side)
                enable_tcp_liveness(conn)
                if self._peering.start_admission(peer):
                    self._nursery_soon(self._admit, conn, peer)
            elif kind == "disconnected":
                if peer in self._peering.connected and not network.get_connections(_peer(conn)):
                    await self._lost(peer)

    async def _admit(self, conn: INetConn, peer: PeerId) -> None:
        """A new connection counts (PeerConnected) once the other side admits us too, so a
        peer that refuses us (its allow list, its max_peers) never shows as connected."""
        try:
            with trio.move_on_after(min(self.config.request_timeout_s, DIAL_TIMEOUT_S)):
                refusal = await self._ask_admission(conn)
                if refusal is not None:
                    log.info("%s refused our connection: %s", peer, refusal)
                    self._peering.refused_by(peer, refusal, trio.current_time())
                    self._discover_now.set()  # reconcile our peer list at once
                    with trio.move_on_after(2.0):
                        try:
                            await self._host.disconnect(_peer(conn))
                        except Exception as exc:
                            log.debug("disconnect %s: %s", peer, exc)
                    return
        except _ConnectionGone:
            return
        finally:
            self._peering.admission_ended(peer)
        live = [c for c in self._host.get_network().get_connections(_peer(conn))
                if not getattr(c, "is_closed", False)]
        if not live:
            return
        address = _conn_address(conn)
        if self._peering.admitted(peer, address):
            self._remember(peer)
            if self._dht is not None:
                self._nursery_soon(self._add_to_dht, _peer(conn))
            if self._retained.topics:
                self._nursery_soon(self._send_retained, _peer(conn))
            await self._emit(PeerConnected(peer, address))

    async def _lost(self, peer: PeerId) -> None:
        self._peering.lost(peer, trio.current_time())
        for session in [s for s in self._sessions.values() if s.peer_id == peer]:
            self._nursery_soon(session.close, "peer-gone: disconnected")
        self._discover_now.set()
        await self._emit(PeerDisconnected(peer))

    async def _reconcile_peers(self) -> None:
        """Safety net: a peer we list as connected but have no open connection to is lost (the
        swarm does not report every close, e.g. one the other side makes during set-up)."""
        network = self._host.get_network()
        for peer in list(self._peering.connected):
            conns = network.get_connections(ID.from_base58(peer))
            if not any(not getattr(c, "is_closed", False) for c in conns):
                await self._lost(PeerId(peer))

    def _nursery_soon(self, fn, *args) -> None:  # type: ignore[no-untyped-def]
        if self._nursery is not None:
            self._nursery.start_soon(fn, *args)

    async def _add_to_dht(self, peer: ID) -> None:
        assert self._dht is not None
        with trio.move_on_after(self.config.request_timeout_s):
            try:
                await self._dht.add_peer(peer)
            except Exception as exc:
                log.debug("dht add_peer %s: %s", peer, exc)

    def _remember(self, peer: PeerId, info: PeerInfo | None = None) -> None:
        """Keep where `peer` listens (`info`, or what the peerstore knows) worth reconnecting to."""
        if info is None:
            try:
                addrs = self._host.get_peerstore().addrs(ID.from_base58(peer))
            except Exception:  # PeerStoreError: nothing known about its addresses (yet)
                return
            info = PeerInfo(ID.from_base58(peer), addrs)
        if info.addrs:
            self._peering.remember(peer, info)

    def _on_mdns_peer(self, info: PeerInfo) -> None:
        """Called by zeroconf on its own thread: hand over to trio without waiting."""
        token = self._trio_token
        if token is None:
            return  # found before our loop runs: zeroconf reports it again on the next query
        try:
            token.run_sync_soon(self._found_nowait, info)
        except trio.RunFinishedError:
            pass

    def _found_nowait(self, info: PeerInfo) -> None:
        try:
            self._found_send.send_nowait(info)
        except (trio.WouldBlock, trio.ClosedResourceError):
            pass  # discovery repeats; a missed announcement is found next round

    async def _pump_found(self) -> None:
        async for info in self._found_recv:
            if not info.addrs:
                continue
            peer = PeerId(info.peer_id.to_base58())
            intake = self._peering.found(peer, info, trio.current_time())
            if intake.announce:
                await self._emit(PeerDiscovered(peer))
            if intake.dial:
                self._start_dial(peer, info)

    def _start_dial(self, peer: PeerId, info: PeerInfo) -> None:
        """Start a dial in the background (counted as dialling at once, so the dial budget sees
        it before the task runs); failures are only logged at debug."""
        if self._nursery is None:
            return
        self._peering.dial_started(peer)
        self._nursery.start_soon(self._dial_task, peer, info)

    async def _connect(self, peer: PeerId, info: PeerInfo, what: str) -> None:
        """Connect to `peer` and wait until both sides admitted the connection (PeerConnected);
        DialError with the reason otherwise."""
        self._peering.connect_requested(peer)
        try:
            forget_failed_dials(self._host, info.peer_id)
            await self._host.connect(info)
        except Exception as exc:
            raise DialError(f"dial {what} failed: {exc}") from exc
        while peer not in self._peering.connected:
            refused = self._peering.refusal_from(peer)
            if refused is not None:
                raise DialError(f"{peer} refused the connection: {refused}")
            if not self._host.get_network().get_connections(info.peer_id):
                raise DialError(f"{peer} closed the connection (limit or allow list)")
            await trio.sleep(0.01)

    def _addresses_of(self, peer: PeerId) -> PeerInfo | None:
        """What we know of where `peer` listens (discovery, identify, the DHT), or None."""
        info = self._peering.known.get(peer)
        if info is not None and info.addrs:
            return info
        pid = ID.from_base58(peer)
        try:
            addrs = self._host.get_peerstore().addrs(pid)
        except Exception:  # PeerStoreError: nothing known
            return None
        return PeerInfo(pid, addrs) if addrs else None

    async def _dial_task(self, peer: PeerId, info: PeerInfo) -> None:
        try:
            with trio.move_on_after(min(self.config.request_timeout_s, DIAL_TIMEOUT_S)):
                forget_failed_dials(self._host, info.peer_id)
                await self._host.connect(info)
                # Still "dialling" until admitted (or gone): the dial budget must not see a gap
                # between the connection and its admission.
                while peer not in self._peering.connected and self._host.get_network().get_connections(info.peer_id):
                    await trio.sleep(0.05)
        except Exception as exc:
            log.debug("dial %s failed: %s", peer, exc)
        finally:
            self._peering.dial_ended(peer)

    async def _maintain_connections(self) -> None:
        """Keep bootstrap and known peers connected; run discovery rounds. Backs off to
        `discovery_interval_s` while nothing changes, and runs at once on `discover_peers()`."""
        for addr in self.config.bootstrap_peers:
            info = info_from_p2p_addr(multiaddr.Multiaddr(addr))
            self._host.get_peerstore().add_addrs(info.peer_id, info.addrs, 3600 * 24)
            self._peering.add_bootstrap(PeerId(info.peer_id.to_base58()), info)
        delay = FIRST_ROUND_S
        while True:
            await self._reconcile_peers()
            plan = self._peering.plan_round(trio.current_time())
            for peer in plan.forget:
                log.info("forgot departed peer %s: unreachable for %g s", peer, self.config.forget_after_s,
                         extra={"peer": peer, "_summary": "peers"})
            for peer, info in plan.dial:
                self._start_dial(PeerId(peer), info)
            if self._dht is not None and self._peering.wants_dht_round():
                await self._dht_round()
            with trio.move_on_after(self._peering.sleep_for(delay, trio.current_time())):
                await self._discover_now.wait()
            woken = self._discover_now.is_set()
            if woken:
                self._discover_now = trio.Event()
            delay = self._peering.next_delay(delay, woken=woken, interval=self.config.discovery_interval_s)

    async def _dht_round(self) -> None:
        """Ask the DHT for peers near our own id; report and dial the ones we do not have."""
        assert self._dht is not None
        found: list[ID] = []
        with trio.move_on_after(self.config.request_timeout_s):
            try:
                found = await self._dht.peer_routing.find_closest_peers_network(
                    self._host.get_id().to_bytes(), count=self.config.max_peers)
            except Exception as exc:
                log.debug("dht round failed: %s", exc)
        store = self._host.get_peerstore()
        for pid in found:
            addrs = store.addrs(pid) if pid in store.peer_ids() else []
            if addrs:
                self._found_nowait(PeerInfo(pid, addrs))

    # --- audio streams ----------------------------------------------------------------------
    def _new_stream_id(self) -> StreamId:
        while True:
            sid = StreamId(secrets.randbits(63) + 1)
            if sid not in self._sessions:
                return sid

    def _start_session(self, session: AudioSession) -> None:
        self._sessions[session.stream_id] = session
        self._require_running().start_soon(self._run_session, session)

    async def _run_session(self, session: AudioSession) -> None:
        reason = await session.run()
        self._sessions.pop(session.stream_id, None)
        # Closed streams' counters live on in the node's totals.
        self._bytes_in += session.bytes_in
        self._bytes_out += session.bytes_out
        self._audio_dropped += session.frames_dropped
        # A refused request (e.g. a talk offered to a node that hears it already: several per node
        # and talk in a big fleet) at DEBUG; the application logs the refusals that matter.
        level = logging.DEBUG if reason.startswith(("rejected", "rejected locally")) else logging.INFO
        log.log(level, "audio stream %x with %s closed: %s", session.stream_id, session.peer_id, reason,
                extra={"peer": session.peer_id, "stream": f"{session.stream_id:x}"})
        await self._emit(AudioStreamClosed(session.peer_id, session.stream_id, reason))

    async def _on_admission(self, stream: INetStream) -> None:
        """Answer a dialler's admission question: "ok", or "no: <why>" (allow list, max_peers).
        Without it a refused dialler only sees its new connection close some time later."""
        peer = PeerId(stream.muxed_conn.peer_id.to_base58())
        refusal = self._peering.refusal_reason(peer)
        with trio.move_on_after(2.0):
            try:
                await stream.write(b"ok" if refusal is None else b"no: " + refusal.encode()[:200])
                await stream.close()
            except Exception as exc:  # the connection is going away anyway
                log.debug("admission answer to %s not sent: %s", peer, exc)

    async def _ask_admission(self, conn: INetConn) -> str | None:
        """The other side's refusal reason, or None when it admits us (or is a libp2p peer that
        does not speak the admission protocol). `_ConnectionGone` if `conn` closed meanwhile."""
        try:
            stream = await self._host.new_stream(_peer(conn), [ADMISSION_PROTOCOL_ID])
            answer = b""
            while len(answer) < 256:
                chunk = await read_some(stream, 256)
                if not chunk:
                    break
                answer += chunk
        except Exception:
            # Judge by this connection, not by the peer: another connection that is still being
            # set up (py-libp2p's pub/sub redials on its own) must not pass for an admission.
            await trio.sleep(0.05)  # let a close that raced the question land
            if getattr(conn, "is_closed", False) or getattr(conn.muxed_conn, "is_closed", False):
                raise _ConnectionGone() from None
            return None  # connected, but not an avi node: nothing to ask
        if answer.startswith(b"no: "):
            return answer[4:].decode(errors="replace")
        return None

    async def _on_incoming_stream(self, stream: INetStream) -> None:
        nursery = self._nursery
        if nursery is None or not self._running:
            await stream.reset()
            return
        nursery.start_soon(self._serve_incoming, stream)

    async def _serve_incoming(self, stream: INetStream) -> None:
        peer = PeerId(stream.muxed_conn.peer_id.to_base58())
        if not self._peering.is_allowed(peer):
            await stream.reset()
            return
        conn = ap.AudioStreamConnection(ap.Role.RESPONDER, contexts=stream.get_protocol() == PROTOCOL_ID_CONTEXT)
        request: ap.StreamRequested | None = None
        with trio.move_on_after(self.config.request_timeout_s):
            try:
                while request is None:
                    data = await read_some(stream, 4096)
                    if not data:
                        break
                    for ev in conn.receive_data(data):
                        if isinstance(ev, ap.StreamRequested):
                            request = ev
            except (ap.RemoteProtocolError, *STREAM_ERRORS) as exc:
                log.info("bad audio stream request from %s: %s", peer, exc)
        if request is None:
            with trio.move_on_after(1.0):
                await stream.reset()
            return
        sid = StreamId(request.stream_id)
        refusal = None
        if sid in self._sessions:
            refusal = "duplicate stream id"
        elif len(self._sessions) >= self.config.max_audio_streams:
            refusal = "limit"
        if refusal is not None:
            with trio.move_on_after(1.0):
                try:
                    await stream.write(conn.reject(refusal))
                    await stream.close()
                except Exception as exc:
                    log.debug("reject not sent: %s", exc)
            log.info("rejected audio stream from %s: %s", peer, refusal)
            return
        session = AudioSession(self.config, self._events, stream, peer, sid, Direction.INCOMING, conn)
        try:
            self._start_session(session)
        except NotRunningError:
            await stream.reset()
            return
        await self._emit(AudioStreamRequested(peer, sid, request.params.context))

    def _session(self, stream_id: StreamId) -> AudioSession:
        session = self._sessions.get(stream_id)
        if session is None:
            raise UnknownStreamError(f"no audio stream {stream_id:x}")
        return session

    # --- operations: what AviP2pHandle forwards to (the handle is their public face) ---------
    async def _command(self, what: str, fn: Callable[..., Awaitable[T]], *args: Any) -> T:
        """Run one command: at most `command_buffer` at once (extra callers wait), at most
        `request_timeout_s` long, any failure raised as an `AviP2pError`."""
        self._require_running()
        async with self._commands:
            try:
                with trio.fail_after(self.config.request_timeout_s):
                    return await fn(*args)
            except trio.TooSlowError:
                raise TimeoutError(f"{what} did not complete within {self.config.request_timeout_s:g} s") from None
            except AviP2pError:
                raise
            except Exception as exc:
                raise AviP2pError(f"{what} failed: {exc}") from exc

    def _listen_addresses(self) -> list[str]:
        return list(self._listen_addrs)

    def _connected_peers(self) -> list[PeerId]:
        return list(self._peering.connected)

    async def _subscribe(self, topic: str) -> None:
        async def go() -> None:
            try:
                await self._pubsub.subscribe(topic)
            except Exception as exc:
                raise PubSubError(f"subscribe to {topic!r} failed: {exc}") from exc
            self._topics.add(topic)
        await self._command("subscribe", go)

    async def _unsubscribe(self, topic: str) -> None:
        async def go() -> None:
            self._topics.discard(topic)
            try:
                await self._pubsub.unsubscribe(topic)
            except Exception as exc:
                raise PubSubError(f"unsubscribe from {topic!r} failed: {exc}") from exc
        await self._command("unsubscribe", go)

    async def _publish(self, topic: str, data: bytes) -> None:
        async def go() -> None:
            try:
                await self._pubsub.publish(topic, data)
            except Exception as exc:
                raise PubSubError(f"publish to {topic!r} failed: {exc}") from exc
            self._published += 1
            self._bytes_out += len(data)
        await self._command("publish", go)

    async def _dial(self, info: PeerInfo, address: str) -> PeerId:
        """Connect to `info` (parsed from `address`) and wait for both sides' admission."""
        peer = PeerId(info.peer_id.to_base58())
        if peer == self.local_peer_id:
            raise DialError("cannot dial ourselves")
        if not self._peering.is_allowed(peer):
            raise NotAllowedError(f"{peer} is not in allowed_peers")

        async def go() -> PeerId:
            await self._connect(peer, info, address)
            self._remember(peer, info)  # only now: a peer that refuses us is not redialled
            return peer
        return await self._command("dial", go)

    def _discover_peers(self) -> None:
        self._require_running()
        self._discover_now.set()

    async def _request_audio_stream(self, peer: PeerId, context: bytes = b"") -> StreamId:
        self._require_running()
        if len(context) > MAX_CONTEXT:
            raise LimitError(f"a stream context of {len(context)} bytes exceeds {MAX_CONTEXT}")
        info = None
        if peer not in self._peering.connected:
            # Bounded degree: a peer we are not connected to is connected on demand, if its
            # addresses are known (discovery, identify, DHT).
            info = self._addresses_of(peer) if peer != self.local_peer_id else None
            if info is None or not self._peering.is_allowed(peer):
                raise UnknownPeerError(f"{peer} is not connected and its address is not known")
        if len(self._sessions) >= self.config.max_audio_streams:
            raise LimitError(f"max_audio_streams ({self.config.max_audio_streams}) reached")

        async def go() -> StreamId:
            if info is not None and peer not in self._peering.connected:
                try:
                    await self._connect(peer, info, peer)
                except DialError as exc:
                    raise UnknownPeerError(f"{peer} is not connected, and connecting failed: {exc}") from None
            # With a context: 1.1.0 first; a node that predates it answers 1.0.0 (no context).
            protocols = [PROTOCOL_ID_CONTEXT, PROTOCOL_ID] if context else [PROTOCOL_ID]
            try:
                stream = await self._host.new_stream(ID.from_base58(peer), protocols)
            except Exception as exc:
                raise ProtocolError(f"cannot open an audio stream to {peer}: {exc}") from exc
            sid = self._new_stream_id()
            contexts = stream.get_protocol() == PROTOCOL_ID_CONTEXT
            conn = ap.AudioStreamConnection(ap.Role.INITIATOR, contexts=contexts)
            session = AudioSession(self.config, self._events, stream, peer, sid, Direction.OUTGOING, conn)
            try:
                await session.write_control(conn.request(sid, StreamParams(context=context if contexts else b"")))
            except Exception as exc:
                with trio.move_on_after(1.0):
                    await stream.reset()
                raise ProtocolError(f"audio stream request to {peer} failed: {exc}") from exc
            self._start_session(session)
            return sid
        return await self._command("request_audio_stream", go)

    def _awaiting_accept(self, stream_id: StreamId) -> AudioSession:
        session = self._session(stream_id)
        if session.direction is not Direction.INCOMING or not session.awaiting_accept:
            raise ProtocolError(f"audio stream {stream_id:x} is not waiting to be accepted")
        return session

    async def _accept_audio_stream(self, stream_id: StreamId) -> None:
        session = self._awaiting_accept(stream_id)
        await self._command("accept_audio_stream", session.accept)

    async def _reject_audio_stream(self, stream_id: StreamId, reason: str) -> None:
        session = self._awaiting_accept(stream_id)
        await self._command("reject_audio_stream", session.reject, reason)
        await session.done.wait()

    def _send_audio(self, stream_id: StreamId, data: bytes, timestamp_us: int, codec: int) -> None:
        self._require_running()
        self._session(stream_id).queue_frame(data, timestamp_us, codec)

    async def _close_audio_stream(self, stream_id: StreamId) -> None:
        session = self._session(stream_id)
        await self._command("close_audio_stream", session.close, "normal")
        await session.done.wait()

    def stats(self) -> NodeStats:
        sessions = tuple(s.stats() for s in self._sessions.values())
        return NodeStats(
            peers=len(self._peering.connected),
            connected_peers=tuple(PeerId(p) for p in self._peering.connected),
            bytes_in=self._bytes_in + sum(s.bytes_in for s in sessions),
            bytes_out=self._bytes_out + sum(s.bytes_out for s in sessions),
            messages_published=self._published,
            messages_received=self._received,
            messages_dropped=self._messages_dropped,
            audio_frames_dropped=self._audio_dropped + sum(s.frames_dropped for s in sessions),
            connections_refused=self._peering.refused,
            streams=sessions,
            peers_forgotten=self._peering.redial.forgotten,
            messages_unsent=self._pubsub.unsent,
        )
