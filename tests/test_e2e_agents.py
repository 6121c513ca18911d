"""Push-to-talk end to end through real `avi-agent run` processes on 127.0.0.1 (issue 6, "Done when").

Each agent is a separate process with fake hardware (agent/simulate.py writes its config and
identity key): a tone as its microphone, a WAV file as its speaker, a scripted button. Press
times count from each agent's start, so the first press waits for the mesh and the talk-group
announcements (a few seconds). What the listeners played is checked in their WAV files: about
2 s of sound at the talker's frequency (FFT), silence before and after. A listen-only mesh node
in this process (`simulate.watch`) collects every agent's status for the figures printed.

    timeout -s KILL 600 .venv/bin/python -m pytest tests/test_e2e_agents.py -s -q
"""

from __future__ import annotations

from pathlib import Path

import trio

from agent.measure import ToneAnalysis, analyse_wav
from agent.simulate import SimNode, prepare, start, stop, watch

# After the agent starts: mesh up, groups announced. That takes ~1.5-2.5 s idle (and with two
# CPU hogs running); the presses are scripted in each agent's own time, so they cannot wait
# for it: 6 s leaves room for a busy machine at the cost of 2 s per test.
PRESS_AT_S = 6.0
HOLD_S = 2.0
TAIL_S = 3.5      # watched after the last release (agents start ~1 s after the watch; status each 1 s)
LOUD_RMS = 500.0  # a 20 ms frame louder than this holds sound (the tones are ~11 600 RMS)
SILENT_RMS = 30.0


Heard = ToneAnalysis  # what one node played, from its WAV file


def analyse(path: Path) -> Heard:
    assert path.exists(), f"{path}: the agent played nothing"
    return analyse_wav(path, threshold_rms=LOUD_RMS)


def run_agents(out: Path, nodes: list[SimNode], watch_s: float) -> None:
    """Start the agents, watch their status for ``watch_s``, stop them with SIGTERM: exit 0."""
    prepare(out, nodes)
    codes: dict[str, int | None] = {}
    try:
        for n in nodes:
            start(n)
        trio.run(watch, nodes, watch_s, False)
    finally:
        for n in nodes:
            codes[n.name] = stop(n)  # SIGTERM; SIGKILL to the group after 10 s
    for n in nodes:
        s = n.status
        print(f"{n.name}: sent {s.get('frames_sent')}, received {s.get('frames_received')}, "
              f"late {s.get('frames_late')}, dropped {s.get('drops')}, mouth-to-ear p50/p99 "
              f"{s.get('latency_p50_ms')}/{s.get('latency_p99_ms')} ms, exit {codes[n.name]}")
    bad = {name: c for name, c in codes.items() if c != 0}
    assert not bad, f"agents did not exit 0 on SIGTERM: {bad}; logs in {out}"


def log_tail(node: SimNode, chars: int = 3000) -> str:
    try:
        return node.log.read_text(errors="replace")[-chars:]
    except OSError:
        return ""


def check_heard_one_tone(listener: SimNode, talker: SimNode) -> Heard:
    heard = analyse(listener.wav)
    print(f"{listener.name} heard: {heard}")
    why = f"{listener.name} hearing {talker.name}; {listener.name}'s log:\n{log_tail(listener)}"
    assert 1.6 <= heard.sound_s <= 2.5, f"expected about {HOLD_S} s of sound, got {heard.sound_s} s; {why}"
    assert heard.span[1] - heard.span[0] <= 2.8, f"sound spread over {heard.span}; {why}"
    assert abs(heard.peaks[0][0] - talker.tone_hz) < 5, f"dominant {heard.peaks[0][0]:.1f} Hz; {why}"
    assert heard.outside_rms < SILENT_RMS, f"sound outside the talk ({heard.outside_rms:.0f} RMS); {why}"
    assert heard.span[0] > 1.0 and heard.total_s > heard.span[1] + 0.5, "no silence before or after the talk"
    # Nearly every frame sent arrived (one stream each way), and its latency was measured.
    sent, received = talker.status.get("frames_sent", 0), listener.status.get("frames_received", 0)
    assert isinstance(sent, int) and isinstance(received, int) and sent >= 80, talker.status
    assert received >= 0.9 * sent, f"{talker.name} sent {sent}, {listener.name} received {received}"
    p50 = listener.status.get("latency_p50_ms")
    assert isinstance(p50, float) and 0 < p50 < 1000, listener.status
    return heard


def test_two_agents_take_turns(tmp_path: Path) -> None:
    """A holds the button 2 s with 440 Hz, B hears it; then B holds 2 s with 660 Hz, A hears it."""
    b_at = PRESS_AT_S + HOLD_S + 2.0
    a = SimNode("a", 440.0, [(PRESS_AT_S, HOLD_S)])
    b = SimNode("b", 660.0, [(b_at, HOLD_S)])
    run_agents(tmp_path, [a, b], b_at + HOLD_S + TAIL_S)
    hb = check_heard_one_tone(b, a)
    ha = check_heard_one_tone(a, b)
    # The two talks in the order pressed (the WAVs start within a second of each other).
    assert ha.span[0] > hb.span[1], f"a heard b at {ha.span}, before b heard a at {hb.span}"


def test_three_agents_two_talk_at_once(tmp_path: Path) -> None:
    """A (440 Hz) and B (660 Hz) hold their buttons at the same time; C hears both, mixed."""
    a = SimNode("a", 440.0, [(PRESS_AT_S, HOLD_S)])
    b = SimNode("b", 660.0, [(PRESS_AT_S, HOLD_S)])
    c = SimNode("c", 880.0, [])
    run_agents(tmp_path, [a, b, c], PRESS_AT_S + HOLD_S + TAIL_S)
    hc = analyse(c.wav)
    print(f"c heard: {hc}")
    why = f"c's log:\n{log_tail(c)}"
    # The agents start one after another, so the two presses overlap but may be ~1 s apart.
    assert 1.6 <= hc.sound_s <= 3.2, f"expected about {HOLD_S} s of sound, got {hc.sound_s} s; {why}"
    top2 = sorted(f for f, _ in hc.peaks[:2])
    assert len(top2) == 2 and abs(top2[0] - 440) < 5 and abs(top2[1] - 660) < 5, \
        f"expected peaks at 440 and 660 Hz, got {hc.peaks}; {why}"
    ratio = hc.peaks[1][1] / hc.peaks[0][1]
    assert ratio > 0.3, f"one talker much quieter than the other (peak ratio {ratio:.2f})"
    assert hc.peaks[2][1] < 0.2 * hc.peaks[1][1], f"a third strong peak: {hc.peaks}"
    assert hc.outside_rms < SILENT_RMS, f"sound outside the talks ({hc.outside_rms:.0f} RMS)"
    received = c.status.get("frames_received", 0)
    assert isinstance(received, int) and received >= 160, f"c received {received} frames from two 2 s talks"
