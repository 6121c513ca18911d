"""The three examples, and bench/stream_tone.py (the measuring tool that grew out of audio_chat),
as real processes on 127.0.0.1 (mDNS off; peers dial the printed address)."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.measure import read_wav, spectral_peaks

ROOT = Path(__file__).resolve().parents[2]
LISTEN = re.compile(r"^listening: (/ip4/127\.0\.0\.1/tcp/\d+/p2p/\w+)$")
STREAM_TONE = "bench/stream_tone.py"


def command(name: str) -> list[str]:
    """An example by its name (run as a module), or a script of the repository by its path."""
    if name.endswith(".py"):
        return [sys.executable, name]
    return [sys.executable, "-m", f"agent.mesh.examples.{name}"]


class Example:
    """One example process; a thread collects its stdout lines so tests can wait on them."""

    def __init__(self, name: str, *args: str, log_dir: Path) -> None:
        self.name = name
        self.stderr_path = log_dir / f"{Path(name).stem}-{time.monotonic_ns()}.err"
        self._stderr = self.stderr_path.open("wb")
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        self.proc = subprocess.Popen(
            [*command(name), "--no-mdns", *args],
            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=self._stderr, text=True)
        self.lines: list[str] = []
        self._cond = threading.Condition()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            with self._cond:
                self.lines.append(line.rstrip("\n"))
                self._cond.notify_all()
        with self._cond:
            self._cond.notify_all()

    def wait_for(self, pattern: str, timeout: float = 20.0, count: int = 1, start: int = 0) -> list[str]:
        """Wait until `count` lines from index `start` on match `pattern`; returns the matches."""
        rx = re.compile(pattern)
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                hits = [ln for ln in self.lines[start:] if rx.search(ln)]
                if len(hits) >= count:
                    return hits
                left = deadline - time.monotonic()
                if left <= 0 or (self.proc.poll() is not None and not self._reader.is_alive()):
                    raise AssertionError(f"{self.name}: {count} x {pattern!r} not seen in {timeout} s\n"
                                         + self.dump())
                self._cond.wait(min(left, 0.5))

    def address(self, timeout: float = 20.0) -> str:
        line = self.wait_for(LISTEN.pattern, timeout)[0]
        m = LISTEN.match(line)
        assert m is not None
        return m.group(1)

    def finish(self, sig: int | None = signal.SIGTERM, timeout: float = 15.0) -> int:
        """Send `sig` (None: just wait) and return the exit status; kills it if it hangs."""
        if sig is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)
            raise AssertionError(f"{self.name} did not exit within {timeout} s\n" + self.dump()) from None
        self._reader.join(5)
        return code

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(5)
        self._reader.join(5)
        self._stderr.close()

    def dump(self) -> str:
        with self._cond:
            out = "\n".join(self.lines[-60:])
        err = self.stderr_path.read_text(errors="replace")[-3000:] if self.stderr_path.exists() else ""
        return f"--- stdout of {self.name}\n{out}\n--- stderr\n{err}"


@pytest.fixture
def spawn(tmp_path: Path) -> Iterator:
    started: list[Example] = []

    def start(name: str, *args: str) -> Example:
        ex = Example(name, *args, log_dir=tmp_path)
        started.append(ex)
        return ex

    try:
        yield start
    finally:
        for ex in started:
            ex.kill()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def dominant_hz(path: Path) -> tuple[float, float]:
    """(seconds of audio, strongest frequency) of a 16 kHz mono S16LE WAV file."""
    samples, rate = read_wav(path)
    assert rate == 16000, f"{path}: {rate} Hz"
    return len(samples) / rate, spectral_peaks(samples, rate, k=1)[0][0]


def test_every_example_has_help():
    for name in ("audio_chat", "discovery_monitor", "resilient_pubsub", STREAM_TONE):
        run = subprocess.run([*command(name), "--help"], cwd=ROOT,
                             capture_output=True, text=True, timeout=30)
        assert run.returncode == 0, run.stderr
        for option in ("--port", "--dial", "--identity", "--mdns", "--no-mdns"):
            assert option in run.stdout, (name, option)


def test_audio_chat_listen_and_dial(spawn):
    """The short example: the dialling side requests a stream, sends 50 frames and closes it;
    the listening side accepts and counts them."""
    rx = spawn("audio_chat", "--no-kad")
    tx = spawn("audio_chat", "--no-kad", "--dial", rx.address(), "--frames", "50")
    assert tx.finish(None, timeout=30) == 0, tx.dump()
    tx.wait_for(r"^requested stream [0-9a-f]+ from …\w+$")
    tx.wait_for(r"^…\w+ accepted stream [0-9a-f]+$")
    tx.wait_for(r"^sent 50 frames on stream [0-9a-f]+ and closed it$")
    tx.wait_for(r"^stream [0-9a-f]+ with …\w+ ended \(normal\)$")
    rx.wait_for(r"^accepted stream [0-9a-f]+ from …\w+$")
    [ended] = rx.wait_for(r"^stream [0-9a-f]+ with …\w+ ended \(closed by peer: normal\): \d+ frames received$")
    received = int(ended.split(": ")[-1].split()[0])
    # Every frame is sent on a reliable stream; the sender's queue drops its oldest frames only
    # when its writer falls behind for a whole buffer, which a loaded machine can cause.
    assert 45 <= received <= 50, ended
    assert rx.finish(signal.SIGTERM) == 0, rx.dump()
    rx.wait_for(rf"^summary: stopped by SIGTERM; 1 streams accepted, {received} frames received$")


def test_stream_tone_receiver_records_the_tone(spawn, tmp_path):
    wav_path = tmp_path / "heard.wav"
    rx = spawn(STREAM_TONE, "--no-kad", "--record", str(wav_path), "--streams", "1")
    tx = spawn(STREAM_TONE, "--no-kad", "--dial", rx.address(), "--send-tone", "440", "--seconds", "2")
    assert tx.finish(None, timeout=30) == 0, tx.dump()
    assert rx.finish(None, timeout=15) == 0, rx.dump()

    [sent] = tx.wait_for(r"^summary: sent stream")
    assert re.search(r": 100 frames sent", sent), sent
    [got] = rx.wait_for(r"^summary: received stream")
    m = re.search(r": (\d+) frames received, (\d+) lost, (\d+) dropped; latency p50 ([\d.]+) ms", got)
    assert m, got
    received, lost = int(m.group(1)), int(m.group(2))
    assert received + lost == 100 and received >= 90, got
    assert "closed: closed by peer: normal" in got
    seconds, hz = dominant_hz(wav_path)
    assert 1.9 <= seconds <= 2.1, seconds  # lost frames are written as silence, so timing holds
    assert abs(hz - 440) < 5, hz


def test_stream_tone_reject_and_stats_mode(spawn):
    """A receiver that rejects: the sender reports the refusal and sends nothing."""
    rx = spawn(STREAM_TONE, "--no-kad", "--reject")
    tx = spawn(STREAM_TONE, "--no-kad", "--dial", rx.address(), "--send-tone", "300", "--seconds", "1")
    assert tx.finish(None, timeout=30) == 0, tx.dump()
    tx.wait_for(r"not accepted: rejected: not listening")
    tx.wait_for(r"frames sent 0, frames received 0")
    rx.wait_for(r"rejected stream [0-9a-f]+ from")
    assert rx.finish(signal.SIGINT) == 0, rx.dump()
    rx.wait_for(r"^summary: stopped by SIGINT")


def test_discovery_monitor_reports_connect_and_disconnect(spawn):
    a = spawn("discovery_monitor", "--no-kad", "--interval", "1")
    a_addr = a.address()
    b = spawn("discovery_monitor", "--no-kad", "--json", "--interval", "1", "--dial", a_addr)
    started = json.loads(b.wait_for(r'"event": "Started"')[0])
    b_id = started["local_peer_id"]
    connected = json.loads(b.wait_for(r'"event": "PeerConnected"')[0])
    assert connected["peer_id"] == a_addr.rsplit("/", 1)[1]
    table = json.loads(b.wait_for(r'"event": "PeerTable".*' + connected["peer_id"])[0])
    assert [p["peer_id"] for p in table["peers"]] == [connected["peer_id"]]
    a.wait_for(rf"PeerConnected\s+{b_id} via /ip4/127\.0\.0\.1/tcp/")
    a.wait_for(rf"^    {b_id} ")  # a row of a's table

    assert b.finish(signal.SIGTERM) == 0, b.dump()
    summary = json.loads(b.wait_for(r'"event": "Summary"')[0])
    assert summary["stopped_by"] == "SIGTERM" and summary["connected"] == 1
    a.wait_for(rf"PeerDisconnected\s+{b_id} after")
    assert a.finish(signal.SIGTERM) == 0, a.dump()
    a.wait_for(r"^summary: stopped by SIGTERM; discovered \d+, connected 1, disconnected 1, connected now 0")


def test_resilient_pubsub_survives_a_peer_killed_and_restarted(spawn, tmp_path):
    port = free_port()
    key = tmp_path / "a.key"
    a_args = ("--no-kad", "--port", str(port), "--identity", str(key), "--name", "A", "--every-ms", "200")
    a = spawn("resilient_pubsub", *a_args)
    a_addr = a.address()
    b = spawn("resilient_pubsub", "--no-kad", "--name", "B", "--every-ms", "200", "--dial", a_addr)
    b_addr = b.address()
    b.wait_for(r"recv A #\d+ from", count=3)
    a.wait_for(r"recv B #\d+ from", count=3)

    mark = len(b.lines)  # before the kill: b may notice (and print) it before wait() returns here
    a.proc.kill()  # SIGKILL: no goodbye
    a.proc.wait(5)
    b.wait_for(r"disconnected " + a_addr.rsplit("/", 1)[1], start=mark)
    b.wait_for(r"redialling", start=mark)
    sent_during = len(b.wait_for(r"sent #\d+ \(0 peers\)", start=mark, count=3))
    assert sent_during >= 3  # b keeps publishing while alone

    # Same identity and port; it knows b too (a restarted node redials its peers at once; b's own
    # redial may be held back by py-libp2p's 60 s negative dial cache, see the report).
    a2 = spawn("resilient_pubsub", *a_args, "--dial", b_addr)
    assert a2.address() == a_addr
    mark = len(b.lines)
    b.wait_for(r"recv A #\d+ from .*\(peer restarted\)", start=mark, timeout=30)
    b.wait_for(r"recv A #\d+ from", start=mark, count=5, timeout=20)
    a2.wait_for(r"recv B #\d+ from", count=3)

    assert b.finish(signal.SIGTERM) == 0, b.dump()
    [summary] = b.wait_for(r"^summary: stopped by SIGTERM")
    assert re.search(r"connects 2, disconnects 1; …\w+: \d+ received, \d+ missing, 1 restarts", summary), summary
    assert a2.finish(signal.SIGTERM) == 0, a2.dump()
