"""Events the node delivers on its (bounded) event channel. Frozen dataclasses, matchable."""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import NewType

PeerId = NewType("PeerId", str)
"""A peer's id in its base58 text form (``12D3KooW...``)."""

StreamId = NewType("StreamId", int)
"""An audio stream's id: a random 64-bit number chosen by the side that requests the stream."""


class _FromPeerAlias:
    """``from_peer``: the name this event's ``peer_id`` had before every event called a peer
    ``peer_id``. Kept so code written against the first API (``case Message(from_peer=p, ...)``,
    as shared/design.md shows) still matches; a class pattern naming an attribute the class does
    not have would silently never match, which is worse than a warning."""

    __slots__ = ()

    @property
    def from_peer(self) -> PeerId:
        warnings.warn(f"{type(self).__name__}.from_peer is deprecated: use peer_id",
                      DeprecationWarning, stacklevel=2)
        return self.peer_id  # type: ignore[attr-defined, no-any-return]


@dataclass(frozen=True, slots=True)
class Started:
    local_peer_id: PeerId
    listen_addresses: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class PeerDiscovered:
    peer_id: PeerId


@dataclass(frozen=True, slots=True)
class PeerConnected:
    peer_id: PeerId
    address: str


@dataclass(frozen=True, slots=True)
class PeerDisconnected:
    peer_id: PeerId


@dataclass(frozen=True, slots=True)
class Message(_FromPeerAlias):
    peer_id: PeerId
    topic: str
    data: bytes
    # Seconds the message had been held by a neighbour before it reached us: 0 for pub/sub
    # delivery, the holding time for a retained message handed over on connect.
    age_s: float = 0.0
    # The origin's sequence number for this message (signed with it): it grows with every
    # message the origin publishes, also across its restarts (it starts from the clock), so a
    # reader can tell an older message that arrives late (gossip replays, retained copies) from
    # a newer one. 0 when unknown.
    seqno: int = 0


@dataclass(frozen=True, slots=True)
class AudioStreamRequested(_FromPeerAlias):
    peer_id: PeerId
    stream_id: StreamId
    # What the requester says the stream is for (`request_audio_stream(..., context=)`): opaque
    # bytes, empty when it gave none or speaks the protocol's 1.0.0 version.
    context: bytes = b""


@dataclass(frozen=True, slots=True)
class AudioStreamAccepted:
    peer_id: PeerId
    stream_id: StreamId


@dataclass(frozen=True, slots=True)
class AudioData(_FromPeerAlias):
    peer_id: PeerId
    stream_id: StreamId
    data: bytes
    sequence: int = 0
    timestamp_us: int = 0
    codec: int = 1


@dataclass(frozen=True, slots=True)
class AudioStreamClosed:
    peer_id: PeerId
    stream_id: StreamId
    reason: str


Event = (Started | PeerDiscovered | PeerConnected | PeerDisconnected | Message
         | AudioStreamRequested | AudioStreamAccepted | AudioData | AudioStreamClosed)
