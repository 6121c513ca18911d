"""The ``hang_guard`` fixture (tests/conftest.py) really fails a hung test, also on trio's
autojump MockClock while the test waits for a worker thread (where a trio deadline would be
jumped over), and leaves a test that finishes alone. Run in a child pytest with a 1 s guard."""

from __future__ import annotations

import pytest

from tests.conftest import ROOT

pytest_plugins = ["pytester"]

INNER = """
import time
import trio
import tests.conftest

tests.conftest.HANG_GUARD_S = 1.0

async def test_hung_in_a_thread_on_mock_clock(autojump_clock, hang_guard):
    await trio.to_thread.run_sync(time.sleep, 3)   # the thread never gives up its 3 s

async def test_finishes(autojump_clock, hang_guard):
    await trio.sleep(100)                          # 100 s of MockClock time: instant
"""


def test_hang_guard_fails_a_hung_test_and_only_that(pytester: pytest.Pytester,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PYTHONPATH", str(ROOT))  # the child imports tests.conftest
    pytester.makeini("[pytest]\ntrio_mode = true\n")
    pytester.makeconftest("from tests.conftest import hang_guard  # noqa: F401\n")
    pytester.makepyfile(test_inner=INNER)
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-q")
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines(["*test_hung_in_a_thread_on_mock_clock*TimeoutError*"])
