"""A fleet of 25 `avi-agent run` processes, one per network namespace, shipped defaults (mDNS,
Kademlia, bounded degree, relay-tree talk): every node's fleet view lists all 25, and all 24
listeners hear the last node's 5 s talk at 440 Hz (FFT of their WAVs). Figures are printed;
goals on time and cost are checked by bench/fleet.py, not here (a shared, busy machine).

    timeout -s KILL 900 .venv/bin/python -m pytest tests/test_fleet.py -s -q
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.netrig.fleet import Schedule, run_fleet
from tests.netrig.marks import skip_unless_netns

N = 25


@pytest.mark.slow
@pytest.mark.netns
def test_25_agents_see_the_whole_fleet_and_all_listeners_hear_a_talk(tmp_path: Path) -> None:
    skip_unless_netns()
    # converge_s: the wait for the full view after the last start, generous for a loaded
    # machine (the goal, 10 s at N = 50, is the bench's); the idle window is short here.
    res = run_fleet(N, tmp_path, schedule=Schedule(converge_s=60.0, idle_s=5.0), subnet="10.79.0.0/24")
    print({k: v for k, v in res.row().items()})
    for note in res.notes:
        print(note)
    assert min(res.views) == N - 1, f"fleet views (others seen, of {N - 1}): {sorted(res.views)}"
    assert sum(res.heard) == N - 1, f"{sum(res.heard)}/{N - 1} listeners heard the talk; {res.notes}"
    assert all(code == 0 for code in res.exit_codes), f"exit codes after SIGTERM: {res.exit_codes}"
