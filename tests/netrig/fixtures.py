"""pytest glue for the rig: a skip marker, a rig factory fixture and a summary line.

The main conftest takes all of it with

    pytest_plugins = ["tests.netrig.fixtures"]

(test modules may say the same: pytest registers a plugin module once). That brings the
`netrig` fixture, auto-skips tests marked `@pytest.mark.netns` when namespaces are
unavailable, and prints, at the end of the run, how many tests were skipped for that
reason. `requires_netns` (in marks.py, re-exported here) is the explicit skip marker for
tests that do not use the fixture.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest

from . import lifecycle
from ._sh import RigError
from .availability import SKIP_PREFIX
from .marks import REASON as _REASON
from .marks import SKIP_REASON, requires_netns, skip_unless_netns
from .rig import Rig

__all__ = ["netrig", "requires_netns", "skip_unless_netns", "netns_skip_count", "pytest_configure",
           "pytest_collection_modifyitems", "pytest_terminal_summary"]


@pytest.fixture
def netrig() -> Iterator[Callable[..., Rig]]:
    """A factory: `rig = netrig(4)` gives a rig that is up; all are torn down after the test."""
    skip_unless_netns()
    rigs: list[Rig] = []

    def make(n_hosts: int, subnet: str = "10.77.0.0/24") -> Rig:
        rig = Rig(n_hosts, subnet).up()
        rigs.append(rig)
        return rig

    yield make
    errors = []
    for rig in reversed(rigs):
        try:
            rig.down()
        except RigError as exc:
            errors.append(str(exc))
    if errors:
        raise RigError("; ".join(errors))


def pytest_configure(config: pytest.Config) -> None:
    # Also declared in pyproject.toml; repeated so the plugin works outside this repo's config.
    config.addinivalue_line("markers", "netns: needs root and network namespaces")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if _REASON is None:
        return
    for item in items:
        if item.get_closest_marker("netns") is not None:
            item.add_marker(pytest.mark.skip(reason=SKIP_REASON))


def netns_skip_count(terminalreporter: object) -> int:
    """How many tests of this run were skipped because namespaces are unavailable."""
    stats = getattr(terminalreporter, "stats", {})
    return sum(1 for rep in stats.get("skipped", []) if SKIP_PREFIX in str(rep.longrepr))


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter, exitstatus: int, config: pytest.Config) -> None:
    skipped = netns_skip_count(terminalreporter)
    if skipped == 0 and lifecycle.rigs_created == 0:
        return  # no rig test in this run: say nothing
    terminalreporter.write_sep("-", "netrig")
    line = f"netrig: {skipped} test(s) skipped because network namespaces are unavailable"
    if _REASON is not None:
        line += f" ({_REASON})"
    else:
        line += f"; {lifecycle.rigs_created} rig(s) built in this run"
    terminalreporter.write_line(line)
