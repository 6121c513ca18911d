"""Levels and gains, pure: dBFS of known signals, gains by the right dB, saturation counted."""

from __future__ import annotations

import math

import numpy as np
import pytest

from agent.levels import DBFS_FLOOR, LevelMeter, apply_gain, dbfs
from agent.metrics import LatencyHistogram


def sine(level: float, n: int = 320, freq: float = 1000.0, rate: int = 16000, start: int = 0) -> bytes:
    t = (np.arange(n) + start) / rate
    return np.rint(level * 32767 * np.sin(2 * np.pi * freq * t)).astype("<i2").tobytes()


def meter_of(frames: list[bytes], window: int = 50) -> LevelMeter:
    m = LevelMeter(window)
    for f in frames:
        m.add(f)
    return m


def test_known_levels() -> None:
    frames = [sine(0.5, start=i * 320) for i in range(50)]
    lv = meter_of(frames).levels()
    assert lv.rms_dbfs == pytest.approx(20 * math.log10(0.5 / math.sqrt(2)), abs=0.05)  # -9.03
    assert lv.peak_dbfs == pytest.approx(-6.02, abs=0.05)
    assert lv.clipped == 0 and lv.frames == 50
    assert meter_of([bytes(640)] * 50).levels().rms_dbfs == DBFS_FLOOR
    assert dbfs(0) == DBFS_FLOOR and dbfs(32767) == 0.0


@pytest.mark.parametrize("gain_db", [-20.0, -6.0, 3.0, 6.0])
def test_gain_changes_the_measured_level_by_the_gain(gain_db: float) -> None:
    frames = [sine(0.25, start=i * 320) for i in range(50)]
    before = meter_of(frames).levels().rms_dbfs
    after = meter_of([apply_gain(f, gain_db) for f in frames]).levels().rms_dbfs
    assert after - before == pytest.approx(gain_db, abs=0.05)


def test_gain_saturates_and_the_clipped_samples_are_counted() -> None:
    f = sine(0.5)
    loud = apply_gain(f, 12.0)  # x4: a half-scale sine goes to twice full scale
    x = np.frombuffer(loud, dtype="<i2")
    assert x.max() == 32767 and x.min() == -32768  # saturated, not wrapped
    assert np.all(np.sign(x[np.abs(np.frombuffer(f, dtype="<i2")) > 100]) ==
                  np.sign(np.frombuffer(f, dtype="<i2")[np.abs(np.frombuffer(f, dtype="<i2")) > 100]))
    m = meter_of([loud])
    assert m.clipped == int(np.count_nonzero((x == 32767) | (x == -32768))) > 100
    assert apply_gain(f, 0.0) is f


def test_window_is_the_last_full_second() -> None:
    m = LevelMeter(10)
    for i in range(10):
        m.add(sine(0.5, start=i * 320))
    for _ in range(5):
        m.add(bytes(640))  # half a window of silence does not change the reported level yet
    assert m.levels().rms_dbfs == pytest.approx(-9.03, abs=0.05)
    for _ in range(5):
        m.add(bytes(640))
    assert m.levels().rms_dbfs == DBFS_FLOOR


def test_latency_histogram_is_cumulative() -> None:
    h = LatencyHistogram([0.01, 0.1])
    for us in (5_000, 10_000, 50_000, 2_000_000):
        h.observe_us(us)
    assert h.cumulative() == [("0.01", 2), ("0.1", 3), ("+Inf", 4)]
    assert h.count == 4 and h.sum_us == 2_065_000
