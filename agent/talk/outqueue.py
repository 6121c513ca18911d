"""A bounded queue that never makes the producer wait: when full, the oldest item goes.

Between the playout clock and the sink: a sink that stalls (device hiccup, a slow card,
clock drift) costs the oldest audio, counted, and never holds up the network side."""

from __future__ import annotations

from collections import deque
from typing import Generic, TypeVar

import trio

__all__ = ["DropOldestQueue"]

T = TypeVar("T")


class DropOldestQueue(Generic[T]):
    def __init__(self, maxlen: int) -> None:
        if maxlen < 1:
            raise ValueError("maxlen must be >= 1")
        self.maxlen = maxlen
        self._items: deque[T] = deque()
        self._ready = trio.Event()
        self.dropped = 0

    def __len__(self) -> int:
        return len(self._items)

    def put_nowait(self, item: T) -> bool:
        """Add `item`; returns False when the oldest item was dropped to make room."""
        kept = True
        if len(self._items) >= self.maxlen:
            self._items.popleft()
            self.dropped += 1
            kept = False
        self._items.append(item)
        self._ready.set()
        return kept

    async def get(self) -> T:
        while not self._items:
            await self._ready.wait()
            self._ready = trio.Event()
        return self._items.popleft()
