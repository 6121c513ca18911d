"""One clock for audio timestamps: agent.mesh.now_us is CLOCK_MONOTONIC in µs, like the device edge's."""

from __future__ import annotations

import time

from agent.mesh import now_us
from hw.audio import monotonic_us


def test_now_us_is_monotonic_microseconds_and_the_device_edges_clock() -> None:
    before = time.monotonic_ns() // 1000
    a, b = now_us(), monotonic_us()
    after = time.monotonic_ns() // 1000
    assert isinstance(a, int) and before <= a <= b <= after
