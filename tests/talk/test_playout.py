"""The adaptive playout on its own: explicit times, no clock, no network. PCM frames carry a
recognisable signal, so what comes out can be checked sample by sample."""

from __future__ import annotations

import numpy as np
import pytest

from agent.measure import spectral_peaks
from agent.talk.codec import make_codec
from agent.talk.playout import AdaptivePlayout, DelayEstimator, Push
from agent.talk.stretch import accelerate, best_period, expand
from hw.audio.base import AudioFormat

FMT = AudioFormat()
F = FMT.frame_us        # 20 ms
N = FMT.frame_samples   # 320


def po(**kw: float) -> AdaptivePlayout:
    return AdaptivePlayout(FMT, lambda c: make_codec(c, FMT), min_delay_us=int(kw.pop("min_delay_us", 40_000)),
                           max_delay_us=int(kw.pop("max_delay_us", 400_000)), **kw)


def ramp_frame(seq: int) -> bytes:
    """Frame ``seq``: every sample holds seq+1 (so frames are told apart, and none is silent)."""
    return np.full(N, 1000 + seq, dtype="<i2").tobytes()


def voiced(n_frames: int, hz: float = 125.0, start: int = 0) -> list[bytes]:
    t = (np.arange(n_frames * N) + start * N) / FMT.rate
    x = 6000 * np.sin(2 * np.pi * hz * t) + 2000 * np.sin(2 * np.pi * 2 * hz * t)
    x = np.rint(x).astype("<i2")
    return [x[i * N:(i + 1) * N].tobytes() for i in range(n_frames)]


def run(p: AdaptivePlayout, arrivals: list[tuple[int, int, bytes]], until_us: int, t0: int = 0,
        close: bool = False) -> list[bytes | None]:
    """Push (arrival_us, seq, payload) in time order, pull every 20 ms from t0 to until_us
    (``close``: the stream closes once the last frame has arrived)."""
    out: list[bytes | None] = []
    i, now = 0, t0
    arrivals = sorted(arrivals)
    while now < until_us:
        while i < len(arrivals) and arrivals[i][0] <= now:
            at, seq, data = arrivals[i]
            p.push(seq, seq * F, data, at)
            i += 1
        if close and i == len(arrivals) and not p.closed:
            p.close()
        got = p.pull(now)
        out.append(None if got is None else got.pcm)
        now += F
    return out


def levels(out: list[bytes | None]) -> list[int]:
    """The frame numbers played, one per pulled frame (-1 for anything not a ramp frame)."""
    res = []
    for o in out:
        if o is None:
            continue
        v = np.frombuffer(o, "<i2")
        res.append(int(v[0]) - 1000 if np.all(v == v[0]) and v[0] >= 1000 else -1)
    return res


def test_clean_link_plays_every_frame_in_order_at_the_lowest_target() -> None:
    p = po()
    arr = [(s * F + 1000, s, ramp_frame(s)) for s in range(100)]
    out = run(p, arr, 100 * F + 200_000, close=True)
    played = levels(out)
    assert played == list(range(100)), played[:20]
    st = p.stats()
    assert st.concealed == st.late == st.lost == 0 and st.stretched_ms == 0
    assert st.target_ms == 40.0  # transit never varied: the lowest target


def test_reordering_within_the_buffer_is_repaired() -> None:
    p = po()
    order = [1, 0, 3, 2, 5, 4, 7, 6, 9, 8]
    arr = [(i * F, s, ramp_frame(s)) for i, s in enumerate(order)]
    out = run(p, arr, 10 * F + 100_000, close=True)
    assert levels(out) == list(range(10))
    assert p.stats().late == 0


def test_duplicates_and_late_frames_are_counted_not_played() -> None:
    p = po()
    assert p.push(0, 0, ramp_frame(0), 0) is Push.QUEUED
    assert p.push(0, 0, ramp_frame(0), 1) is Push.DUPLICATE
    p.push(1, F, ramp_frame(1), F)
    p.push(3, 3 * F, ramp_frame(3), 2 * F)
    for t in range(2, 8):
        p.pull(t * F)
    assert p.push(2, 2 * F, ramp_frame(2), 8 * F) is Push.LATE  # 3 was here: 2 was given up
    st = p.stats()
    assert st.duplicates == 1 and st.late == 1 and st.lost == 1


def stalled(n_speech: int = 60, n_silence: int = 40) -> list[tuple[int, int, bytes]]:
    """Frames 20..34 held back 300 ms (a TCP retransmission timeout), then arriving at once."""
    frames = [ramp_frame(s) for s in range(n_speech)] + [bytes(FMT.frame_bytes)] * n_silence
    return [(max(s * F + 1000, 35 * F) if 20 <= s < 35 else s * F + 1000, s, d) for s, d in enumerate(frames)]


def ramp_values(out: list[bytes | None]) -> list[int]:
    """The ramp frame numbers heard, in order, each once, whatever the frame boundaries: runs of
    at least 40 equal samples (fades and cross-fades change every sample)."""
    x = np.concatenate([np.frombuffer(o, "<i2") for o in out if o is not None])
    edges = np.flatnonzero(np.r_[True, x[1:] != x[:-1], True])
    seen: list[int] = []
    for a, b in zip(edges[:-1], edges[1:]):
        v = int(x[a])
        if b - a >= 40 and v >= 1000 and (not seen or seen[-1] != v - 1000):
            seen.append(v - 1000)
    return seen


def test_a_stall_is_concealed_and_waited_out_so_no_frame_is_cut() -> None:
    """With the default target, one stall is concealed while it lasts, every frame then plays
    whole and in order, and the target has learnt the stall (the next one is ridden out)."""
    p = po()
    out = run(p, stalled(), 100 * F + 300_000, close=True)
    assert [x for x in levels(out) if x >= 0] == list(range(60)), "speech frames were cut or reordered"
    st = p.stats()
    assert st.concealed >= 5 and st.late == 0 and st.lost == 0 and st.overflow == 0
    assert st.accelerated_ms == 0 and st.expanded_ms == 0  # speech untouched
    assert st.target_ms >= 200


def test_after_a_stall_a_low_target_sheds_the_delay_in_silence_and_by_stretching() -> None:
    """A median target (one stall does not raise it): the stall's extra delay is shed again by
    dropping silence and accelerating speech, and nothing is cut: every frame's samples play,
    in order."""
    p = po(quantile=0.5)
    out = run(p, stalled(), 100 * F + 300_000, close=True)
    assert ramp_values(out) == list(range(60)), "speech frames were cut or reordered"
    st = p.stats()
    assert st.late == 0 and st.lost == 0 and st.overflow == 0
    assert st.silence_ms + st.accelerated_ms > 150, st
    assert st.delay_ms <= 100, st


def test_target_follows_stalls_up_and_comes_back_down() -> None:
    est = DelayEstimator(min_us=40_000, max_us=400_000, forget_s=4.0)
    t = 0
    for s in range(1500):  # 30 s with a 200 ms stall every second
        at = s * F + 1000
        if s % 50 in range(40, 50):
            at = (s // 50) * 50 * F + 50 * F + 1000
        est.add(at, s * F)
    high = est.target_us
    assert 150_000 <= high <= 400_000, high
    for s in range(1500, 1500 + 1000):  # 20 s clean
        est.add(s * F + 1000, s * F)
    assert est.target_us == 40_000, est.target_us


def lossy_tcp(n: int, rare_ms: int, rare_at: int = 77) -> list[tuple[int, int, bytes]]:
    """Talk over a lossy TCP link, in order: 1 frame in 20 one retransmission timeout late
    (25 ms), 1 in 150 a doubled one (``rare_ms``: the retransmission was lost too; the first
    at frame ``rare_at``); 0.8 s of speech, then 0.3 s of pause, repeated."""
    speech = voiced(n)
    out, last = [], 0
    for s in range(n):
        d = 1000
        if s % 20 == 7:
            d = 25_000
        if s % 150 == rare_at:
            d = rare_ms * 1000
        last = max(last, s * F + F + d)  # TCP: nothing overtakes a late frame
        out.append((last, s, speech[s] if s % 55 < 40 else bytes(FMT.frame_bytes)))
    return out


def concealed_between(p: AdaptivePlayout, arrivals: list[tuple[int, int, bytes]], t1: int, t2: int) -> int:
    i, now, at_t1 = 0, 0, 0
    while now <= t2:
        while i < len(arrivals) and arrivals[i][0] <= now:
            at, seq, data = arrivals[i]
            p.push(seq, seq * F, data, at)
            i += 1
        p.pull(now)
        if now == t1:
            at_t1 = p.stats().concealed
        now += F
    return p.stats().concealed - at_t1


def test_the_margin_covers_rare_doubled_retransmission_stalls_once_the_link_is_learnt() -> None:
    """The 99th percentile learns the common stalls; the default margin also covers the rare
    ones twice as long, which come too seldom to be learnt (with a 10 ms margin each conceals
    in the middle of speech: the replayed 5 % loss traces lost ~1 PESQ to them)."""
    arrivals = lossy_tcp(1500, rare_ms=45)
    assert concealed_between(po(), arrivals, 5_000_000, 1400 * F) == 0
    assert concealed_between(po(margin_us=10_000), arrivals, 5_000_000, 1400 * F) >= 5


def test_speech_is_accelerated_with_its_pitch_kept_when_the_buffer_is_far_too_deep() -> None:
    p = po(max_delay_us=600_000)
    frames = voiced(80)
    # 400 ms of frames all at once, then the rest on time: far deeper than the 40 ms target
    arr = [(max(s * F, 20 * F), s, f) for s, f in enumerate(frames)]
    out = run(p, arr, 120 * F, t0=20 * F, close=True)
    st = p.stats()
    assert st.accelerated_ms > 40, st
    assert st.concealed == 0 and st.late == 0
    played = np.concatenate([np.frombuffer(o, "<i2") for o in out if o is not None]).astype(float)
    seg = played[N * 10:N * 30]
    peak = spectral_peaks(seg, FMT.rate, k=1)[0][0]
    assert abs(peak - 125) < 10, f"pitch moved to {peak:.0f} Hz"


def test_a_long_outage_rebuffers_and_stale_frames_become_late() -> None:
    p = po(max_delay_us=200_000)
    arr = [(s * F, s, ramp_frame(s)) for s in range(10)]
    run(p, arr, 10 * F)
    for t in range(10, 40):  # 600 ms with nothing
        p.pull(t * F)
    assert not p.playing and p.stats().rebuffers == 1
    p.push(30, 30 * F, ramp_frame(30), 40 * F)
    out = run(p, [], 70 * F, t0=41 * F)  # it came 200 ms late: the target went up, so it waits longer
    assert 30 in levels(out)


def test_close_plays_out_what_is_buffered_then_drains() -> None:
    p = po()
    for s in range(5):
        p.push(s, s * F, ramp_frame(s), 0)
    p.close()
    got = [p.pull(t * F) for t in range(8)]
    assert levels([g.pcm if g else None for g in got]) == [0, 1, 2, 3, 4]
    assert p.drained


def test_timestamps_of_played_audio_are_reported() -> None:
    p = po()
    for s in range(5):
        p.push(s, 1_000_000 + s * F, ramp_frame(s), 0)
    p.close()
    got = [p.pull(t * F) for t in range(5)]
    assert [g.timestamp_us for g in got if g] == [1_000_000 + s * F for s in range(5)]


def test_bad_settings_are_refused() -> None:
    with pytest.raises(ValueError):
        po(min_delay_us=100_000, max_delay_us=50_000)
    with pytest.raises(ValueError):
        DelayEstimator(min_us=0, max_us=100, quantile=1.5)


# --- time-stretching ---------------------------------------------------------------------------

def test_accelerate_and_expand_remove_and_add_one_pitch_period() -> None:
    x = np.frombuffer(b"".join(voiced(2, hz=100.0)), "<i2")  # 640 samples, period 160
    p, c = best_period(x, FMT.rate)
    assert abs(p - 160) <= 2 and c > 0.95
    shorter, removed = accelerate(x, FMT.rate)
    longer, added = expand(x, FMT.rate)
    assert removed == added == p and len(shorter) == 640 - p and len(longer) == 640 + p
    # no click at the joins: neighbouring samples stay as close as in the original
    step = np.abs(np.diff(x.astype(float))).max()
    for y in (shorter, longer):
        assert np.abs(np.diff(y.astype(float))).max() <= step * 1.2


def test_loud_noise_is_not_stretched() -> None:
    rng = np.random.default_rng(1)
    x = np.rint(rng.normal(0, 5000, 640)).astype(np.int16)
    assert accelerate(x, FMT.rate)[1] == 0 and expand(x, FMT.rate)[1] == 0


def test_a_stream_that_starts_from_the_last_streams_estimate_rides_out_its_first_stalls() -> None:
    """The engine hands a new stream the delay estimate of the last stream from the same peer:
    over the same lossy link the new stream starts at the learnt target and does not conceal
    the first stalls that a fresh stream conceals while it learns them."""
    arrivals = lossy_tcp(600, rare_ms=45, rare_at=3)  # a long stall before the first short one
    first = po()
    concealed_between(first, arrivals, 0, 550 * F)
    learnt = first.target_us
    assert learnt >= 60_000, learnt
    fresh, informed = po(), po(prior=first.estimator)
    assert informed.target_us == learnt and fresh.target_us == 40_000
    assert concealed_between(fresh, arrivals, 0, 550 * F) >= 1 + concealed_between(informed, arrivals, 0, 550 * F)
    # another resolution of histogram: nothing carried over
    other = DelayEstimator(min_us=40_000, max_us=400_000, bucket_us=5_000)
    other.learn_from(first.estimator)
    assert other.target_us == 40_000


# --- DTX gaps: a talker's gap marker (empty payload), then nothing until speech comes back -----

def talk_with_gap(gap_frames: int, *, before: int = 10, after: int = 10, transit_us: int = 5_000,
                  late_us: int = 0) -> list[tuple[int, int, int, bytes]]:
    """(arrival, seq, timestamp, payload): ramp frames 0..before-1, the gap marker (timestamp of
    the first silent slot), then ramp frames ``before``.. with timestamps ``gap_frames`` later;
    ``late_us``: the frames after the gap are held back that long more (a stall)."""
    out = [(s * F + transit_us, s, s * F, ramp_frame(s)) for s in range(before)]
    out.append((before * F + transit_us, before, before * F, b""))
    held = 0
    for k in range(after):
        ts = (before + gap_frames + k) * F
        held = max(held, ts + transit_us + (late_us if k == 0 else 0))  # TCP: in order
        out.append((held, before + 1 + k, ts, ramp_frame(before + k)))
    return sorted(out)


def run_ts(p: AdaptivePlayout, arrivals: list[tuple[int, int, int, bytes]], until_us: int,
           close: bool = True) -> list[tuple[int, bytes | None, int | None]]:
    """Push (arrival, seq, ts, payload) in time order, pull every 20 ms: (pull time, pcm, ts)."""
    out: list[tuple[int, bytes | None, int | None]] = []
    i, now = 0, 0
    while now < until_us:
        while i < len(arrivals) and arrivals[i][0] <= now:
            at, seq, ts, data = arrivals[i]
            p.push(seq, ts, data, at)
            i += 1
        if close and i == len(arrivals) and not p.closed:
            p.close()
        got = p.pull(now)
        out.append((now, None if got is None else got.pcm, None if got is None else got.timestamp_us))
        now += F
    return out


def delays(out: list[tuple[int, bytes | None, int | None]]) -> dict[int, int]:
    """Capture timestamp of each played frame -> pull time minus it (the playout's delay)."""
    return {ts: t - ts for t, _, ts in out if ts is not None}


def test_a_dtx_gap_plays_as_silence_and_speech_after_it_plays_at_its_timestamp() -> None:
    p = po()
    gap = 50  # 1 s: longer than max_delay, which a stall would have ended in a rebuffer
    out = run_ts(p, talk_with_gap(gap), (10 + gap + 10) * F + 300_000)
    assert levels([o for _, o, _ in out]) == [*range(10)] + [-1] * gap + [*range(10, 20)] or \
        ramp_values([o for _, o, _ in out]) == list(range(20))
    d = delays(out)
    before = {d[s * F] for s in range(10)}
    after = {d[(10 + gap + k) * F] for k in range(10)}
    assert len(before) == 1 and after == before, (before, after)  # the same delay on both sides
    st = p.stats()
    assert st.concealed == st.lost == st.late == st.rebuffers == 0
    assert st.gap_ms == gap * F / 1000  # exactly the talker's silence
    # the silence is silence
    silent = [o for t, o, ts in out if o is not None and ts is None]
    assert len(silent) == gap and all(not any(o) for o in silent)


def test_speech_late_after_a_gap_starts_at_once_and_nothing_is_concealed() -> None:
    p = po()
    gap, late = 20, 200_000
    arr = talk_with_gap(gap, late_us=late)
    out = run_ts(p, arr, (10 + gap + 10) * F + 600_000)
    assert ramp_values([o for _, o, _ in out]) == list(range(20))
    first_after = (10 + gap) * F
    arrival = next(a for a, _, ts, _ in arr if ts == first_after)
    played_at = min(t for t, _, ts in out if ts == first_after)
    assert arrival <= played_at < arrival + F  # at the first pull after it arrived
    st = p.stats()
    assert st.concealed == 0 and st.rebuffers == 0
    assert st.gap_ms >= gap * F / 1000  # the wait for it was played as the gap's silence


def test_a_gap_sheds_excess_delay_and_a_gap_at_the_end_drains() -> None:
    # A stall at the start makes the buffer deep (300 ms); with a short memory the target comes
    # back down before the gap, and the delay still held in excess is shed in the gap's silence.
    p = po(forget_s=0.3)
    n, gap = 100, 25
    arr = [(max(s * F + 5_000, 15 * F + 5_000), s, s * F, voiced(1, start=s)[0]) for s in range(n)]
    arr.append((n * F + 5_000, n, n * F, b""))
    arr += [((n + gap + k) * F + 5_000, n + 1 + k, (n + gap + k) * F, voiced(1, start=n + k)[0]) for k in range(20)]
    arr.append(((n + gap + 20) * F + 5_000, n + 21, (n + gap + 20) * F, b""))  # a gap, then the close
    out = run_ts(p, sorted(arr), (n + gap + 40) * F + 800_000)
    played = [(ts, t - ts) for t, _, ts in out if ts is not None]
    before = [dl for ts, dl in played if ts < n * F][-1]
    after = next(dl for ts, dl in played if ts >= (n + gap) * F)
    assert after < before - F, (before, after)  # the gap was cut short
    assert after >= p.stats().target_ms * 1000 - F  # ... not below what the link needs
    st = p.stats()
    assert st.concealed <= 16 and st.rebuffers == 0  # (the stall at the start, not the gaps)
    assert p.drained  # closed in a gap: drained, nothing waits for a packet that will not come


def test_gap_markers_do_not_count_as_audio_or_teach_the_packet_length() -> None:
    p = po()
    p.push(0, 0, ramp_frame(0), 1_000)
    p.push(1, F, b"", 1_000 + F)
    assert p.delay_us() == F  # the marker is no audio
    p.push(2, 9 * F, ramp_frame(1), 1_000 + 9 * F)  # 160 ms later: a gap, not a 160 ms packet
    assert p.delay_us() == 2 * F
