"""The real target, emulated: a Debian 12 arm64 root (what 64-bit Raspberry Pi OS is) built with
debootstrap + qemu-user-static, scripts/install.sh run in it as on a Pi 4, then booted with
systemd-nspawn so that the arm64 systemd is PID 1 (under qemu-user emulation).

Inside: real ALSA (pyalsaaudio built for arm64) on a file/null plugin configuration (a 440 Hz
tone as the microphone, a file as the speaker), fake GPIO (scripted presses). Outside: an agent
on this machine, in a network namespace joined to the container's by a veth pair the test
creates (10.213.64.0/24, nothing on this machine's own network). Checked: `systemctl is-active
avi-agent` (READY=1 came), `systemctl status` shows the STATUS= line, the host's agent receives
the arm64 node's status message and hears its tone.

The root and the built wheels are cached outside the checkout (tests/install/arm64root.py): the
first run builds them (~9 min here), later runs reuse them. Timings are printed (-s).

    .venv/bin/python -m pytest tests/install/test_arm64_boot.py -s -q
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest

from agent.measure import analyse_wav
from tests.agent.test_service import AgentProc
from . import arm64root as a64
from .test_systemd_nspawn import Container

pytestmark = pytest.mark.slow

NET = "10.213.64"
PORT = 4001
TONE_HZ = 500.0  # 10 whole cycles per 20 ms frame: seamless however the file plugin chunks it
RATE = 16000
# Emulation makes everything 5-20x slower than on a Pi: a drop-in gives the start more time
# (TimeoutStartSec=30 is for native speed; the agent still has to send READY=1 itself).
SLOW_START = "[Service]\nTimeoutStartSec=180\nWatchdogSec=60\n"
ASOUND = """# test sound "card": capture reads a file, playback writes one (ALSA file + null plugins)
pcm.avitest_mic { type file; slave.pcm "null"; file "/dev/null"; infile "/var/lib/avi-test/mic.raw"; format "raw" }
pcm.avitest_spk { type file; slave.pcm "null"; file "/var/lib/avi-test/played.raw"; format "raw" }
"""


@dataclass
class Run:
    root: Path
    ct: Container
    host: AgentProc
    heard: Path
    installed_config: str
    install_log: str
    times: dict[str, float] = field(default_factory=dict)


class Arm64Container(Container):
    """test_systemd_nspawn's container, on a prepared root in our network namespace."""

    def __init__(self, root: Path, netns: str) -> None:
        super().__init__(Path("/nonexistent-avi-arm64"))  # (no base of its own to remove)
        self.merged = root
        self.netns = netns

    def boot(self, timeout: float = 600) -> None:  # type: ignore[override]
        self.nspawn = subprocess.Popen(
            ["systemd-nspawn", "--keep-unit", "--register=no", "--quiet", "-D", str(self.merged), "-b",
             f"--network-namespace-path=/run/netns/{self.netns}", "--resolv-conf=off", "--timezone=off"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.pid1 is None:
                self.pid1 = self._find_pid1()
            if self.pid1 is not None:
                state = self.sh("systemctl is-system-running", check=False, timeout=120).stdout.strip()
                if state in ("running", "degraded"):
                    return
            if self.nspawn.poll() is not None:
                raise RuntimeError(f"systemd-nspawn exited {self.nspawn.returncode}")
            time.sleep(1)
        raise RuntimeError(f"the arm64 systemd did not finish booting in {timeout:g} s")

    def stop(self) -> None:
        self.mounted = []  # the overlay belongs to arm64root.overlay()
        super().stop()


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, timeout=30)


@contextlib.contextmanager
def veth_pair(tag: str) -> Iterator[tuple[str, str]]:
    """Two network namespaces joined by a veth pair: (host side, container side)."""
    h, c = f"{tag}-h", f"{tag}-c"
    try:
        _ip("netns", "add", h)
        _ip("netns", "add", c)
        _ip("link", "add", f"{tag}h", "type", "veth", "peer", "name", f"{tag}c")
        for ns, dev, addr in ((h, f"{tag}h", f"{NET}.1/24"), (c, f"{tag}c", f"{NET}.2/24")):
            _ip("link", "set", dev, "netns", ns)
            _ip("-n", ns, "addr", "add", addr, "dev", dev)
            _ip("-n", ns, "link", "set", dev, "up")
            _ip("-n", ns, "link", "set", "lo", "up")
        yield h, c
    finally:
        for ns in (h, c):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)


def tone_pcm(seconds: float) -> bytes:
    t = np.arange(int(RATE * seconds)) / RATE
    return (np.sin(2 * np.pi * TONE_HZ * t) * 0.5 * 32767).astype("<i2").tobytes()


def heard_tone(path: Path) -> tuple[float, float | None]:
    """(seconds of sound, strongest frequency) in a WAV still being written (raw after the header)."""
    if not path.exists() or path.stat().st_size < 44 + 640:
        return 0.0, None
    tone = analyse_wav(path, growing=True, spectrum_of="loud")
    return tone.sound_s, (tone.peak_hz if tone.loud_frames >= 10 else None)


def container_config(host_addr: str, group: str) -> str:
    presses = ", ".join(f"{{ at_s = {t}, duration_s = 3.0 }}" for t in range(20, 1200, 15))
    return f"""# written by tests/install/test_arm64_boot.py (what an admin edits after install.sh)
[node]
name = "pi-arm64"

[mesh]
listen_port = {PORT}
enable_mdns = false
enable_kad = false
bootstrap_peers = ["{host_addr}"]

[audio]
backend = "alsa"
capture_device = "avitest_mic"
playback_device = "avitest_spk"

[gpio]
backend = "fake"
fake_presses = [{presses}]

[talk]
groups = ["{group}"]
# PCM: Opus encoding under emulation (5-20x slower than a Pi) would leave too little CPU for
# real time; the codec negotiation itself is tested natively.
codec = "pcm"

[status]
interval_s = 2.0
"""


def host_config(work: Path, group: str) -> Path:
    path = work / "host.toml"
    path.write_text(f"""[node]
name = "host-x86"

[mesh]
listen_host = "{NET}.1"
listen_port = {PORT}
enable_mdns = false
enable_kad = false
identity_path = "{work / 'host.key'}"

[audio]
backend = "fake"

[audio.fake_source]
kind = "silence"

[audio.fake_sink]
kind = "wav"
path = "{work / 'heard.wav'}"

[gpio]
backend = "fake"

[talk]
groups = ["{group}"]

[status]
interval_s = 2.0

[logging]
journal = "never"
""")
    return path


def _tools() -> None:
    missing = [p for t, p in (("debootstrap", "debootstrap"), ("systemd-nspawn", "systemd-container"))
               if shutil.which(t) is None]
    if missing:
        subprocess.run(["apt-get", "install", "-y", "-qq", *missing], capture_output=True, timeout=600,
                       env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"})
    for t in ("debootstrap", "systemd-nspawn"):
        if shutil.which(t) is None:
            pytest.skip(f"{t} is missing and could not be installed (scripts/bootstrap.sh installs it)")


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Run]:
    if os.geteuid() != 0:
        pytest.skip("needs root (debootstrap, mounts, network namespaces, systemd-nspawn)")
    _tools()
    try:
        a64.ensure_binfmt()
    except a64.Unavailable as exc:
        pytest.skip(f"cannot run arm64 programs here: {exc}")
    work = tmp_path_factory.mktemp("arm64")
    log = work / "build.log"
    times: dict[str, float] = {}
    t0 = time.monotonic()
    layer, base_s, inst_s = a64.build_installed(a64.frozen_copy(work / "layer-src"), log)
    times["layers (cached: 0)"] = time.monotonic() - t0
    times["debootstrap layer"] = base_s or 0.0
    times["install.sh layer"] = inst_s or 0.0
    group = f"a64-{os.getpid()}"
    tag = f"a64{os.getpid() % 100000}"
    with contextlib.ExitStack() as stack:
        root = stack.enter_context(a64.overlay(layer))
        # install.sh as a user runs it, with this checkout's source, on the cached root: apt finds
        # its packages, pip only rebuilds avi-agent. The config comes fresh from this install.sh.
        (root / "etc/avi-agent/agent.toml").unlink(missing_ok=True)
        (root / "opt/avi-agent/.installed").unlink(missing_ok=True)
        src = a64.frozen_copy(work / "src")
        t1 = time.monotonic()
        a64.run_install(root, src, log, timeout=1800)
        times["install.sh (this source)"] = time.monotonic() - t1
        installed_config = (root / "etc/avi-agent/agent.toml").read_text()

        h_ns, c_ns = stack.enter_context(veth_pair(tag))
        host = AgentProc(["run", "--config", str(host_config(work, group))],
                         prefix=["ip", "netns", "exec", h_ns])
        stack.callback(host.kill)
        host_addr = host.address(timeout=60)

        # The node's config, the test sound card and the slow-start drop-in.
        (root / "etc/avi-agent/agent.toml").write_text(container_config(host_addr, group))
        (root / "etc/asound.conf").write_text(ASOUND)
        uid, gid = (int(x) for x in next(line.split(":")[2:4] for line in
                                         (root / "etc/passwd").read_text().splitlines() if line.startswith("avi:")))
        snd = root / "var/lib/avi-test"
        snd.mkdir(parents=True, exist_ok=True)
        (snd / "mic.raw").write_bytes(tone_pcm(600.0))  # (past its end ALSA repeats stale data)
        for p in (snd, snd / "mic.raw"):
            os.chown(p, uid, gid)
        drop = root / "etc/systemd/system/avi-agent.service.d"
        drop.mkdir(parents=True, exist_ok=True)
        (drop / "emulated.conf").write_text(SLOW_START + "ReadWritePaths=/var/lib/avi-test\n")

        ct = Arm64Container(root, c_ns)
        stack.callback(ct.stop)
        t2 = time.monotonic()
        try:
            ct.boot()
        except (RuntimeError, OSError) as exc:
            pytest.fail(f"cannot boot the arm64 root with systemd-nspawn: {exc}")
        times["boot to running"] = time.monotonic() - t2
        yield Run(root, ct, host, work / "heard.wav", installed_config, log.read_text() if log.exists() else "",
                  times)
        print("\narm64 emulated boot, seconds: " + ", ".join(f"{k} {v:.0f}" for k, v in times.items()))


def test_install_sh_installs_the_real_devices_on_a_pi(run: Run) -> None:
    assert 'backend = "alsa"' in run.installed_config and 'backend = "rpi"' in run.installed_config
    # pyalsaaudio, systemd-python and fastecdsa (gmp) were built for arm64 by pip.
    p = run.ct.sh("/opt/avi-agent/venv/bin/python -c 'import platform, alsaaudio, systemd.daemon, fastecdsa, "
                  "RPi; print(platform.machine())'", timeout=300)
    assert p.stdout.strip() == "aarch64"


def test_agent_becomes_active_with_a_status_line(run: Run) -> None:
    t0 = time.monotonic()
    run.ct.wait_for("avi-agent active (READY=1)", lambda: run.ct.prop("ActiveState") == "active", timeout=300)
    run.times["start to active"] = time.monotonic() - t0
    assert run.ct.sh("systemctl is-active avi-agent").stdout.strip() == "active"
    run.ct.wait_for("a STATUS= line with the peer", lambda: "1 peer" in run.ct.prop("StatusText"), timeout=300)
    status, text = run.ct.status_and_line()
    assert f'Status: "{text}"' in status, status
    assert text.startswith("pi-arm64 ready") and "fake gpio" in text and "fake audio" not in text, text


def test_host_receives_status_and_hears_the_tone(run: Run) -> None:
    run.host.wait_log(r"fleet: first status from pi-arm64", timeout=300)
    deadline = time.monotonic() + 300
    sound, peak = 0.0, None
    while time.monotonic() < deadline:
        sound, peak = heard_tone(run.heard)
        if sound >= 1.0 and peak is not None:
            break
        time.sleep(2)
    journal = run.ct.sh("journalctl -u avi-agent --no-pager -n 40", check=False).stdout
    assert sound >= 1.0, f"the host heard {sound:.2f} s of sound\n{journal}\n{run.host.log()[-3000:]}"
    assert peak is not None and abs(peak - TONE_HZ) < 5, f"strongest frequency {peak} Hz, not {TONE_HZ}"
    rc, _ = run.host.signal_and_wait(signal.SIGTERM)
    assert rc == 0
