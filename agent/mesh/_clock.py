"""The clock of audio timestamps (``send_audio(timestamp_us=...)``, ``AudioData.timestamp_us``)."""

from __future__ import annotations

import time

__all__ = ["now_us"]


def now_us() -> int:
    """CLOCK_MONOTONIC in microseconds: comparable across processes on one machine, and the same
    clock as ``hw.audio.monotonic_us`` (which the device edge keeps, as hw imports nothing of agent)."""
    return time.monotonic_ns() // 1000
