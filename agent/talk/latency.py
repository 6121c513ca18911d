"""Mouth-to-ear latency figures: a bounded window of recent samples and its percentiles."""

from __future__ import annotations

from collections import deque

from agent.measure import percentile

__all__ = ["LatencyWindow"]


class LatencyWindow:
    """The last ``size`` latencies (µs). Percentiles are computed on demand (status asks once
    a second), so adding a sample on the audio path is one deque append."""

    def __init__(self, size: int = 10_000) -> None:
        self._samples: deque[int] = deque(maxlen=size)
        self.count = 0

    def add(self, latency_us: int) -> None:
        self._samples.append(latency_us)
        self.count += 1

    def reset(self) -> None:
        self._samples.clear()

    def __len__(self) -> int:
        return len(self._samples)

    def percentile_ms(self, q: float) -> float | None:
        """The q-th percentile (0-100) in ms of the window, None when empty."""
        p = percentile(self._samples, q)
        return None if p is None else p / 1000.0

    def samples_ms(self) -> list[float]:
        return [s / 1000.0 for s in self._samples]
