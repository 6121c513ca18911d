"""Pitch-preserving time-stretching of speech (WSOLA-style, in the spirit of WebRTC NetEQ's
accelerate and preemptive-expand). Pure numpy, no state.

Both operations find the signal's pitch period P (the lag of highest normalised
autocorrelation between two neighbouring segments of length P) and then cross-fade:

- **accelerate** removes one period: ``x[:P]`` is faded into ``x[P:2P]`` and the rest follows,
  so the output is ``len(x) - P`` samples and joins up without a click;
- **expand** adds one period: ``x[:P]``, then ``x[P:2P]`` faded into ``x[:P]`` (the period
  played again), then ``x[P:]``, so the output is ``len(x) + P`` samples.

Because the removed or repeated piece is one pitch period, the pitch is unchanged: the speech
is only a little faster or slower. A segment whose best correlation is low (noise-like,
transient) is left alone unless it is quiet, where any lag is inaudible.
"""

from __future__ import annotations

import numpy as np

__all__ = ["best_period", "accelerate", "expand", "rms", "SILENCE_RMS"]

SILENCE_RMS = 100.0      # S16 RMS below which a chunk counts as silence (about -50 dBFS)
MIN_CORRELATION = 0.6    # below this a voiced-looking period is not trusted
PITCH_MIN_HZ = 70.0
PITCH_MAX_HZ = 400.0


def rms(x: np.ndarray) -> float:
    """Root mean square of int16 or float samples (0 for an empty array)."""
    if x.size == 0:
        return 0.0
    xf = x.astype(np.float64)
    return float(np.sqrt(np.mean(xf * xf)))


def _mono(x: np.ndarray, channels: int) -> np.ndarray:
    if channels == 1:
        return x.astype(np.float64)
    return x.reshape(-1, channels).astype(np.float64).mean(axis=1)


def best_period(x: np.ndarray, rate: int, channels: int = 1) -> tuple[int, float]:
    """(P, correlation): the lag in samples per channel (P <= len/2) where ``x[:P]`` best
    matches ``x[P:2P]``, and that normalised correlation (-1..1). (0, 0.0) when too short."""
    m = _mono(x, channels)
    n = m.size
    pmin = max(1, int(rate / PITCH_MAX_HZ))
    pmax = min(int(rate / PITCH_MIN_HZ), n // 2)
    if pmax < pmin:
        return 0, 0.0
    best_p, best_c = 0, -2.0
    for p in range(pmin, pmax + 1):
        a, b = m[:p], m[p:2 * p]
        den = np.sqrt(np.dot(a, a) * np.dot(b, b))
        c = float(np.dot(a, b) / den) if den > 0 else 0.0
        # prefer the shortest good lag: multiples of the period correlate as well
        if c > best_c + 1e-3:
            best_p, best_c = p, c
    return best_p, best_c


def _fade(n: int) -> tuple[np.ndarray, np.ndarray]:
    up = (np.arange(n, dtype=np.float64) + 0.5) / n
    return 1.0 - up, up


def _frames(x: np.ndarray, channels: int) -> np.ndarray:
    return x.reshape(-1, channels).astype(np.float64)


def _out(y: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(y), -32768, 32767).astype(np.int16).reshape(-1)


def accelerate(x: np.ndarray, rate: int, channels: int = 1) -> tuple[np.ndarray, int]:
    """``x`` (int16, interleaved) shortened by one pitch period: (samples, samples per
    channel removed). Returns ``x`` unchanged (0 removed) when no period can be trusted."""
    p, c = best_period(x, rate, channels)
    if p == 0 or (c < MIN_CORRELATION and rms(x) >= SILENCE_RMS):
        return x, 0
    f = _frames(x, channels)
    down, up = _fade(p)
    mid = f[:p] * down[:, None] + f[p:2 * p] * up[:, None]
    return _out(np.concatenate([mid, f[2 * p:]])), p


def expand(x: np.ndarray, rate: int, channels: int = 1) -> tuple[np.ndarray, int]:
    """``x`` (int16, interleaved) lengthened by one pitch period: (samples, samples per
    channel added). Unchanged (0 added) when no period can be trusted."""
    p, c = best_period(x, rate, channels)
    if p == 0 or (c < MIN_CORRELATION and rms(x) >= SILENCE_RMS):
        return x, 0
    f = _frames(x, channels)
    down, up = _fade(p)
    mid = f[p:2 * p] * down[:, None] + f[:p] * up[:, None]
    return _out(np.concatenate([f[:p], mid, f[p:]])), p
