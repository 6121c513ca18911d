"""A fleet of 25 `avi-agent run` processes, one per network namespace, shipped defaults (mDNS,
Kademlia, bounded degree, the talk spread over the nodes' connections): every node's fleet view
lists all 25, and all 24 listeners hear the last node's 5 s talk at 440 Hz (FFT of their WAVs: at
least 1 s of the tone). Figures are printed; goals on time and cost (mouth-to-ear, frames lost)
are checked by bench/fleet.py, not here. Skipped, with the figure, when the machine is already
too loaded to run 25 real-time agents. (Until the talk carried its context and spread over
existing connections, 9-22 of 24 heard: relays waited for the plan over pub/sub and connected on
demand, seconds per hop under load.)

    timeout -s KILL 900 .venv/bin/python -m pytest tests/test_fleet.py -s -q
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.netrig.fleet import FleetResult, Schedule, run_fleet
from tests.netrig.marks import skip_unless_netns

N = 25
# 25 real-time agents idle at ≈ 1 % of a core each, but their start (≈ 1.1 s of CPU each to
# import py-libp2p) and the talk (relays opening streams on demand) need much more; with the
# machine already this busy per core they fall behind real time and the test would measure
# the other load, not the fleet.
MAX_LOAD_PER_CPU = 2.0


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> FleetResult:
    skip_unless_netns()
    load = os.getloadavg()[0] / (os.cpu_count() or 1)
    if load > MAX_LOAD_PER_CPU:
        pytest.skip(f"machine too busy for 25 real-time agents: load {load:.1f} per CPU > {MAX_LOAD_PER_CPU}")
    # converge_s: the wait for the full view after the last start, generous for a loaded
    # machine (the goal, 10 s at N = 50, is the bench's); the idle window is short here.
    res = run_fleet(N, tmp_path_factory.mktemp("fleet"), schedule=Schedule(converge_s=60.0, idle_s=5.0),
                    subnet="10.79.0.0/24")
    print({k: v for k, v in res.row().items()})
    for note in res.notes:
        print(note)
    return res


@pytest.mark.slow
@pytest.mark.netns
def test_25_agents_see_the_whole_fleet_and_exit_cleanly(fleet: FleetResult) -> None:
    assert min(fleet.views) == N - 1, f"fleet views (others seen, of {N - 1}): {sorted(fleet.views)}"
    assert all(code == 0 for code in fleet.exit_codes), f"exit codes after SIGTERM: {fleet.exit_codes}"


@pytest.mark.slow
@pytest.mark.netns
def test_all_24_listeners_hear_a_talk(fleet: FleetResult) -> None:
    heard = [h for h in fleet.heard_detail if h.peak_hz is not None and abs(h.peak_hz - 440) < 10 and h.sound_s >= 1.0]
    assert len(heard) == N - 1, f"{len(heard)}/{N - 1} listeners heard the 440 Hz talk; {fleet.notes}"
