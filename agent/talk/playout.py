"""Adaptive playout of one incoming stream (in the spirit of WebRTC's NetEQ). Pure: no I/O, no
clock; every call takes the time in µs.

Frames (encoded packets) are pushed as they arrive; the playout clock pulls one frame period
of PCM at a time. Between the two sit a packet buffer (by sequence number), the stream's decoder
and a *sync buffer* of decoded samples not played yet, so decoded audio can be played faster or
slower than it came.

- **Target delay** follows the stream's measured arrival delays: each packet's transit time
  (arrival minus capture timestamp; the clocks' offset cancels) minus the fastest of the last
  few seconds goes into a histogram that forgets (about ``forget_s``); the target is its
  ``quantile`` (99 %) plus a margin, within [``min_delay``, ``max_delay``]. Low on a clean link,
  deeper while stalls happen, back down once they stop.
- **Changing the delay** never cuts speech: when the buffer holds more than the target, decoded
  speech is *accelerated* (one pitch period removed, `stretch.accelerate`) and silence is
  dropped; when it holds less, speech is *expanded* (one period played twice) and silence
  repeated. The time gained or lost is counted (``stretched_ms``).
- **A missing frame** when later ones are here is lost: concealed (Opus recovers it from the
  next packet's FEC, or uses its own PLC) and its slot passes. When *nothing* is here (a TCP
  retransmission stall), the playout conceals while it waits and the slot stays open: the frame
  is played when it arrives, so nothing is cut, and the delay the stall added is then shed by
  accelerating. A frame arriving after its slot passed is late (dropped, counted).
- **Bounds**: the packet buffer never holds more than ``max_delay`` of audio; beyond it the
  oldest packets are dropped (counted as overflow: only after an outage longer than the
  buffer). After ``max_delay`` of waiting with nothing arriving the stream goes quiet and
  re-buffers when frames come again.
- **Gaps (DTX)**: a packet with an empty payload is a talker's gap marker (dtx.py): the talker
  sends nothing more until speech comes back. From the marker's slot the playout plays silence,
  which is neither concealment nor a stall (nothing counted, no rebuffering, nothing fed to the
  delay estimate, whose transit-based samples do not see the gap anyway), and the first packet
  after the gap plays at its capture timestamp: the silence lasts exactly as long as the
  talker's did. Only if more than the target (with the hysteresis silence is dropped with:
  ``max(target, 0.75 target + one packet)``) is already buffered by then, or playing it at
  its timestamp would put it more than ``max_delay`` behind the fastest transit seen, the
  silence is cut short there (excess delay is shed where it costs nothing). A gap never
  lengthens: replayed rig traces scored worse when gaps deepened the buffer (the timeline of
  the speech moves; bench/playout_replay.py). A packet after the gap that is late starts at
  once (the delay grows as after a stall, and is shed later). Silence played in gaps is
  counted in ``gap_ms``.
- **Close**: after `close()` what is buffered plays out; then `drained` is true.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum

import numpy as np

from hw.audio.base import AudioFormat

from .codec import Codec, CodecError
from .stretch import SILENCE_RMS, accelerate, expand, rms

__all__ = ["AdaptivePlayout", "DelayEstimator", "PlayoutStats", "Pulled", "Push"]


class Push(Enum):
    QUEUED = "queued"
    LATE = "late"
    DUPLICATE = "duplicate"
    OVERFLOW = "overflow"  # queued, but the oldest packets were dropped to keep the bound


@dataclass(frozen=True, slots=True)
class Pulled:
    """One frame period of PCM; ``timestamp_us`` is the capture time of its first sample when
    that sample is real (decoded) audio, None when it is concealment."""

    pcm: bytes
    timestamp_us: int | None


@dataclass(frozen=True, slots=True)
class PlayoutStats:
    pushed: int
    decoded: int          # frame periods of decoded audio played (a 40 ms packet is 2)
    concealed: int        # frame periods of concealment (lost frames and stalls)
    lost: int             # frames given up on (later frames were here): concealed or FEC'd
    late: int
    duplicates: int
    overflow: int
    rebuffers: int
    accelerated_ms: float  # speech shortened by
    expanded_ms: float     # speech lengthened by
    silence_ms: float      # silence dropped or inserted
    delay_ms: float        # current buffer delay (packets + decoded, not yet played)
    target_ms: float       # current target delay
    gap_ms: float = 0.0    # silence played for the talker's DTX gaps (not concealment)

    @property
    def stretched_ms(self) -> float:
        return self.accelerated_ms + self.expanded_ms + self.silence_ms


class DelayEstimator:
    """Target delay from the arrival-delay distribution of one stream (explicit times, µs).

    Relative delay of a packet = its transit (arrival - capture timestamp) minus the smallest
    transit of the last ``base_window_us``. The relative delays go into a histogram of
    ``bucket_us`` buckets that decays by ``forget`` per packet; the target is the ``quantile``
    of that histogram plus ``margin_us``, clamped to [min_us, max_us]."""

    def __init__(self, *, min_us: int, max_us: int, quantile: float = 0.95, bucket_us: int = 10_000,
                 forget_s: float = 6.0, packet_us: int = 20_000, margin_us: int = 10_000,
                 base_window_us: int = 4_000_000) -> None:
        if not 0 < quantile < 1 or min_us < 0 or max_us < min_us or bucket_us <= 0:
            raise ValueError("need 0 < quantile < 1 and 0 <= min_us <= max_us, bucket_us > 0")
        self.min_us, self.max_us, self.quantile = min_us, max_us, quantile
        self.bucket_us, self.margin_us = bucket_us, margin_us
        self.base_window_us = base_window_us
        self.forget = float(np.exp(-packet_us / (forget_s * 1e6)))
        self._hist = np.zeros(max_us // bucket_us + 2)
        self._base: deque[tuple[int, int]] = deque()  # (arrival, transit), increasing transit
        self.samples = 0

    def add(self, arrival_us: int, timestamp_us: int) -> None:
        transit = arrival_us - timestamp_us
        base = self._base
        while base and base[-1][1] >= transit:  # monotonic deque: the window's minimum in front
            base.pop()
        base.append((arrival_us, transit))
        while base[0][0] < arrival_us - self.base_window_us:
            base.popleft()
        rel = transit - base[0][1]
        b = min(len(self._hist) - 1, max(0, rel) // self.bucket_us)
        self._hist *= self.forget
        self._hist[b] += 1.0 - self.forget
        self.samples += 1

    def learn_from(self, other: "DelayEstimator") -> None:
        """Start from what an earlier stream over the same link learnt: its arrival-delay
        histogram (delays beyond this estimator's range count in its last bucket). The base
        transit is not carried over: it is measured again from this stream's packets."""
        if other.bucket_us != self.bucket_us:
            return  # another resolution: nothing comparable to carry over
        n = min(len(self._hist), len(other._hist))
        hist = np.zeros_like(self._hist)
        hist[:n] = other._hist[:n]
        hist[-1] += other._hist[n:].sum()
        self._hist = hist

    @property
    def base_transit_us(self) -> int:
        """The fastest transit (arrival - capture timestamp, clocks' offset included) of the
        last ``base_window_us``; 0 before the first packet."""
        return self._base[0][1] if self._base else 0

    @property
    def target_us(self) -> int:
        total = self._hist.sum()
        if total <= 0:
            return self.min_us
        cum = np.cumsum(self._hist) / total
        b = int(np.searchsorted(cum, self.quantile))
        t = (b + 1) * self.bucket_us + self.margin_us
        return int(min(self.max_us, max(self.min_us, t)))


# Added to the target's quantile. The target counts the packet being played (40 ms for Opus), so a
# small margin leaves almost no room for a packet that is late. Over TCP, a 5 % lossy link's
# stalls are mostly one retransmission timeout (20-30 ms with the 20 ms minimum RTO), which the
# 99th percentile learns; the rarer ones where the retransmission is lost too (RTO doubled:
# 45-65 ms) come too seldom to be learnt and each cost a concealment in the middle of speech.
# Replayed through the playout (bench/playout_replay.py, delays measured on the rig by
# bench/tcp_thin.py, 8 talks each): PESQ-WB 3.28 -> 4.27 at 5 % loss and 3.13 -> 4.27 at 10 %
# with 30 ms instead of 10, mouth-to-ear p50 +4 / +12 ms; a clean link (jitter < 10 ms) keeps
# the lowest target.
MARGIN_US = 30_000


class AdaptivePlayout:
    """One incoming stream: ``push`` arrived frames, ``pull`` one frame period at a time.

    ``make_decoder(codec_id)`` builds the stream's decoder (again when the codec changes)."""

    LEVEL_ALPHA = 0.15  # smoothing of the buffer level the stretch decisions look at
    # Speech is accelerated only when the buffer is this much deeper than wanted; a smaller
    # excess waits for a pause, where dropping silence does not disturb the speech's timeline
    # (time-scaled speech costs PESQ and STOI far more than a slightly later pause).
    SPEECH_EXCESS_US = 80_000
    GAP_LOW = 0.75  # a gap is cut short above max(target, GAP_LOW * target + one packet)

    def __init__(self, fmt: AudioFormat, make_decoder: Callable[[int], Codec], *,
                 min_delay_us: int = 20_000, max_delay_us: int = 400_000,
                 quantile: float = 0.99, forget_s: float = 6.0, margin_us: int = MARGIN_US,
                 prior: DelayEstimator | None = None) -> None:
        if min_delay_us < 0 or max_delay_us < max(min_delay_us, fmt.frame_us):
            raise ValueError("need 0 <= min_delay_us <= max_delay_us and max_delay_us >= one frame")
        self.format = fmt
        self._make_decoder = make_decoder
        self._decoder: Codec | None = None
        self._codec: int | None = None
        self.min_delay_us, self.max_delay_us = min_delay_us, max_delay_us
        self.estimator = DelayEstimator(min_us=min_delay_us, max_us=max_delay_us, quantile=quantile,
                                        forget_s=forget_s, packet_us=fmt.frame_us, margin_us=margin_us)
        if prior is not None:  # the last stream from the same peer: its link's delays, learnt
            self.estimator.learn_from(prior)
        self._ch = fmt.channels
        self._fs = fmt.frame_samples
        self._us_per_sample = 1e6 / fmt.rate
        self._packets: dict[int, tuple[int, bytes, int]] = {}  # seq -> (timestamp, payload, codec)
        self._packet_us: int = fmt.frame_us                       # duration of one packet, learnt
        self._next: int | None = None
        self._max_seq: int | None = None
        self._started = False
        self._first_arrival: int | None = None
        self._sync = np.zeros(0, dtype=np.int16)                  # decoded, interleaved
        self._segs: deque[list[int | None]] = deque()             # [samples per channel, ts or None]
        self._wait_us = 0                                         # concealed while stalled
        self._markers: set[int] = set()                           # buffered gap markers (seq)
        self._gap: tuple[int, float] | None = None                # in a gap: (marker ts, its play time)
        self.gaps = 0
        self.gap_us = 0.0
        self._level: float | None = None
        self._recent: deque[int] = deque(maxlen=256)
        self._recent_set: set[int] = set()
        self.closed = False
        self.pushed = self.decoded = self.concealed = self.lost = self.late = 0
        self.duplicates = self.overflow = self.rebuffers = 0
        self.accelerated_us = self.expanded_us = self.silence_us = 0.0

    # --- state -------------------------------------------------------------------------------
    @property
    def codec(self) -> int | None:
        """The codec id of the frames being decoded (None before the first frame)."""
        return self._codec

    @property
    def playing(self) -> bool:
        return self._started

    @property
    def drained(self) -> bool:
        return self.closed and not self._packets and self._sync.size == 0

    @property
    def depth(self) -> int:
        return len(self._packets)

    @property
    def target_us(self) -> int:
        return self.estimator.target_us

    def delay_us(self) -> float:
        """Audio buffered and not played yet: decoded samples plus packets."""
        return self._sync_us() + (len(self._packets) - len(self._markers)) * self._packet_us

    def _sync_us(self) -> float:
        return self._sync.size / self._ch * self._us_per_sample

    def stats(self) -> PlayoutStats:
        return PlayoutStats(self.pushed, self.decoded, self.concealed, self.lost, self.late,
                            self.duplicates, self.overflow, self.rebuffers,
                            self.accelerated_us / 1000, self.expanded_us / 1000, self.silence_us / 1000,
                            self.delay_us() / 1000, self.target_us / 1000, self.gap_us / 1000)

    def close(self) -> None:
        self.closed = True

    # --- input -------------------------------------------------------------------------------
    def push(self, seq: int, timestamp_us: int, payload: bytes, now_us: int, codec: int = 1) -> Push:
        if seq in self._packets or seq in self._recent_set:
            self.duplicates += 1
            return Push.DUPLICATE
        if self._next is not None and seq < self._next:
            self.late += 1
            return Push.LATE
        self.pushed += 1
        self.estimator.add(now_us, timestamp_us)
        if self._max_seq is not None and seq == self._max_seq + 1 and payload:
            prev = self._packets.get(self._max_seq)
            if prev is not None and prev[1] and 0 < timestamp_us - prev[0] <= 200_000:
                self._packet_us = timestamp_us - prev[0]  # 20 ms, or 40 ms for Opus 40 ms packets
        self._packets[seq] = (timestamp_us, payload, codec)
        if not payload:
            self._markers.add(seq)
        if self._first_arrival is None:
            self._first_arrival = now_us
        if self._max_seq is None or seq > self._max_seq:
            self._max_seq = seq
        return Push.OVERFLOW if self._enforce_bound() else Push.QUEUED

    def _enforce_bound(self) -> bool:
        limit = max(2, self.max_delay_us // self._packet_us + 1)
        dropped = False
        while len(self._packets) > limit:
            oldest = min(self._packets)
            del self._packets[oldest]
            self._markers.discard(oldest)
            self._remember(oldest)
            self.overflow += 1
            dropped = True
            if self._next is not None and self._next <= oldest:
                self._next = oldest + 1
        return dropped

    # --- output ------------------------------------------------------------------------------
    def pull(self, now_us: int) -> Pulled | None:
        """One frame period of PCM, or None when the stream is silent (not started, re-buffering
        after a long outage, or drained)."""
        want = self._fs * self._ch
        if not self._started:
            if not self._packets:
                if self.closed and self._sync.size:
                    return self._take(want)  # the tail after close
                return None
            assert self._first_arrival is not None
            buffered = len(self._packets) * self._packet_us
            waited = now_us - self._first_arrival
            if not self.closed and buffered < self.target_us and waited < self.target_us:
                return None
            self._started = True
            first = min(self._packets)
            self._next = first if self._next is None else max(self._next, first)
            self._wait_us = 0
        while self._sync.size < want:
            if not self._produce(now_us):
                break
        if self._sync.size == 0:
            return None
        return self._take(want)

    def _produce(self, now_us: int) -> bool:
        """Append decoded or concealed audio to the sync buffer; False when there is nothing more
        to play (closed and empty, or gone quiet)."""
        assert self._next is not None
        if self._gap is not None:
            return self._produce_gap(now_us)
        item = self._packets.pop(self._next, None)
        if item is not None:
            ts, payload, codec = item
            self._remember(self._next)
            self._next += 1
            self._wait_us = 0
            if not payload:  # the talker's gap marker: silence until the next packet's timestamp
                self._markers.discard(self._next - 1)
                self._gap = (ts, now_us + self._sync_us())
                self.gaps += 1
                return self._produce_gap(now_us)
            dec = self._decoder_for(codec)
            try:
                pcm = np.frombuffer(dec.decode(payload), dtype="<i2")
            except CodecError:
                self.lost += 1
                self._conceal(None)
                return True
            self.decoded += max(1, round(pcm.size / self._ch / self._fs))  # in frame periods
            self._append(self._stretch(pcm), ts)
            return True
        if self.closed and not self._packets:
            self._started = False
            return False
        if self._packets:  # later frames are here: this one is lost, conceal (FEC) and move on
            nxt = self._packets.get(self._next + 1)
            self._next += 1
            self.lost += 1
            self._conceal(nxt[1] if nxt is not None and nxt[2] == self._codec else None)
            return True
        # nothing here: a stall. Conceal while waiting for it, up to max_delay, then go quiet.
        if self._wait_us >= self.max_delay_us:
            self._started = False
            self._gap = None
            self._first_arrival = None
            self.rebuffers += 1
            return False
        self._wait_us += self.format.frame_us
        self._conceal(None)
        return True

    def _produce_gap(self, now_us: int) -> bool:
        """In a gap: append silence up to the next packet's slot (its timestamp after the
        marker's, from the marker's play time); False when closed with nothing left."""
        assert self._gap is not None and self._next is not None
        ts0, at0 = self._gap
        pos = now_us + self._sync_us()  # when the next appended sample plays
        nxt = self._packets.get(self._next)
        n = self._fs
        if nxt is not None:
            due = at0 + (nxt[0] - ts0)
            buffered = self.delay_us() - self._sync_us()
            over = pos - nxt[0] - self.estimator.base_transit_us  # its delay over the fastest, if now
            target = self.target_us
            high = max(target, self.GAP_LOW * target + self._packet_us)  # as for dropping silence
            if pos >= due - self._us_per_sample / 2 or buffered > high or over > self.max_delay_us:
                self._gap = None  # at its timestamp; or earlier, shedding delay in silence
                return True
            n = max(1, min(n, round((due - pos) / self._us_per_sample)))
        elif self._packets:  # the packet after the marker never came (dropped): go on with the rest
            self._gap = None
            return True
        elif self.closed:
            self._gap = None
            self._started = False
            return False
        self.gap_us += n * self._us_per_sample
        self._append(np.zeros(n * self._ch, dtype=np.int16), None)
        return True

    def _decoder_for(self, codec: int) -> Codec:
        if self._decoder is None or codec != self._codec:
            self._decoder = self._make_decoder(codec)  # raises CodecError for an unknown codec
            self._codec = codec
        return self._decoder

    def _conceal(self, next_payload: bytes | None) -> None:
        self.concealed += 1
        if self._decoder is None:
            pcm = np.zeros(self._fs * self._ch, dtype=np.int16)
        else:
            pcm = np.frombuffer(self._decoder.conceal(next_payload), dtype="<i2")
        self._append(pcm, None)

    def _stretch(self, pcm: np.ndarray) -> np.ndarray:
        """Accelerate or expand one decoded packet towards the target delay."""
        level = self.delay_us() + pcm.size / self._ch * self._us_per_sample
        self._level = level if self._level is None else \
            self._level + self.LEVEL_ALPHA * (level - self._level)
        target = self.target_us
        low = 0.75 * target
        high = max(target, low + self._packet_us)
        rate = self.format.rate
        silent = rms(pcm) < SILENCE_RMS
        before = pcm.size // self._ch
        if self._level > high and level > high:
            if silent and level - before * self._us_per_sample >= target:
                self.silence_us += before * self._us_per_sample
                self._level -= before * self._us_per_sample
                return pcm[:0]  # drop silence outright
            if not silent and self._level < high + self.SPEECH_EXCESS_US:
                return pcm  # a little too deep: wait for the next pause rather than touch speech
            out, removed = accelerate(pcm, rate, self._ch)
            if removed and self._level > 2 * high + self.SPEECH_EXCESS_US:
                out, more = accelerate(out, rate, self._ch)  # far too deep: a second period
                removed += more
            if removed:
                self._level -= removed * self._us_per_sample
                if silent:
                    self.silence_us += removed * self._us_per_sample
                else:
                    self.accelerated_us += removed * self._us_per_sample
            return out
        if self._level < low and level < low and silent:
            # Deeper wanted: lengthen a pause. Speech is not expanded ahead of need (a stall on
            # TCP ends in a burst that refills the buffer); a buffer that runs dry conceals and
            # waits, which deepens it by the time waited.
            self.silence_us += before * self._us_per_sample
            self._level += before * self._us_per_sample
            return np.concatenate([pcm, pcm])
        return pcm

    def _append(self, pcm: np.ndarray, ts: int | None) -> None:
        if pcm.size == 0:
            return
        self._sync = np.concatenate([self._sync, pcm]) if self._sync.size else pcm.copy()
        self._segs.append([pcm.size // self._ch, ts])

    def _take(self, want: int) -> Pulled:
        out = self._sync[:want]
        self._sync = self._sync[want:]
        ts = self._segs[0][1] if self._segs else None
        left = out.size // self._ch
        while left and self._segs:
            seg = self._segs[0]
            n = int(seg[0])  # type: ignore[arg-type]
            if n <= left:
                left -= n
                self._segs.popleft()
            else:
                seg[0] = n - left
                if seg[1] is not None:
                    seg[1] = int(seg[1]) + int(left * self._us_per_sample)
                left = 0
        if out.size < want:  # the tail of a closed stream
            out = np.concatenate([out, np.zeros(want - out.size, dtype=np.int16)])
        return Pulled(out.astype("<i2").tobytes(), ts)

    def _remember(self, seq: int) -> None:
        if len(self._recent) == self._recent.maxlen:
            self._recent_set.discard(self._recent[0])
        self._recent.append(seq)
        self._recent_set.add(seq)
