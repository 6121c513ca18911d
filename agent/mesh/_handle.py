"""`AviP2pHandle`: the application's reference to a running node. It checks its arguments and
forwards to the node's operations; what they do (pub/sub, connections, audio streams) is the
node's job, in _node.py."""

from __future__ import annotations

from typing import TYPE_CHECKING

import multiaddr
import trio
from libp2p.peer.peerinfo import info_from_p2p_addr

from ._clock import now_us
from ._errors import DialError, LimitError, PubSubError
from ._events import PeerId, StreamId

if TYPE_CHECKING:
    from ._node import AviP2p


class AviP2pHandle:
    """A cheap, copyable reference to a running node. Every call succeeds or raises an
    `AviP2pError`; none waits on the network for longer than `request_timeout_s`. The handle
    checks its arguments and forwards to the node, which does the work."""

    __slots__ = ("_node",)

    def __init__(self, node: AviP2p) -> None:
        self._node = node

    @property
    def local_peer_id(self) -> PeerId:
        return self._node.local_peer_id

    def listen_addresses(self) -> list[str]:
        return self._node._listen_addresses()

    def connected_peers(self) -> list[PeerId]:
        return self._node._connected_peers()

    # pub/sub
    async def subscribe(self, topic: str) -> None:
        _check_topic(topic)
        await self._node._subscribe(topic)

    async def unsubscribe(self, topic: str) -> None:
        _check_topic(topic)
        await self._node._unsubscribe(topic)

    async def publish(self, topic: str, data: bytes) -> None:
        _check_topic(topic)
        limit = self._node.config.max_message_size
        if len(data) > limit:
            raise LimitError(f"message of {len(data)} bytes exceeds max_message_size ({limit})")
        await self._node._publish(topic, bytes(data))

    # peers
    async def dial(self, address: str) -> PeerId:
        """Connect to a peer at a multiaddr with a /p2p/<peer id> part; returns its id."""
        try:
            info = info_from_p2p_addr(multiaddr.Multiaddr(address))
        except Exception as exc:
            raise DialError(f"not a dialable multiaddr {address!r}: {exc}") from None
        return await self._node._dial(info, address)

    async def discover_peers(self) -> None:
        """Start a discovery round now (bootstrap, DHT, known peers); results come as events."""
        self._node._discover_peers()
        await trio.lowlevel.checkpoint()  # (the round runs in the node's task)

    # audio streams
    async def request_audio_stream(self, peer: PeerId, *, context: bytes = b"") -> StreamId:
        """Open an audio stream to `peer`. Frames sent before the peer accepts are queued (drop
        oldest); acceptance arrives as `AudioStreamAccepted`, refusal as `AudioStreamClosed`.
        `context` (at most 1024 bytes, opaque) reaches the peer in its `AudioStreamRequested`;
        a peer of the protocol's 1.0.0 version gets the stream without it."""
        return await self._node._request_audio_stream(peer, context)

    async def accept_audio_stream(self, stream_id: StreamId) -> None:
        await self._node._accept_audio_stream(stream_id)

    async def reject_audio_stream(self, stream_id: StreamId, reason: str) -> None:
        await self._node._reject_audio_stream(stream_id, reason)

    async def send_audio(self, stream_id: StreamId, data: bytes, *, timestamp_us: int | None = None,
                         codec: int = 1) -> None:
        """Queue one frame; never waits for the network (the oldest queued frame is dropped
        when the peer cannot keep up). `timestamp_us` is the capture time on CLOCK_MONOTONIC."""
        await trio.lowlevel.checkpoint()  # never waits, but is a checkpoint (cancelled: not queued)
        self._node._send_audio(stream_id, bytes(data), now_us() if timestamp_us is None else timestamp_us, codec)

    async def close_audio_stream(self, stream_id: StreamId) -> None:
        await self._node._close_audio_stream(stream_id)


def _check_topic(topic: str) -> None:
    if not isinstance(topic, str) or not topic or len(topic) > 256:
        raise PubSubError(f"invalid topic {topic!r}: expected 1 to 256 characters")
