"""Retained messages: the latest signed message per (origin, topic) of the retained topics, and
the wire format that hands them to a newly connected peer (`/avi/retained/1.0.0`), sans-I/O.

A newcomer learns the fleet's state at once instead of after everyone's next periodic message.
The node opens the stream and checks what arrives (signature, seen before, allow list); this
module keeps the messages and turns them into bytes and back.

Wire format: entries of u32 length, u32 age in ms, then a signed pub/sub Message (protobuf), as
GossipSub carried it.
"""

from __future__ import annotations

from collections.abc import Collection, Iterator

from libp2p.pubsub.pb import rpc_pb2

__all__ = ["RETAINED_PROTOCOL_ID", "MAX_RETAINED", "MAX_RETAINED_SYNC_BYTES", "RetainedStore"]

RETAINED_PROTOCOL_ID = "/avi/retained/1.0.0"
MAX_RETAINED = 1024  # messages kept
MAX_RETAINED_SYNC_BYTES = 4 * 1024 * 1024  # bytes handed over (and read) per connection


class RetainedStore:
    """Bounded: at most `limit` messages, the least recently updated dropped first."""

    def __init__(self, topics: Collection[str], *, limit: int = MAX_RETAINED,
                 max_sync_bytes: int = MAX_RETAINED_SYNC_BYTES) -> None:
        self.topics = frozenset(topics)
        self.limit = limit
        self.max_sync_bytes = max_sync_bytes
        self._held: dict[tuple[bytes, str], tuple[rpc_pb2.Message, float]] = {}

    def __len__(self) -> int:
        return len(self._held)

    def keep(self, msg: rpc_pb2.Message, now: float) -> None:
        """Hold `msg` as its origin's latest on each of its retained topics (received at `now`)."""
        for topic in msg.topicIDs:
            if topic in self.topics:
                key = (bytes(msg.from_id), topic)
                self._held.pop(key, None)
                self._held[key] = (msg, now)
                while len(self._held) > self.limit:
                    self._held.pop(next(iter(self._held)))

    def is_news(self, msg: rpc_pb2.Message, topic: str) -> bool:
        """False when we hold the same or a newer message from `msg`'s origin on `topic`."""
        held = self._held.get((bytes(msg.from_id), topic))
        return held is None or held[0].seqno < msg.seqno

    def encode_for(self, peer: bytes, now: float) -> bytes:
        """What to hand to `peer` (its id as bytes) at `now`: every held message but its own,
        oldest first, up to `max_sync_bytes`."""
        out = bytearray()
        for msg, at in list(self._held.values()):
            if bytes(msg.from_id) == peer:
                continue  # its own messages
            body = msg.SerializeToString()
            if len(out) + len(body) + 8 > self.max_sync_bytes:
                break
            age_ms = min(int((now - at) * 1000), 2**32 - 1)
            out += len(body).to_bytes(4, "big") + age_ms.to_bytes(4, "big") + body
        return bytes(out)

    @staticmethod
    def decode(data: bytes, max_message: int) -> Iterator[tuple[rpc_pb2.Message | None, int]]:
        """The entries of `data` as (message, age in ms); None for an entry that does not parse.
        Stops at a truncated entry or one longer than `max_message` bytes."""
        pos = 0
        while pos + 8 <= len(data):
            size, age_ms = int.from_bytes(data[pos:pos + 4], "big"), int.from_bytes(data[pos + 4:pos + 8], "big")
            body = bytes(data[pos + 8:pos + 8 + size])
            pos += 8 + size
            if size > max_message or len(body) < size:
                return
            msg = rpc_pb2.Message()
            try:
                msg.ParseFromString(body)
            except Exception:
                yield None, age_ms
                continue
            yield msg, age_ms
