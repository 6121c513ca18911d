"""Measuring helpers shared by the agent's tools, its benches and its tests (pure, numpy).

- :func:`percentile` — the one percentile of the project (latency windows, bench tables, tests);
- :func:`read_wav`, :func:`spectral_peaks`, :func:`analyse_tone` — the one WAV tone analyser: how
  long a recording holds sound, where, how loud it is around that, and which tones it holds
  (what the fake sound card of a listening node recorded, say).
"""

from __future__ import annotations

import wave
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np

__all__ = ["percentile", "read_wav", "spectral_peaks", "ToneAnalysis", "analyse_tone", "analyse_wav"]

WAV_HEADER = 44  # bytes of a canonical PCM WAV header (what hw.audio.fake.WavSink writes)


def percentile(values: Iterable[float] | np.ndarray, q: float, default: float | None = None) -> float | None:
    """The ``q``-th percentile (0-100) of ``values``, interpolating linearly between the two
    nearest ranks (numpy's default method); ``default`` when there are no values."""
    arr = values if isinstance(values, np.ndarray) else np.fromiter(values, dtype=np.float64)
    if arr.size == 0:
        if not 0 <= q <= 100:
            raise ValueError(f"percentile {q} is outside 0-100")
        return default
    return float(np.percentile(arr, q))


def read_wav(path: Path, *, growing: bool = False) -> tuple[np.ndarray, int]:
    """(samples as float64, sample rate) of a 16-bit mono WAV file.

    ``growing``: the file may still be being written, so its header's length is not to be
    trusted: every whole sample after the header is read."""
    with wave.open(str(path), "rb") as w:
        if (w.getsampwidth(), w.getnchannels()) != (2, 1):
            raise ValueError(f"{path}: {w.getsampwidth() * 8}-bit, {w.getnchannels()} channel(s); "
                             "expected 16-bit mono")
        rate = w.getframerate()
        data = w.readframes(w.getnframes()) if not growing else b""
    if growing:
        raw = path.read_bytes()[WAV_HEADER:]
        data = raw[: len(raw) // 2 * 2]
    return np.frombuffer(data, dtype="<i2").astype(np.float64), rate


def spectral_peaks(x: np.ndarray, rate: int, k: int = 3, guard_hz: float = 40.0) -> list[tuple[float, float]]:
    """The ``k`` strongest peaks (Hz, magnitude) of ``x``'s Hann-windowed spectrum, strongest
    first, at least ``guard_hz`` apart (the bins next to a peak are not other tones)."""
    if len(x) == 0:
        return []
    spectrum = np.abs(np.fft.rfft(x * np.hanning(len(x))))
    freqs = np.fft.rfftfreq(len(x), 1 / rate)
    out: list[tuple[float, float]] = []
    for i in np.argsort(-spectrum, kind="stable"):  # ties: the lowest frequency first, as argmax
        f = float(freqs[i])
        if all(abs(f - g) > guard_hz for g, _ in out):
            out.append((f, float(spectrum[i])))
            if len(out) == k:
                break
    return out


@dataclass(frozen=True)
class ToneAnalysis:
    """What a recording holds, in 20 ms frames; a frame "has sound" above an RMS threshold."""

    total_s: float                    # length of the recording
    loud_frames: int                  # frames with sound
    sound_s: float                    # ... in seconds
    span: tuple[float, float]         # first..last frame with sound, seconds into the recording
    outside_rms: float                # loudest frame outside that span (one frame of margin)
    outside_peak: float               # loudest sample outside that span (one frame of margin)
    peaks: list[tuple[float, float]] = field(default_factory=list)  # (Hz, magnitude), strongest first

    @property
    def peak_hz(self) -> float | None:
        """The strongest tone, None without sound."""
        return self.peaks[0][0] if self.peaks else None

    @property
    def peaks_hz(self) -> list[float]:
        return [f for f, _ in self.peaks]

    @property
    def peak_ratio(self) -> float:
        """Second strongest peak over the strongest (0 with fewer than two): how pure the tone is."""
        return self.peaks[1][1] / self.peaks[0][1] if len(self.peaks) > 1 else 0.0

    def __str__(self) -> str:
        peaks = ", ".join(f"{f:.1f} Hz" for f, _ in self.peaks[:3])
        return (f"{self.total_s:.1f} s recorded, {self.sound_s:.2f} s of sound in "
                f"{self.span[0]:.2f}-{self.span[1]:.2f} s, loudest frame outside {self.outside_rms:.1f} RMS, "
                f"peaks {peaks}")


def analyse_tone(x: np.ndarray, rate: int, *, threshold_rms: float = 500.0,
                 spectrum_of: Literal["span", "loud"] = "span", k: int = 3,
                 guard_hz: float = 40.0) -> ToneAnalysis:
    """Analyse mono samples in 20 ms frames (a partial last frame is left out).

    The tones are looked for in ``spectrum_of``: the whole ``span`` from the first to the last
    frame with sound (gaps included), or only the ``loud`` frames joined together."""
    frame = rate // 50
    n = len(x) // frame
    total_s = len(x) / rate
    rms = np.sqrt((x[: n * frame].reshape(n, frame) ** 2).mean(axis=1))
    loud = np.flatnonzero(rms > threshold_rms)
    if len(loud) == 0:
        return ToneAnalysis(total_s, 0, 0.0, (0.0, 0.0), float(rms.max(initial=0.0)),
                            float(np.abs(x).max(initial=0.0)), [])
    lo, hi = int(loud[0]), int(loud[-1]) + 1
    outside_rms = np.concatenate([rms[: max(0, lo - 1)], rms[hi + 1:]])
    outside = np.concatenate([x[: max(0, lo - 1) * frame], x[(hi + 1) * frame:]])
    if spectrum_of == "span":
        sound = x[lo * frame: hi * frame]
    else:
        sound = x[: n * frame].reshape(n, frame)[loud].reshape(-1)
    return ToneAnalysis(total_s, len(loud), len(loud) * frame / rate, (lo * frame / rate, hi * frame / rate),
                        float(outside_rms.max(initial=0.0)), float(np.abs(outside).max(initial=0.0)),
                        spectral_peaks(sound, rate, k, guard_hz))


def analyse_wav(path: Path, *, growing: bool = False, **kw: object) -> ToneAnalysis:
    """:func:`analyse_tone` of a 16-bit mono WAV file (see :func:`read_wav` for ``growing``)."""
    x, rate = read_wav(path, growing=growing)
    return analyse_tone(x, rate, **kw)  # type: ignore[arg-type]
