"""Per-stream jitter buffer: pure (no I/O, no clock), driven by explicit times in µs.

Frames are pushed as they arrive (any order, duplicates, bursts) and popped once per frame
period by the playout clock. Playout is ordered by sequence number at a fixed delay:

- **Start**: the first pop at least ``target - frame/2`` after the first frame arrived starts
  playout with the lowest buffered sequence. The playout clock ticks once per frame, so this
  rounds the start to the nearest tick and the mean time a frame waits is the target.
- **Each pop** plays the next sequence number. If it is missing, the pop returns a `Gap`
  (the caller conceals it) and the slot is gone: a frame that arrives after its slot is late
  (dropped, counted), as are duplicates of played frames (counted as duplicates).
- **Underrun**: after more than ``max`` worth of gaps with nothing buffered the stream goes
  quiet (pop returns None) and re-buffers when frames arrive again.
- **Bounds**: the buffer never spans more than ``max`` frames (``jitter_max_ms``): a frame
  further ahead pushes the oldest out (dropped as overflow, counted) and playout jumps
  forward. So a burst is bounded in memory and in added latency.
- **Catch-up**: when more than ``target + 1`` frames stay buffered for ``catchup_pops``
  pops in a row (a burst of frames queued before the stream was accepted, a stall that
  ended), the oldest is skipped, one frame at a time, back towards the target delay.
- **Close**: after `close()` what is buffered plays out; then `drained` becomes true.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from enum import Enum

__all__ = ["Frame", "Gap", "Push", "JitterStats", "JitterBuffer"]


@dataclass(frozen=True, slots=True)
class Frame:
    """A frame to play now."""

    seq: int
    timestamp_us: int
    payload: bytes


@dataclass(frozen=True, slots=True)
class Gap:
    """A missing frame: the caller plays a concealment. ``run`` counts gaps in a row (1, 2, ...)."""

    seq: int
    run: int


class Push(Enum):
    QUEUED = "queued"
    LATE = "late"
    DUPLICATE = "duplicate"
    OVERFLOW = "overflow"  # queued, but older frames were pushed out to keep the bound


@dataclass(frozen=True, slots=True)
class JitterStats:
    pushed: int
    played: int
    concealed: int
    late: int
    duplicates: int
    overflow: int
    skipped: int
    rebuffers: int
    depth: int


class JitterBuffer:
    def __init__(self, *, frame_us: int = 20_000, target_us: int = 40_000, max_us: int = 200_000,
                 catchup_pops: int = 25) -> None:
        if frame_us <= 0 or target_us < 0 or max_us <= 0 or catchup_pops < 1:
            raise ValueError("frame_us, max_us and catchup_pops must be positive, target_us >= 0")
        self.frame_us = frame_us
        self.target_us = target_us
        self.target_frames = max(1, -(-target_us // frame_us))
        self.max_frames = max(self.target_frames + 2, max_us // frame_us)
        self.catchup_pops = catchup_pops
        self._buf: dict[int, tuple[int, bytes]] = {}
        self._next: int | None = None  # next sequence to play (None: nothing played yet)
        self._max_seq: int | None = None
        self._started = False
        self._first_arrival: int | None = None
        self._gap_run = 0
        self._deep_pops = 0
        self._recent: deque[int] = deque(maxlen=self.max_frames)  # recently played, for duplicates
        self._recent_set: set[int] = set()
        self.closed = False
        self.pushed = self.played = self.concealed = self.late = 0
        self.duplicates = self.overflow = self.skipped = self.rebuffers = 0

    # --- state ---------------------------------------------------------------------------
    @property
    def depth(self) -> int:
        """Frames buffered now."""
        return len(self._buf)

    @property
    def playing(self) -> bool:
        return self._started

    @property
    def drained(self) -> bool:
        """Closed and everything buffered has been played (the stream can go)."""
        return self.closed and not self._buf

    def stats(self) -> JitterStats:
        return JitterStats(self.pushed, self.played, self.concealed, self.late, self.duplicates,
                           self.overflow, self.skipped, self.rebuffers, len(self._buf))

    def close(self) -> None:
        """No more frames will come: play out what is buffered, then be `drained`."""
        self.closed = True

    # --- input ---------------------------------------------------------------------------
    def push(self, seq: int, timestamp_us: int, payload: bytes, now_us: int) -> Push:
        """Take one arrived frame."""
        if seq in self._buf or seq in self._recent_set:
            self.duplicates += 1
            return Push.DUPLICATE
        if self._next is not None and seq < self._next:
            self.late += 1
            return Push.LATE
        self.pushed += 1
        self._buf[seq] = (timestamp_us, payload)
        if self._first_arrival is None:
            self._first_arrival = now_us
        if self._max_seq is None or seq > self._max_seq:
            self._max_seq = seq
        return Push.OVERFLOW if self._enforce_bound() else Push.QUEUED

    def _enforce_bound(self) -> bool:
        assert self._max_seq is not None
        low = self._next if self._started and self._next is not None else min(self._buf)
        if self._max_seq - low + 1 <= self.max_frames:
            return False
        new_low = self._max_seq - self.max_frames + 1
        for s in [s for s in self._buf if s < new_low]:
            del self._buf[s]
            self.overflow += 1
        if self._started:
            self._next = new_low
        return True

    # --- output --------------------------------------------------------------------------
    def pop(self, now_us: int) -> Frame | Gap | None:
        """What to play for the frame period starting now: a frame, a gap to conceal, or
        None (the stream is silent: not started, re-buffering, or drained)."""
        if not self._started:
            if not self._buf:
                return None
            assert self._first_arrival is not None
            if not self.closed and now_us - self._first_arrival < self.target_us - self.frame_us // 2:
                return None
            self._started = True
            first = min(self._buf)
            self._next = first if self._next is None else max(self._next, first)
            self._gap_run = 0
            self._deep_pops = 0
        assert self._next is not None
        self._catch_up()
        seq = self._next
        self._next = seq + 1
        item = self._buf.pop(seq, None)
        if item is not None:
            self._gap_run = 0
            self.played += 1
            self._remember(seq)
            return Frame(seq, item[0], item[1])
        if self.closed and not self._buf:
            self._started = False
            return None
        self._gap_run += 1
        if not self._buf and self._gap_run > self.max_frames:
            # Nothing has come for longer than the buffer spans: go quiet, re-buffer later.
            self._started = False
            self._first_arrival = None
            self.rebuffers += 1
            self._next = seq  # frames older than the gap stay late
            return None
        self.concealed += 1
        return Gap(seq, self._gap_run)

    def _catch_up(self) -> None:
        if len(self._buf) > self.target_frames + 1:
            self._deep_pops += 1
            if self._deep_pops >= self.catchup_pops:
                self._deep_pops = 0
                assert self._next is not None
                oldest = min(self._buf)
                if oldest == self._next:
                    del self._buf[oldest]
                    self._remember(oldest)
                    self.skipped += 1
                self._next += 1  # a missing slot at the head is skipped without concealment
        else:
            self._deep_pops = 0

    def _remember(self, seq: int) -> None:
        if len(self._recent) == self._recent.maxlen:
            self._recent_set.discard(self._recent[0])
        self._recent.append(seq)
        self._recent_set.add(seq)
