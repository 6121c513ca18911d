"""The one async polling helper of the tests: wait for a condition that no event announces."""

from __future__ import annotations

from collections.abc import Callable

import trio

__all__ = ["wait_until"]


async def wait_until(pred: Callable[[], object], timeout: float = 20.0, what: str = "condition",
                     step: float = 0.05) -> None:
    """Check ``pred()`` every ``step`` seconds (trio's clock, so a MockClock works too) until it
    is true; after ``timeout`` seconds raise AssertionError naming ``what``. A timeout is a
    hang guard sized for a busy machine, not a speed check."""
    with trio.move_on_after(timeout):
        while not pred():
            await trio.sleep(step)
        return
    raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
