"""Skip helpers for rig tests (kept apart from fixtures.py so a test module can import
them without importing the plugin module before pytest registers it)."""

from __future__ import annotations

import pytest

from .availability import SKIP_PREFIX, netns_unavailable_reason

REASON = netns_unavailable_reason()
SKIP_REASON = f"{SKIP_PREFIX}: {REASON}"

#: Marker: skip this test, with the reason, when the rig cannot run here.
requires_netns = pytest.mark.skipif(REASON is not None, reason=SKIP_REASON)


def skip_unless_netns() -> None:
    """Skip the calling test (or fixture) when the rig cannot run here."""
    if REASON is not None:
        pytest.skip(SKIP_REASON)
