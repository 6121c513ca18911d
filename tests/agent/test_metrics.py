"""/metrics and /status of real agent processes, scraped while one talks to the other.

Two `avi-agent run` processes with fake devices on 127.0.0.1: a's fake button is held for 6 s every
8 s while its fake microphone plays a 440 Hz tone at half scale; b hears it. The scrapes are
parsed with prometheus_client's own parser.
"""

from __future__ import annotations

import json
import re
import signal
import time
from pathlib import Path

import pytest
import trio
from prometheus_client.parser import text_string_to_metric_families

from agent.httpd import http_get
from agent.levels import dbfs
from tests.agent.test_service import AgentProc, procs, write_config  # noqa: F401 (fixture)

METRICS_RE = re.compile(r"metrics: http://([0-9.]+):(\d+)/metrics")


def scrape(addr: tuple[str, int], path: str = "/metrics") -> tuple[int, bytes]:
    return trio.run(http_get, addr[0], addr[1], path)


def samples(addr: tuple[str, int]) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    status, body = scrape(addr)
    assert status == 200
    out = {}
    for fam in text_string_to_metric_families(body.decode()):
        for s in fam.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def value(smp: dict, name: str, **labels: str) -> float:
    return smp[(name, tuple(sorted(labels.items())))]


def metrics_addr(p: AgentProc) -> tuple[str, int]:
    m = p.wait_log(METRICS_RE.pattern, 20)
    return m.group(1), int(m.group(2))


def test_metrics_while_a_talk_runs(tmp_path: Path, procs) -> None:
    b_cfg = write_config(tmp_path / "b.toml", "pi-b", extra='[metrics]\nlisten = "127.0.0.1:0"\n')
    b = AgentProc(["run", "--config", str(b_cfg)], env={"AVI_AUDIO__PLAYBACK_GAIN_DB": "-6"})
    procs.append(b)
    b_addr = b.address()
    a_cfg = write_config(tmp_path / "a.toml", "pi-a", extra=(
        '[metrics]\nlisten = "127.0.0.1:0"\n'
        '[audio.fake_source]\nkind = "tone"\nfrequency_hz = 440.0\nlevel = 0.5\n'
        ))
    # ([gpio] and [mesh] are in the base file already: these two come through the environment)
    a = AgentProc(["run", "--config", str(a_cfg)], env={
        "AVI_MESH__BOOTSTRAP_PEERS": json.dumps([b_addr]),
        # presses every 8 s: on a busy machine the agents may take several seconds to connect
        "AVI_GPIO__FAKE_PRESSES": json.dumps([{"at_s": at, "duration_s": 6.0} for at in (4, 12, 20, 28)])})
    procs.append(a)
    ma, mb = metrics_addr(a), metrics_addr(b)
    a.wait_log(r"talking to group default: 1 (peer|member)", 45)
    time.sleep(1.5)  # a second of talk (the fake press holds 6 s)
    first = samples(mb)
    time.sleep(1.5)
    second = samples(mb)
    sa = samples(ma)

    # counters rise while the talk runs
    assert value(second, "avi_audio_frames_received_total") > value(first, "avi_audio_frames_received_total") > 0
    assert value(sa, "avi_audio_frames_sent_total") > 0
    assert value(sa, "avi_talk_transmitting") == 1
    assert value(second, "avi_talk_receiving") == 1
    # the mouth-to-ear histogram has samples, its buckets are cumulative and end in +Inf = count
    count = value(second, "avi_mouth_to_ear_latency_seconds_count")
    assert count > 10
    assert value(second, "avi_mouth_to_ear_latency_seconds_bucket", le="+Inf") == count
    assert value(second, "avi_mouth_to_ear_latency_seconds_sum") > 0
    buckets = sorted((float(dict(k[1])["le"]), v) for k, v in second.items()
                     if k[0] == "avi_mouth_to_ear_latency_seconds_bucket")
    assert all(x[1] <= y[1] for x, y in zip(buckets, buckets[1:]))
    # levels: a half-scale sine is 20*log10(0.5/sqrt(2)) = -9.03 dBFS RMS, -6.02 dBFS peak
    assert value(sa, "avi_audio_level_rms_dbfs", direction="capture") == pytest.approx(dbfs(0.5 * 32767 / 2 ** 0.5), abs=0.2)
    assert value(sa, "avi_audio_level_peak_dbfs", direction="capture") == pytest.approx(-6.02, abs=0.2)
    # b plays a's tone 6 dB down (audio.playback_gain_db = -6); the codec (Opus or PCM) keeps a
    # steady tone's level within a fraction of a dB
    assert value(second, "avi_audio_gain_db", direction="playback") == -6
    assert value(second, "avi_audio_level_rms_dbfs", direction="playback") == pytest.approx(
        value(sa, "avi_audio_level_rms_dbfs", direction="capture") - 6.0, abs=1.0)
    # the rest of the families are there, with their conventional names
    for name in ("avi_peers", "avi_mesh_bytes_sent_total", "avi_audio_xruns_total", "avi_cpu_load_ratio",
                 "process_resident_memory_bytes", "process_cpu_seconds_total"):
        assert any(k[0] == name for k in sa), name
    assert value(sa, "avi_build_info", version=__import__("agent").__version__, node="pi-a",
                 peer_id=json.loads(scrape(ma, "/status")[1])["peer_id"]) == 1
    assert value(sa, "avi_talk_group_info", group="default") == 1
    assert value(sa, "avi_peers") == 1

    # /status: the node's own status message, for `avi-agent status`
    st = json.loads(scrape(ma, "/status")[1])
    assert st["node"] == "pi-a" and st["status"]["transmitting"] is True
    assert st["backends"] == {"audio": "fake", "gpio": "fake"}
    assert scrape(ma, "/nope")[0] == 404

    # SIGHUP applies a new capture gain: the measured level drops by exactly that much
    text = a_cfg.read_text()
    a_cfg.write_text(text.replace('[audio]\nbackend = "fake"\n', '[audio]\nbackend = "fake"\ncapture_gain_db = -10.0\n'))
    a.proc.send_signal(signal.SIGHUP)
    a.wait_log(r"reload: applied audio\.capture_gain_db", 10)
    want = value(sa, "avi_audio_level_rms_dbfs", direction="capture") - 10.0
    deadline = time.monotonic() + 15  # the 1 s level window after the change must first fill
    while True:
        after = samples(ma)
        got = value(after, "avi_audio_level_rms_dbfs", direction="capture")
        if abs(got - want) <= 0.1 or time.monotonic() > deadline:
            break
        time.sleep(0.3)
    assert value(after, "avi_audio_gain_db", direction="capture") == -10
    assert got == pytest.approx(want, abs=0.1)
