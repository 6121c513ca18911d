"""`avi-agent selftest`: passes on fake devices end to end (a simulated loopback), fails clearly
with a missing device or when nothing comes back; the configured gains show in its level."""

from __future__ import annotations

import re

import pytest

from agent.config import AgentConfig
from agent.selftest import analyse, run_selftest, tone
from hw.audio.base import AudioFormat
from tests.agent.test_rough_edges import run_cli


def test_selftest_passes_on_fake_devices() -> None:
    r = run_cli("selftest", "--seconds", "1")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "selftest: PASS" in r.stdout
    assert re.search(r"frequency found 1000(\.\d)? Hz", r.stdout)
    m = re.search(r"level (-?[\d.]+) dBFS rms, peak (-?[\d.]+) dBFS", r.stdout)
    assert m and float(m.group(1)) == pytest.approx(-9.0, abs=0.3) and float(m.group(2)) == pytest.approx(-6.0, abs=0.3)
    lat = float(re.search(r"latency ([\d.]+) ms", r.stdout).group(1))
    assert 0 < lat < 1000


async def test_gains_change_the_selftest_level_by_the_right_db() -> None:
    lines: list[str] = []
    cfg = AgentConfig(audio={"capture_gain_db": -6.0, "playback_gain_db": -4.0})
    assert await run_selftest(cfg, 0.5, 700.0, out=lines.append) == 0
    level = float(re.search(r"level (-?[\d.]+) dBFS", "\n".join(lines)).group(1))
    assert level == pytest.approx(-9.0 - 10.0, abs=0.3)


def test_selftest_fails_clearly_with_a_missing_device() -> None:
    r = run_cli("selftest", env={"AVI_AUDIO__BACKEND": "alsa", "AVI_AUDIO__CAPTURE_DEVICE": "nope"})
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert "selftest: FAIL: cannot open the capture device 'nope'" in r.stdout


def test_analysis_says_why_when_nothing_comes_back() -> None:
    fmt = AudioFormat()
    silence = [(i * 20_000, bytes(fmt.frame_bytes)) for i in range(100)]
    r = analyse(fmt, silence, 300_000, 1000.0)
    assert not r.ok and "did not come back" in r.reason and r.frequency_hz is None
    # the wrong tone is not a pass either
    frames = tone(fmt, 500.0, 1.0)
    rec = [(i * 20_000, bytes(fmt.frame_bytes)) for i in range(15)]
    rec += [((15 + i) * 20_000, f) for i, f in enumerate(frames)]
    r = analyse(fmt, rec, 300_000, 1000.0)
    assert not r.ok and "recorded 500 Hz, played 1000 Hz" in r.reason
    r = analyse(fmt, rec, 300_000, 500.0)
    assert r.ok and r.latency_ms == pytest.approx(0.0, abs=6) and r.frequency_hz == pytest.approx(500, abs=2)
