"""A short run of bench/soak.py: no growth of fds, tasks or threads while peers come and go."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

spec = importlib.util.spec_from_file_location("soak", Path(__file__).resolve().parents[2] / "bench" / "soak.py")
soak = importlib.util.module_from_spec(spec)
sys.modules["soak"] = soak
spec.loader.exec_module(soak)


@pytest.mark.slow
async def test_short_soak_has_no_resource_growth(capsys):
    r = await soak.run_soak(duration=12.0, warmup=5.0, churn_every=3.0)
    with capsys.disabled():
        print()
        soak.print_table(r)
    assert r.rejoins >= 3 and r.streams_opened >= 3
    assert r.end.fds <= r.warm.fds
    assert r.end.tasks <= r.warm.tasks
    assert r.end.threads <= r.warm.threads
    assert r.end.rss_kb - r.warm.rss_kb < 8 * 1024
    assert r.frames_lost <= r.frames_sent // 100
    assert r.messages_received == r.messages_sent
