"""Talk groups: who is in which group, learnt from small announcements on a pub/sub topic.

Every node publishes ``{"v": 1, "name": ..., "groups": [...], "current": ..., "codecs": [...]}`` on
`TOPIC` (at start, more often for a few seconds after a peer connects, then every few
seconds). A sender streams to the connected peers whose ``groups`` hold its current group;
a receiver accepts a stream only from a peer whose ``current`` group is one of its own groups
(the group the sender talks to), and rejects it with a reason otherwise. ``codecs`` (added
later within v1, so older nodes ignore it) lists the codecs the node decodes, best first; a
node that announces none (the first version) decodes PCM S16LE only. A talker picks each
receiver's codec from it (codec.choose_codec). ``features`` (added later still, ignored by
older nodes) lists what else the node's receiving side understands: ``"dtx"`` = it plays a
talker's gap markers as silence (dtx.py), so a talker may leave out silent packets to it; a
node that announces no features gets every packet.

The announcement rides on pub/sub rather than in the stream request because the mesh's
stream protocol has no room for metadata, and because senders need the groups of peers
*before* a press to pick whom to stream to. Pure: no I/O here.
"""

from __future__ import annotations

import json
import re
from collections import OrderedDict
from dataclasses import dataclass

__all__ = ["TOPIC", "Announcement", "GroupDirectory", "encode_announcement", "parse_announcement",
           "admission"]

TOPIC = "avi/talk/groups"
MAX_ANNOUNCEMENT_BYTES = 4096
_GROUP_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


@dataclass(frozen=True, slots=True)
class Announcement:
    name: str
    groups: tuple[str, ...]
    current: str
    codecs: tuple[str, ...] | None = None  # decodable codec names; None: not announced (PCM only)
    features: tuple[str, ...] = ()         # receiving features (e.g. "dtx"); none from older nodes


def encode_announcement(name: str, groups: list[str] | tuple[str, ...], current: str,
                        codecs: list[str] | tuple[str, ...] | None = None,
                        features: list[str] | tuple[str, ...] = ()) -> bytes:
    obj: dict[str, object] = {"v": 1, "name": name, "groups": list(groups), "current": current}
    if codecs is not None:
        obj["codecs"] = list(codecs)
    if features:
        obj["features"] = list(features)
    return json.dumps(obj, separators=(",", ":")).encode()


def parse_announcement(data: bytes) -> Announcement | None:
    """The announcement in ``data``, or None when it is not a valid one (never raises)."""
    if len(data) > MAX_ANNOUNCEMENT_BYTES:
        return None
    try:
        obj = json.loads(data)
    except (ValueError, UnicodeDecodeError):
        return None
    if not isinstance(obj, dict) or obj.get("v") != 1:
        return None
    name, groups, current = obj.get("name"), obj.get("groups"), obj.get("current")
    if not isinstance(name, str) or not isinstance(groups, list) or not isinstance(current, str):
        return None
    if not groups or len(groups) > 32 or not all(isinstance(g, str) and _GROUP_RE.match(g) for g in groups):
        return None
    if current not in groups:
        return None
    codecs = obj.get("codecs")
    if codecs is not None:
        if not isinstance(codecs, list) or len(codecs) > 16:
            return None
        codecs = tuple(c[:16] for c in codecs if isinstance(c, str))
    features = obj.get("features", [])
    if not isinstance(features, list) or len(features) > 16:
        return None
    return Announcement(name[:64], tuple(groups), current, codecs,
                        tuple(f[:16] for f in features if isinstance(f, str)))


class GroupDirectory:
    """The latest announcement of each peer, bounded (least recently heard goes first)."""

    def __init__(self, max_peers: int = 256) -> None:
        self.max_peers = max_peers
        self._by_peer: OrderedDict[str, Announcement] = OrderedDict()

    def update(self, peer: str, ann: Announcement) -> Announcement | None:
        """Record ``ann`` for ``peer``; returns the previous one."""
        prev = self._by_peer.pop(peer, None)
        self._by_peer[peer] = ann
        while len(self._by_peer) > self.max_peers:
            self._by_peer.popitem(last=False)
        return prev

    def forget(self, peer: str) -> None:
        self._by_peer.pop(peer, None)

    def get(self, peer: str) -> Announcement | None:
        return self._by_peer.get(peer)

    def members(self, group: str) -> list[str]:
        """Peers that announced ``group`` among their groups."""
        return [p for p, a in self._by_peer.items() if group in a.groups]

    def __len__(self) -> int:
        return len(self._by_peer)


def admission(ann: Announcement | None, my_groups: list[str] | tuple[str, ...], active_in: int,
              max_streams: int) -> str | None:
    """Why an incoming stream from a peer announcing ``ann`` is refused, or None to accept.
    ``ann`` must not be None (an unknown peer's stream waits for its announcement)."""
    if ann is None:
        return "the sender's talk group is unknown (no announcement heard)"
    if ann.current not in my_groups:
        return f"not in talk group {ann.current!r} (this node is in {', '.join(my_groups)})"
    if active_in >= max_streams:
        return f"busy: already playing {active_in} streams (talk.max_streams={max_streams})"
    return None
