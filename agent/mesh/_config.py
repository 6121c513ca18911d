"""`AviP2pConfig`: every field defaulted for local development, every number range-checked."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any, ClassVar

from multiaddr import Multiaddr
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from ._audio_protocol import KEEPALIVE_INTERVAL, STREAM_TIMEOUT


_B58 = "123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz"


def is_peer_id(text: str) -> bool:
    """True for a base58 libp2p peer id: a multihash that is either an identity hash of a
    public key (``12D3KooW...``, Ed25519) or a SHA-256 (``Qm...``)."""
    if not 1 <= len(text) <= 128 or any(c not in _B58 for c in text):
        return False
    n = 0
    for c in text:
        n = n * 58 + _B58.index(c)
    raw = n.to_bytes((n.bit_length() + 7) // 8, "big")
    raw = b"\0" * (len(text) - len(text.lstrip("1"))) + raw
    if len(raw) < 2:
        return False
    code, length = raw[0], raw[1]
    if code == 0x12:
        return length == 32 and len(raw) == 34
    if code == 0x00:
        return 2 <= length <= 64 and len(raw) == 2 + length
    return False


# Time fields carry their unit in the name, like the rest of agent.toml. The names before that
# are still read (with a DeprecationWarning) so an existing config file keeps working.
RENAMED_FIELDS: dict[str, str] = {
    "keepalive_interval": "keepalive_interval_s",
    "stream_timeout": "stream_timeout_s",
    "request_timeout": "request_timeout_s",
    "gossip_heartbeat": "gossip_heartbeat_s",
    "discovery_interval": "discovery_interval_s",
}


# What keeps a node to this machine (AviP2pConfig.local_only).
LOCAL_ONLY: dict[str, Any] = {"listen_host": "127.0.0.1", "enable_mdns": False, "enable_kad": False}


class AviP2pConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    renamed_fields: ClassVar[dict[str, str]] = RENAMED_FIELDS

    node_name: str = Field("avi-node", min_length=1, max_length=64)
    listen_host: str = "127.0.0.1"
    listen_port: int = Field(0, ge=0, le=65535, description="0 = any free port")
    bootstrap_peers: list[str] = Field(
        default_factory=list, max_length=64,
        description="multiaddrs with a /p2p/<peer id> part, e.g. /ip4/10.0.0.2/tcp/4001/p2p/12D3KooW...")
    # Bounded degree: the node dials peers until it has `target_peers` connections and admits
    # peers that dial it up to `max_peers` (the hard cap), not one connection per peer it knows.
    max_peers: int = Field(24, ge=1, le=1024)
    target_peers: int = Field(6, ge=1, le=1024, description="capped at max_peers")
    # Audio streams open at once, in and out: a relay of a talk holds 1 in + talk.relay_fanout out.
    max_audio_streams: int = Field(16, ge=1, le=64)
    enable_mdns: bool = True
    enable_kad: bool = True
    identity_path: Path | None = Field(
        None, description="Ed25519 key file; created 0600 when missing. None = a new identity each start.")
    event_buffer: int = Field(256, ge=8, le=65536)
    command_buffer: int = Field(64, ge=1, le=4096)
    allowed_peers: list[str] = Field(default_factory=list, max_length=4096,
                                     description="empty = anyone may connect")
    # Audio stream liveness: a keepalive goes out when no frame was sent for this long ...
    keepalive_interval_s: float = Field(KEEPALIVE_INTERVAL, ge=0.05, le=30.0)
    # ... and a stream that receives nothing for this long is closed with reason "timeout".
    stream_timeout_s: float = Field(STREAM_TIMEOUT, ge=0.2, le=120.0)
    # How long a handle call waits on the network (dial, stream open, accept) before TimeoutError.
    request_timeout_s: float = Field(10.0, ge=0.1, le=300.0)
    # Frames a stream may queue for sending before the oldest is dropped (audio is real-time).
    audio_send_buffer: int = Field(16, ge=1, le=1024)
    gossip_heartbeat_s: float = Field(1.0, ge=0.1, le=60.0)
    # Messages per second the node promises to accept from one peer on one topic.
    pubsub_rate_limit: int = Field(200, ge=1, le=10000)
    max_message_size: int = Field(64 * 1024, ge=1024, le=1024 * 1024)
    discovery_interval_s: float = Field(10.0, ge=1.0, le=3600.0)
    # A known peer that is not connected is redialled with doubling gaps (from 1 s) up to this ...
    redial_max_s: float = Field(15.0, ge=1.0, le=3600.0)
    # ... and forgotten once missing this long (configured bootstrap peers never are).
    forget_after_s: float = Field(300.0, ge=1.0, le=7 * 24 * 3600.0)
    # Topics whose latest message per origin the node keeps and hands to each newly connected
    # peer (signed originals, checked again on arrival), so a newcomer knows the fleet's state
    # at once rather than after everyone's next periodic message.
    retained_topics: list[str] = Field(default_factory=list, max_length=16)

    @model_validator(mode="before")
    @classmethod
    def _accept_old_names(cls, data: Any) -> Any:
        if not isinstance(data, dict) or not any(old in data for old in RENAMED_FIELDS):
            return data
        data = dict(data)
        for old, new in RENAMED_FIELDS.items():
            if old not in data:
                continue
            if new in data:
                raise ValueError(f"{old} is the old name of {new}: give only {new}")
            warnings.warn(f"mesh.{old} is deprecated: it is now mesh.{new} (same value, in seconds)",
                          DeprecationWarning, stacklevel=2)
            data[new] = data.pop(old)
        return data

    @field_validator("bootstrap_peers")
    @classmethod
    def _check_bootstrap(cls, v: list[str]) -> list[str]:
        problems = []  # every bad entry, not only the first
        for i, addr in enumerate(v):
            try:
                ma = Multiaddr(addr)
            except Exception as exc:  # multiaddr raises several unrelated types
                problems.append(f"[{i}] not a multiaddr: {addr!r} ({exc})")
                continue
            if "/p2p/" not in str(ma):
                problems.append(f"[{i}] {addr!r} has no /p2p/<peer id> part")
            elif not is_peer_id(str(ma).rsplit("/p2p/", 1)[1].split("/")[0]):
                problems.append(f"[{i}] {addr!r}: the part after /p2p/ is not a peer id")
        if problems:
            raise ValueError("; ".join(problems))
        return v

    @field_validator("allowed_peers")
    @classmethod
    def _check_allowed(cls, v: list[str]) -> list[str]:
        bad = [p for p in v if not is_peer_id(p)]
        if bad:
            raise ValueError(f"not a peer id (base58, e.g. 12D3KooW... of 52 characters): "
                             f"{', '.join(repr(p) for p in bad[:10])}"
                             + (f" and {len(bad) - 10} more" if len(bad) > 10 else "")
                             + "; one bad entry would cut this node off from that peer")
        return v

    @classmethod
    def local_only(cls, **fields: Any) -> AviP2pConfig:
        """A node that keeps to this machine: listening on 127.0.0.1, mDNS and the DHT off (so it
        neither finds nor is found by other nodes here); ``fields`` set anything else. For tests,
        benches and tools; other nodes on 127.0.0.1 are reached by dialling or bootstrap_peers."""
        return cls(**{**LOCAL_ONLY, **fields})

    @property
    def dial_target(self) -> int:
        """Connections the node dials towards: target_peers, never above max_peers."""
        return min(self.target_peers, self.max_peers)

    @model_validator(mode="after")
    def _check_redial(self) -> AviP2pConfig:
        if self.forget_after_s < self.redial_max_s:
            raise ValueError(f"forget_after_s ({self.forget_after_s:g} s) must be at least redial_max_s "
                             f"({self.redial_max_s:g} s)")
        return self

    @model_validator(mode="after")
    def _check_liveness(self) -> AviP2pConfig:
        if self.stream_timeout_s < 2 * self.keepalive_interval_s:
            raise ValueError(
                f"stream_timeout_s ({self.stream_timeout_s:g} s) must be at least twice keepalive_interval_s "
                f"({self.keepalive_interval_s:g} s), or a quiet but healthy stream would time out")
        return self
