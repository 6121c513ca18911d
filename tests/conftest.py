"""Shared fixtures. Network tests use 127.0.0.1 only (or namespaces the rig creates)."""

from __future__ import annotations

import os
import sys
import threading
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import trio

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

os.environ.setdefault("PYTHONUNBUFFERED", "1")
pytest_plugins = ["tests.netrig.fixtures"]


# Async tests are plain ``async def test_...`` functions run by pytest-trio (``trio_mode`` in
# pyproject.toml); one on trio's MockClock asks for pytest-trio's ``autojump_clock`` fixture.
HANG_GUARD_S = 20.0


@pytest.fixture
async def hang_guard() -> AsyncIterator[None]:
    """Fails an async test still running after HANG_GUARD_S seconds of WALL-clock time (a hang
    guard, not a speed check: the tests that use it take well under a second idle). It waits
    on a thread, not on trio's clock: on ``autojump_clock`` a trio deadline would be jumped to
    whenever every task waits, also while one waits for a worker thread (a fake's file I/O)."""
    done = threading.Event()

    async def watch() -> None:
        if not await trio.to_thread.run_sync(done.wait, HANG_GUARD_S, abandon_on_cancel=True):
            raise TimeoutError(f"test still running after {HANG_GUARD_S:g} s (wall clock): hung")

    async with trio.open_nursery() as nursery:
        nursery.start_soon(watch)
        try:
            yield
        finally:
            done.set()
