"""tests/poll.py: the polling helper returns as soon as the condition holds and names what it
waited for when it does not (on trio's MockClock: exact, and no real time passes)."""

from __future__ import annotations

import pytest
import trio

from tests.poll import wait_until


async def test_returns_once_true_and_names_what_it_waited_for_on_timeout(autojump_clock) -> None:
    checks = 0

    def third_time() -> bool:
        nonlocal checks
        checks += 1
        return checks >= 3

    t0 = trio.current_time()
    await wait_until(third_time, timeout=5, step=0.25)
    assert checks == 3 and trio.current_time() - t0 == 0.5
    t1 = trio.current_time()
    with pytest.raises(AssertionError, match=r"timed out after 1.5 s waiting for the moon"):
        await wait_until(lambda: False, timeout=1.5, what="the moon")
    assert trio.current_time() - t1 == 1.5
    await wait_until(lambda: True, timeout=0)  # true at once: no timeout even at 0
