"""Identify: a person asks one node (from ``avi-agent monitor``) to chime and blink so they can find it.

A request is a small JSON message on :data:`TOPIC` naming the target's peer id. Pub/sub messages
are signed by their origin, so the node knows who asks even when the message was relayed by
others. :class:`IdentifyPolicy` (pure, explicit time) decides: only peers on the node's allow
list may ask (anyone when the list is empty), and at most one request is carried out per
``min_interval_s`` (a flood cannot keep a node beeping).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable
from typing import Literal

__all__ = ["TOPIC", "MIN_INTERVAL_S", "Decision", "IdentifyPolicy", "encode_request", "parse_request", "obey"]

log = logging.getLogger("agent.service")  # the service's lines (tests and the journal read them so)

TOPIC = "avi/identify"
MIN_INTERVAL_S = 10.0
MAX_REQUEST_BYTES = 512

Decision = Literal["done", "refused", "rate_limited"]


def encode_request(target_peer: str, requester: str = "") -> bytes:
    return json.dumps({"v": 1, "target": target_peer, "from": requester[:64]},
                      separators=(",", ":")).encode()


def parse_request(data: bytes) -> str | None:
    """The target peer id of a valid request, or None (never raises)."""
    if len(data) > MAX_REQUEST_BYTES:
        return None
    try:
        obj = json.loads(data)
    except (ValueError, UnicodeDecodeError):
        return None
    if not isinstance(obj, dict) or obj.get("v") != 1 or not isinstance(obj.get("target"), str):
        return None
    return obj["target"]


class IdentifyPolicy:
    """Who may ask, and how often. ``decide(from_peer, now)`` also counts the outcome."""

    def __init__(self, allowed_peers: Iterable[str] = (), min_interval_s: float = MIN_INTERVAL_S) -> None:
        self.allowed = frozenset(allowed_peers)
        self.min_interval_s = min_interval_s
        self._last_done: float | None = None
        self.counts: dict[str, int] = {"done": 0, "refused": 0, "rate_limited": 0}

    def decide(self, from_peer: str, now: float) -> Decision:
        result: Decision
        if self.allowed and from_peer not in self.allowed:
            result = "refused"
        elif self._last_done is not None and now - self._last_done < self.min_interval_s:
            result = "rate_limited"
        else:
            result = "done"
            self._last_done = now
        self.counts[result] += 1
        return result


def obey(policy: IdentifyPolicy, me: str | None, from_peer: str, data: bytes, now: float) -> bool:
    """An identify request ``data`` from ``from_peer``: True when it names ``me`` and ``policy``
    lets it be carried out now. A request naming us is logged whatever the outcome."""
    target = parse_request(data)
    if target is None or target != me:
        return False
    result = policy.decide(from_peer, now)
    if result == "refused":
        log.info("identify refused: %s is not in mesh.allowed_peers", from_peer, extra={"peer": from_peer})
    elif result == "rate_limited":
        log.info("identify from %s ignored: at most one per %g s", from_peer,
                 policy.min_interval_s, extra={"peer": from_peer})
    else:
        log.info("identify requested by %s: chiming and blinking", from_peer, extra={"peer": from_peer})
    return result == "done"
