"""Mixing several talkers into one playback frame: saturating add of S16_LE samples."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = ["Mixer", "mix"]

_I16_MIN, _I16_MAX = -32768, 32767


class Mixer:
    """Mixes frames of exactly ``frame_bytes`` bytes. Sums in int32 (cannot overflow for up to
    65536 inputs) and clips once to the int16 range, so loud talkers saturate instead of wrapping."""

    def __init__(self, frame_bytes: int) -> None:
        if frame_bytes <= 0 or frame_bytes % 2:
            raise ValueError(f"frame_bytes must be a positive even number, got {frame_bytes}")
        self.frame_bytes = frame_bytes
        self._acc = np.zeros(frame_bytes // 2, dtype=np.int32)
        self._silence = bytes(frame_bytes)

    @property
    def silence(self) -> bytes:
        return self._silence

    def mix(self, frames: Sequence[bytes]) -> bytes:
        """One frame holding the saturated sum of ``frames`` (silence for none)."""
        for f in frames:
            if len(f) != self.frame_bytes:
                raise ValueError(f"frame of {len(f)} bytes, the mixer takes {self.frame_bytes}")
        if not frames:
            return self._silence
        if len(frames) == 1:
            return bytes(frames[0])
        acc = self._acc
        acc[:] = np.frombuffer(frames[0], dtype="<i2")
        for f in frames[1:]:
            acc += np.frombuffer(f, dtype="<i2")
        np.clip(acc, _I16_MIN, _I16_MAX, out=acc)
        return acc.astype("<i2").tobytes()


def mix(frames: Sequence[bytes]) -> bytes:
    """Saturating mix of equal-length S16_LE frames (convenience; `Mixer` reuses its buffer)."""
    if not frames:
        raise ValueError("nothing to mix (the frame length is unknown)")
    return Mixer(len(frames[0])).mix(frames)
