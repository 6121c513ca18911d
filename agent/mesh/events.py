"""Events the node delivers on its (bounded) event channel. Frozen dataclasses, matchable."""

from __future__ import annotations

from dataclasses import dataclass
from typing import NewType

PeerId = NewType("PeerId", str)
"""A peer's id in its base58 text form (``12D3KooW...``)."""

StreamId = NewType("StreamId", int)
"""An audio stream's id: a random 64-bit number chosen by the side that requests the stream."""


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
class Message:
    peer_id: PeerId
    topic: str
    data: bytes
    # Seconds the message had been held by a neighbour before it reached us: 0 for pub/sub
    # delivery, the holding time for a retained message handed over on connect.
    age_s: float = 0.0


@dataclass(frozen=True, slots=True)
class AudioStreamRequested:
    peer_id: PeerId
    stream_id: StreamId


@dataclass(frozen=True, slots=True)
class AudioStreamAccepted:
    peer_id: PeerId
    stream_id: StreamId


@dataclass(frozen=True, slots=True)
class AudioData:
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
