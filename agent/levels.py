"""Audio levels and gain, pure (no I/O, no clock): what the microphone and the speaker are doing.

``LevelMeter`` measures S16LE frames cheaply (one numpy pass per 20 ms frame): RMS and peak in
dBFS over a window of frames (about a second), and the count of clipped samples (at full scale,
either sign) since start. ``apply_gain`` scales a frame by a gain in dB and saturates at full
scale instead of wrapping (the samples it clipped are counted by the meter that sees the result).

dBFS here: 0 dBFS is a full-scale sample (32767); a full-scale sine has an RMS of -3.01 dBFS.
Digital silence is reported as :data:`DBFS_FLOOR`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

__all__ = ["DBFS_FLOOR", "Levels", "LevelMeter", "apply_gain", "dbfs", "gain_factor", "MAX_GAIN_DB",
           "MIN_GAIN_DB"]

DBFS_FLOOR = -120.0
FULL_SCALE = 32767.0
MIN_GAIN_DB = -60.0
MAX_GAIN_DB = 30.0
_I16_MIN, _I16_MAX = -32768, 32767


def dbfs(amplitude: float) -> float:
    """A linear amplitude (full scale = 32767) in dBFS, floored at :data:`DBFS_FLOOR`."""
    if amplitude <= 0:
        return DBFS_FLOOR
    return max(DBFS_FLOOR, 20.0 * math.log10(amplitude / FULL_SCALE))


def gain_factor(gain_db: float) -> float:
    return 10.0 ** (gain_db / 20.0)


def apply_gain(pcm: bytes, gain_db: float) -> bytes:
    """``pcm`` (S16LE) scaled by ``gain_db``, saturated to the int16 range; 0 dB returns it as is."""
    if gain_db == 0.0:
        return pcm
    x = np.frombuffer(pcm, dtype="<i2").astype(np.float32)
    x *= gain_factor(gain_db)
    np.rint(x, out=x)
    np.clip(x, _I16_MIN, _I16_MAX, out=x)
    return x.astype("<i2").tobytes()


@dataclass(frozen=True, slots=True)
class Levels:
    """The last complete window: RMS and peak in dBFS; ``clipped``: samples at full scale since start."""

    rms_dbfs: float = DBFS_FLOOR
    peak_dbfs: float = DBFS_FLOOR
    clipped: int = 0
    frames: int = 0


class LevelMeter:
    """Feed every frame to :meth:`add`; :meth:`levels` is the last full window of
    ``window_frames`` frames (50 × 20 ms = 1 s by default), or the partial one before the first."""

    def __init__(self, window_frames: int = 50) -> None:
        if window_frames < 1:
            raise ValueError("window_frames must be >= 1")
        self.window_frames = window_frames
        self._sumsq = 0.0
        self._samples = 0
        self._peak = 0
        self._n = 0
        self._clipped = 0
        self._frames = 0
        self._last: Levels | None = None

    def add(self, pcm: bytes) -> None:
        x = np.frombuffer(pcm, dtype="<i2")
        if x.size == 0:
            return
        xf = x.astype(np.float64)
        self._sumsq += float(np.dot(xf, xf))
        self._samples += x.size
        hi, lo = int(x.max()), int(x.min())
        self._peak = max(self._peak, hi, -lo)
        if hi >= _I16_MAX or lo <= _I16_MIN:
            self._clipped += int(np.count_nonzero((x >= _I16_MAX) | (x <= _I16_MIN)))
        self._frames += 1
        self._n += 1
        if self._n >= self.window_frames:
            self._last = self._current()
            self._sumsq, self._samples, self._peak, self._n = 0.0, 0, 0, 0

    def _current(self) -> Levels:
        rms = math.sqrt(self._sumsq / self._samples) if self._samples else 0.0
        return Levels(round(dbfs(rms), 2), round(dbfs(float(self._peak)), 2), self._clipped, self._frames)

    def levels(self) -> Levels:
        if self._last is None:
            return self._current()
        return Levels(self._last.rms_dbfs, self._last.peak_dbfs, self._clipped, self._frames)

    @property
    def clipped(self) -> int:
        return self._clipped

    @property
    def window_done(self) -> bool:
        """True right after the frame that completed a window (before the next is added)."""
        return self._n == 0 and self._frames > 0
