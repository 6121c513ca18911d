"""The node's outgoing event buffer: bounded, lossless for control events, drop-oldest for audio.

Control events (connections, messages, stream lifecycle) wait for room: a slow application slows
the producers down but never loses one. `AudioData` never waits: when the buffer is full the
oldest queued audio frame is dropped (and counted against its stream), because late audio is
worthless and must not hold up the network.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable

import trio

from ._events import AudioData, Event


class EventQueue:
    def __init__(self, capacity: int, on_audio_drop: Callable[[AudioData], None]) -> None:
        self._capacity = capacity
        self._items: deque[Event] = deque()
        self._audio_count = 0
        self._on_audio_drop = on_audio_drop
        self._not_empty = trio.Event()
        self._not_full = trio.Event()
        self._not_full.set()

    def __len__(self) -> int:
        return len(self._items)

    def _changed(self) -> None:
        if self._items:
            self._not_empty.set()
        elif self._not_empty.is_set():
            self._not_empty = trio.Event()
        if len(self._items) < self._capacity:
            self._not_full.set()
        elif self._not_full.is_set():
            self._not_full = trio.Event()

    async def put(self, event: Event) -> None:
        """Queue a control event, waiting while the buffer is full."""
        while len(self._items) >= self._capacity:
            if self._audio_count:
                # Room for control is made from audio first: audio can always be dropped.
                self._drop_oldest_audio()
                break
            await self._not_full.wait()
        self._items.append(event)
        self._changed()

    def put_audio(self, event: AudioData) -> None:
        """Queue an audio frame without waiting; drop the oldest audio frame when full."""
        if len(self._items) >= self._capacity:
            if self._audio_count:
                self._drop_oldest_audio()
            else:
                self._on_audio_drop(event)  # the buffer is all control events: drop the new frame
                return
        self._items.append(event)
        self._audio_count += 1
        self._changed()

    def _drop_oldest_audio(self) -> None:
        """Drop the oldest frame of the stream with the most frames queued, so a stream sent
        faster than real time pays for its own excess, not the other streams."""
        per_stream: dict[int, int] = {}
        for item in self._items:
            if isinstance(item, AudioData):
                per_stream[item.stream_id] = per_stream.get(item.stream_id, 0) + 1
        victim = max(per_stream, key=per_stream.__getitem__)
        for i, item in enumerate(self._items):
            if isinstance(item, AudioData) and item.stream_id == victim:
                del self._items[i]
                self._audio_count -= 1
                self._on_audio_drop(item)
                return

    async def get(self) -> Event:
        while not self._items:
            await self._not_empty.wait()
        item = self._items.popleft()
        if isinstance(item, AudioData):
            self._audio_count -= 1
        self._changed()
        return item
