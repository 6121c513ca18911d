"""agent.measure: the one percentile and the one WAV tone analyser, on recordings made here."""

from __future__ import annotations

import math
import wave
from collections import deque
from pathlib import Path

import numpy as np
import pytest

from agent.measure import analyse_tone, analyse_wav, percentile, read_wav, spectral_peaks

RATE = 16000


def tone(hz: float, seconds: float, level: float = 11000.0) -> np.ndarray:
    return level * np.sin(2 * np.pi * hz * np.arange(int(RATE * seconds)) / RATE)


def silence(seconds: float) -> np.ndarray:
    return np.zeros(int(RATE * seconds))


def write(path: Path, x: np.ndarray, rate: int = RATE, channels: int = 1) -> Path:
    with wave.open(str(path), "wb") as w:
        w.setnchannels(channels)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(np.round(x).astype("<i2").tobytes())
    return path


def test_percentile_interpolates_between_ranks_and_has_a_default_for_nothing() -> None:
    assert percentile([1, 2, 3, 4], 50) == 2.5
    assert percentile([10, 20, 30], 0) == 10 and percentile([10, 20, 30], 100) == 30
    assert percentile(range(101), 99) == 99.0
    assert percentile(deque([5]), 99) == 5.0
    assert percentile(np.array([4.0, 1.0, 3.0, 2.0]), 75) == 3.25
    assert percentile([], 50) is None
    assert math.isnan(percentile([], 50, math.nan))
    with pytest.raises(ValueError):
        percentile([1, 2], 101)
    with pytest.raises(ValueError):
        percentile([], -1)


def test_a_tone_between_silences(tmp_path: Path) -> None:
    p = write(tmp_path / "t.wav", np.concatenate([silence(1.0), tone(440, 2.0), silence(1.0)]))
    t = analyse_wav(p)
    assert (t.total_s, t.loud_frames, t.sound_s, t.span) == (4.0, 100, 2.0, (1.0, 3.0))
    assert (t.outside_rms, t.outside_peak) == (0.0, 0.0)
    assert t.peak_hz == 440.0 and t.peaks_hz[0] == 440.0 and len(t.peaks) == 3
    assert t.peak_ratio < 0.001
    assert str(t).startswith("4.0 s recorded, 2.00 s of sound in 1.00-3.00 s, loudest frame outside 0.0 RMS, "
                             "peaks 440.0 Hz")


def test_two_talkers_mixed_and_sound_outside(tmp_path: Path) -> None:
    noise = np.full(RATE // 2, 100.0)  # below the threshold: not sound, but outside the span
    x = np.concatenate([noise, tone(440, 1.0, 6000) + tone(660, 1.0, 5000), silence(0.5)])
    t = analyse_tone(x, RATE)
    assert [round(f) for f in t.peaks_hz[:2]] == [440, 660]
    assert t.peak_ratio == pytest.approx(5 / 6, rel=1e-3)
    assert t.span == (0.5, 1.5) and t.outside_rms == 100.0 and t.outside_peak == 100.0


def test_span_or_loud_frames_only(tmp_path: Path) -> None:
    x = np.concatenate([tone(300, 0.5), silence(1.0), tone(300, 0.5)])
    span, loud = analyse_tone(x, RATE), analyse_tone(x, RATE, spectrum_of="loud")
    assert span.sound_s == loud.sound_s == 1.0 and span.span == loud.span == (0.0, 2.0)
    assert span.peak_hz == loud.peak_hz == 300.0


def test_silence_short_and_empty() -> None:
    for x in (silence(1.0), tone(440, 0.01), np.zeros(0)):
        t = analyse_tone(x, RATE)
        assert (t.loud_frames, t.sound_s, t.span, t.peaks, t.peak_hz, t.peak_ratio) == (0, 0.0, (0.0, 0.0), [], None, 0.0)
    assert analyse_tone(tone(440, 0.01), RATE).outside_peak == pytest.approx(11000, rel=0.01)
    assert analyse_tone(tone(440, 1.0), RATE, threshold_rms=20000).loud_frames == 0


def test_spectral_peaks_are_apart_and_ties_go_to_the_lowest() -> None:
    x = tone(1000, 1.0) + tone(1020, 1.0, 5000) + tone(2000, 1.0, 3000)
    assert [round(f) for f, _ in spectral_peaks(x, RATE, k=2, guard_hz=40)] == [1000, 2000]
    assert [round(f) for f, _ in spectral_peaks(x, RATE, k=2, guard_hz=10)] == [1000, 1020]
    assert spectral_peaks(np.zeros(320), RATE, k=1) == [(0.0, 0.0)]
    assert spectral_peaks(np.zeros(0), RATE) == []


def test_read_wav_checks_the_format_and_reads_a_growing_file(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="expected 16-bit mono"):
        read_wav(write(tmp_path / "st.wav", np.zeros(640), channels=2))
    x, rate = read_wav(write(tmp_path / "r.wav", tone(440, 0.5), rate=8000))
    assert rate == 8000 and len(x) == 8000
    # A file being written: its header still says 0 frames; the samples after it count.
    p = tmp_path / "g.wav"
    with wave.open(str(p), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(RATE)
        w.writeframes(b"")
    with open(p, "ab") as f:
        f.write(np.round(tone(440, 1.0)).astype("<i2").tobytes() + b"\x01")  # and half a sample
    assert len(read_wav(p)[0]) == 0
    grown = analyse_wav(p, growing=True)
    assert grown.total_s == 1.0 and grown.peak_hz == 440.0
