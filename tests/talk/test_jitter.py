"""The jitter buffer on its own: explicit times, no clock, no network."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.talk.jitter import Frame, Gap, JitterBuffer, Push

F = 20_000  # one frame, µs


def payload(seq: int) -> bytes:
    return seq.to_bytes(4, "little") * 4


def jb(**kw: int) -> JitterBuffer:
    return JitterBuffer(frame_us=F, target_us=kw.pop("target_us", 40_000), max_us=kw.pop("max_us", 200_000), **kw)


def play(buf: JitterBuffer, t0: int, n: int) -> list[Frame | Gap | None]:
    return [buf.pop(t0 + i * F) for i in range(n)]


def seqs(slots: list[Frame | Gap | None]) -> list[object]:
    return [s.seq if isinstance(s, Frame) else ("gap" if isinstance(s, Gap) else None) for s in slots]


def test_waits_for_the_target_delay_then_plays_in_order() -> None:
    b = jb()
    b.push(0, 1000, payload(0), now_us=0)
    assert b.pop(0) is None and b.pop(F // 2) is None  # still filling
    b.push(1, 21000, payload(1), now_us=F)
    got = b.pop(40_000)
    assert isinstance(got, Frame) and got.seq == 0 and got.payload == payload(0) and got.timestamp_us == 1000
    assert b.playing and b.played == 1


def test_start_is_rounded_to_the_nearest_tick() -> None:
    b = jb()
    b.push(0, 0, payload(0), now_us=0)
    assert b.pop(29_999) is None  # target 40 ms - half a frame = 30 ms
    assert isinstance(b.pop(30_000), Frame)


def test_reordering_within_the_target_is_repaired() -> None:
    b = jb()
    order = [1, 0, 3, 2, 5, 4, 7, 6]
    for i, s in enumerate(order):
        assert b.push(s, s * F, payload(s), now_us=i * F) is Push.QUEUED
    assert seqs(play(b, 40_000, 8)) == list(range(8))
    assert b.late == 0 and b.concealed == 0


def test_loss_is_concealed_and_counted() -> None:
    b = jb()
    for s in [0, 1, 2, 4, 5, 8, 9]:
        b.push(s, s * F, payload(s), now_us=s * F)
    out = play(b, 40_000, 10)
    assert seqs(out) == [0, 1, 2, "gap", 4, 5, "gap", "gap", 8, 9]
    runs = [s.run for s in out if isinstance(s, Gap)]
    assert runs == [1, 1, 2]
    assert b.concealed == 3 and b.played == 7


def test_duplicates_are_ignored_buffered_or_already_played() -> None:
    b = jb()
    assert b.push(0, 0, payload(0), 0) is Push.QUEUED
    assert b.push(0, 0, b"other", 10) is Push.DUPLICATE  # still buffered
    b.push(1, F, payload(1), F)
    first = b.pop(40_000)
    assert isinstance(first, Frame) and first.payload == payload(0)
    assert b.push(0, 0, payload(0), 50_000) is Push.DUPLICATE  # already played
    assert b.duplicates == 2 and b.late == 0
    assert seqs(play(b, 60_000, 2)) == [1, "gap"]


def test_late_frames_are_dropped_and_counted() -> None:
    b = jb()
    b.push(0, 0, payload(0), 0)
    b.push(2, 2 * F, payload(2), 2 * F)
    assert seqs(play(b, 40_000, 2)) == [0, "gap"]  # frame 1 had not come by its slot
    assert b.push(1, F, payload(1), 80_000) is Push.LATE
    assert b.late == 1
    assert seqs(play(b, 80_000, 1)) == [2]


def test_burst_arrival_plays_everything_then_catches_up_to_the_target() -> None:
    """A burst (frames queued while the stream was being accepted, or a stall that ended) is
    played in order, and the extra delay it brings is trimmed back towards the target."""
    b = jb(catchup_pops=5)
    for s in range(8):  # 8 frames arrive at once
        b.push(s, s * F, payload(s), now_us=0)
    t = 40_000
    played: list[int] = []
    for i in range(60):  # then one frame per period, on time
        s = 8 + i
        b.push(s, s * F, payload(s), now_us=t)
        got = b.pop(t)
        assert isinstance(got, Frame)  # no gap ever: nothing was lost
        played.append(got.seq)
        t += F
    assert played == sorted(played) and len(set(played)) == len(played)
    assert b.skipped > 0 and b.concealed == 0 and b.late == 0
    assert b.depth <= b.target_frames + 1, "the burst's extra delay was not trimmed"


def test_bound_holds_under_a_flood_and_playout_jumps_forward() -> None:
    b = jb(max_us=200_000)  # 10 frames
    for s in range(100):
        b.push(s, s * F, payload(s), now_us=0)
        assert b.depth <= b.max_frames
    assert b.overflow == 90
    got = b.pop(100_000)
    assert isinstance(got, Frame) and got.seq == 90  # the newest ten survive
    # started: a frame far ahead pushes the playout forward too
    assert b.push(500, 0, payload(500), 100_000) is Push.OVERFLOW
    assert b.depth <= b.max_frames
    nxt = b.pop(120_000)
    assert isinstance(nxt, Gap) and nxt.seq == 491
    assert b.push(95, 0, payload(95), 120_000) is Push.LATE


def test_underrun_goes_quiet_then_rebuffers() -> None:
    b = jb(max_us=100_000)  # 5 frames
    b.push(0, 0, payload(0), 0)
    out = play(b, 40_000, 10)
    assert seqs(out)[:6] == [0, "gap", "gap", "gap", "gap", "gap"]
    assert out[6] is None and b.rebuffers == 1 and not b.playing
    # the talker comes back: wait for the target again, no late frames, continue in order
    t = 300_000
    b.push(20, 0, payload(20), t)
    assert b.pop(t) is None
    b.push(21, 0, payload(21), t + F)
    assert seqs([b.pop(t + 2 * F), b.pop(t + 3 * F)]) == [20, 21]


def test_close_plays_out_then_drains() -> None:
    b = jb()
    b.push(0, 0, payload(0), 0)
    b.push(1, 0, payload(1), 0)
    b.close()
    assert not b.drained
    # closed: no need to wait for the target
    assert seqs(play(b, 1, 3)) == [0, 1, None]
    assert b.drained


def test_short_stream_closed_before_the_target_still_plays() -> None:
    b = jb()
    b.push(7, 0, payload(7), 0)
    b.close()
    assert seqs([b.pop(1)]) == [7] and b.drained


@pytest.mark.parametrize("bad", [dict(frame_us=0), dict(max_us=0), dict(target_us=-1), dict(catchup_pops=0)])
def test_rejects_bad_settings(bad: dict[str, int]) -> None:
    kw = dict(frame_us=F, target_us=40_000, max_us=200_000, catchup_pops=25) | bad
    with pytest.raises(ValueError):
        JitterBuffer(**kw)


@settings(max_examples=150, deadline=None)
@given(
    order_seed=st.integers(0, 2**32 - 1),
    n=st.integers(1, 120),
    loss=st.floats(0.0, 0.3),
    dup=st.floats(0.0, 0.3),
    max_delay_frames=st.integers(0, 12),
)
def test_invariants_under_random_network(order_seed: int, n: int, loss: float, dup: float,
                                         max_delay_frames: int) -> None:
    """Whatever the network does: bounded, in order, never a frame twice, every frame accounted for."""
    rng = random.Random(order_seed)
    b = jb(max_us=200_000)
    arrivals: list[tuple[int, int]] = []  # (arrival time, seq)
    for s in range(n):
        if rng.random() < loss:
            continue
        arrivals.append((s * F + rng.randint(0, max_delay_frames) * F + rng.randint(0, F - 1), s))
        if rng.random() < dup:
            arrivals.append((s * F + rng.randint(0, max_delay_frames + 2) * F, s))
    arrivals.sort()
    played: list[int] = []
    t, i = 0, 0
    for _ in range(n + 40):
        while i < len(arrivals) and arrivals[i][0] <= t:
            b.push(arrivals[i][1], 0, payload(arrivals[i][1]), arrivals[i][0])
            i += 1
        assert b.depth <= b.max_frames
        got = b.pop(t)
        if isinstance(got, Frame):
            assert got.payload == payload(got.seq)
            played.append(got.seq)
        t += F
    assert played == sorted(played) and len(played) == len(set(played))
    # every push is accounted for exactly once
    assert b.pushed + b.late + b.duplicates == len(arrivals)
    assert b.pushed == b.played + b.skipped + b.overflow + b.depth
    assert set(played) <= {s for _, s in arrivals}
    if max_delay_frames == 0 and dup == 0.0:
        assert b.late == 0 and b.overflow == 0  # an orderly network loses nothing in the buffer
