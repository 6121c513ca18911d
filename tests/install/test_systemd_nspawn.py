"""The whole path under a REAL systemd: a container (systemd-nspawn, systemd as PID 1) booted on
a throwaway overlay of this machine's own root. Inside it: the provisioned card's early-boot hook,
then avi-agent-firstboot.service, which runs install.sh for real (apt check, useradd, venv, unit,
enable) and starts avi-agent; then systemctl start / READY / status / stop / restart-on-crash /
no restart on exit 78.

The only test-specific piece is a drop-in that selects the simulated audio and GPIO (there is
no sound card or GPIO in the container), exactly what `systemctl edit avi-agent` would add.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from .util import ROOT, run, script_env

pytestmark = pytest.mark.slow

FAKE_HW = """[Service]
Environment=AVI_AUDIO__BACKEND=fake AVI_GPIO__BACKEND=fake
Environment=AVI_MESH__LISTEN_PORT=0 AVI_MESH__LISTEN_HOST=127.0.0.1 AVI_MESH__ENABLE_MDNS=false
Environment=AVI_MESH__BOOTSTRAP_PEERS=
"""


class Container:
    def __init__(self, base: Path) -> None:
        self.base = base
        self.merged = base / "merged"
        self.nspawn: subprocess.Popen | None = None
        self.pid1: int | None = None
        self.mounted: list[Path] = []

    def mount(self) -> None:
        self.base.mkdir(parents=True, exist_ok=True)
        subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2g", "tmpfs", str(self.base)], check=True)
        self.mounted.append(self.base)
        for d in ("up", "wk", "merged"):
            (self.base / d).mkdir()
        subprocess.run(["mount", "-t", "overlay", "overlay", "-o",
                        f"lowerdir=/,upperdir={self.base}/up,workdir={self.base}/wk", str(self.merged)],
                       check=True)
        self.mounted.append(self.merged)

    def boot(self) -> None:
        self.nspawn = subprocess.Popen(
            ["systemd-nspawn", "--keep-unit", "--register=no", "--quiet", "-D", str(self.merged), "-b"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            start_new_session=True)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.pid1 is None:
                self.pid1 = self._find_pid1()
            if self.pid1 is not None:
                state = self.sh("systemctl is-system-running", check=False).stdout.strip()
                if state in ("running", "degraded"):
                    return
            if self.nspawn.poll() is not None:
                raise RuntimeError(f"systemd-nspawn exited {self.nspawn.returncode}")
            time.sleep(0.3)
        raise RuntimeError("the container's systemd did not finish booting in 60 s")

    def _find_pid1(self) -> int | None:
        """The container's systemd: a descendant of nspawn (transient children come and go)."""
        assert self.nspawn is not None
        todo = [self.nspawn.pid]
        while todo:
            kids = subprocess.run(["pgrep", "-P", str(todo.pop())], capture_output=True, text=True).stdout.split()
            for k in kids:
                try:
                    if Path(f"/proc/{k}/comm").read_text().strip() == "systemd":
                        return int(k)
                except OSError:
                    continue
                todo.append(k)
        return None

    def sh(self, cmd: str, *, check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess:
        assert self.pid1 is not None
        p = subprocess.run(["nsenter", "-t", str(self.pid1), "-a", "/bin/bash", "-c", cmd],
                           capture_output=True, text=True, timeout=timeout, env=script_env())
        if check and p.returncode != 0:
            raise AssertionError(f"in container: {cmd!r} exited {p.returncode}\n{p.stdout}\n{p.stderr[-3000:]}")
        return p

    def prop(self, name: str) -> str:
        return self.sh(f"systemctl show -P {name} avi-agent").stdout.strip()

    def wait_for(self, what: str, pred, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if pred():
                return
            time.sleep(0.3)
        log = self.sh("journalctl -u avi-agent --no-pager -n 40", check=False).stdout
        raise AssertionError(f"timed out waiting for {what}\n{log}")

    def status_and_line(self, tries: int = 20) -> tuple[str, str]:
        """`systemctl status avi-agent` and the unit's StatusText as it was when status read it.
        The agent rewrites STATUS= whenever a figure changes (a peer's first status message):
        read the text before and after, and take a pair only when it did not change between."""
        for _ in range(tries):
            before = self.prop("StatusText")
            status = self.sh("systemctl status avi-agent --no-pager", check=False).stdout
            if self.prop("StatusText") == before:
                return status, before
            time.sleep(0.3)
        raise AssertionError(f"STATUS= changed during each of {tries} reads of systemctl status")

    def stop(self) -> None:
        if self.pid1 is None and self.nspawn is not None and self.nspawn.poll() is None:
            self.pid1 = self._find_pid1()
        if self.pid1 is not None and Path(f"/proc/{self.pid1}").exists():
            subprocess.run(["nsenter", "-t", str(self.pid1), "-a", "systemctl", "poweroff"],
                           capture_output=True, timeout=30)
        if self.nspawn is not None:
            try:
                self.nspawn.wait(timeout=20)
            except subprocess.TimeoutExpired:
                if self.pid1 is not None:  # killing nspawn does not stop the container's systemd
                    try:
                        os.kill(self.pid1, 9)
                    except ProcessLookupError:
                        pass
                self.nspawn.kill()
                self.nspawn.wait(timeout=10)
        for m in reversed(self.mounted):
            subprocess.run(["umount", "-l", str(m)], capture_output=True)
        if not os.path.ismount(self.base):
            shutil.rmtree(self.base, ignore_errors=True)


@pytest.fixture(scope="module")
def ct(tmp_path_factory: pytest.TempPathFactory):
    if os.geteuid() != 0:
        pytest.skip("needs root to boot a container")
    if shutil.which("systemd-nspawn") is None:
        subprocess.run(["apt-get", "install", "-y", "-qq", "systemd-container"], capture_output=True, timeout=300)
        if shutil.which("systemd-nspawn") is None:
            pytest.skip("systemd-nspawn missing and `apt-get install systemd-container` failed")
    c = Container(Path(f"/run/avi-nspawn-test-{os.getpid()}"))
    try:
        try:
            c.mount()
            c.boot()
        except (subprocess.CalledProcessError, RuntimeError, OSError) as exc:
            pytest.skip(f"cannot boot a systemd container here: {exc}")
        # The card: provisioned onto /boot/firmware of the container's tree.
        boot = c.merged / "boot/firmware"
        boot.mkdir(parents=True, exist_ok=True)
        (boot / "cmdline.txt").write_text("console=tty1 root=PARTUUID=4e639091-02 rootwait\n")
        p = run([str(ROOT / "scripts/provision"), str(boot), "--name", "pi-ct", "--group", "crew",
                 "--identity", "new"])
        c.peer = p.stdout.split("\t")[1]
        yield c
    finally:
        c.stop()


def test_first_boot_installs_and_starts_the_agent(ct: Container) -> None:
    # What systemd.run= does on the first boot of the card.
    ct.sh("/boot/firmware/avi/firstrun.sh")
    assert "systemd.run" not in ct.sh("cat /boot/firmware/cmdline.txt").stdout
    assert ct.sh("systemctl is-enabled avi-agent-firstboot").stdout.strip() == "enabled"
    ct.sh("mkdir -p /etc/systemd/system/avi-agent.service.d && cat >/etc/systemd/system/avi-agent.service.d/fake-hw.conf <<'EOF'\n"
          + FAKE_HW + "EOF\nsystemctl daemon-reload")
    # What the next boot does: the first-boot unit (install.sh for real, config, key, start).
    p = ct.sh("systemctl start avi-agent-firstboot.service", check=False, timeout=400)
    log = ct.sh("journalctl -u avi-agent-firstboot --no-pager", check=False).stdout
    assert p.returncode == 0, log[-4000:]
    assert "created system user avi" in log and "first boot finished" in log
    assert set(ct.sh("id -nG avi").stdout.split()) == {"avi", "audio", "gpio"}
    assert ct.sh("stat -c '%a %U' /var/lib/avi-agent/identity.key").stdout.strip() == "600 avi"
    assert ct.sh("systemctl is-enabled avi-agent").stdout.strip() == "enabled"
    ct.wait_for("avi-agent active", lambda: ct.prop("ActiveState") == "active", timeout=60)
    # READY=1 came (Type=notify: active only after it), with the provisioned identity.
    ct.wait_for("the peer id in the journal",
                lambda: ct.peer in ct.sh("journalctl -u avi-agent --no-pager", check=False).stdout)


def test_status_shows_the_status_line(ct: Container) -> None:
    ct.wait_for("a STATUS= line", lambda: ct.prop("StatusText") != "")
    status, text = ct.status_and_line()
    assert "Active: active (running)" in status
    assert f'Status: "{text}"' in status, status
    assert "peer" in text, text


def test_crash_restarts(ct: Container) -> None:
    pid = ct.prop("MainPID")
    restarts = int(ct.prop("NRestarts"))
    ct.sh(f"kill -SEGV {pid}")
    ct.wait_for("a restart after SIGSEGV",
                lambda: ct.prop("MainPID") not in (pid, "0") and ct.prop("ActiveState") == "active",
                timeout=45)
    assert int(ct.prop("NRestarts")) == restarts + 1


def test_stop_is_clean(ct: Container) -> None:
    t0 = time.monotonic()
    ct.sh("systemctl stop avi-agent", timeout=30)
    assert time.monotonic() - t0 < 10, "stop took longer than TimeoutStopSec"
    assert ct.prop("ActiveState") == "inactive"
    assert ct.prop("Result") == "success"
    log = ct.sh("journalctl -u avi-agent --no-pager -n 30", check=False).stdout
    assert "SIGKILL" not in log and "timed out" not in log.lower()


def test_config_error_does_not_restart(ct: Container) -> None:
    ct.sh("cp /etc/avi-agent/agent.toml /root/agent.toml.good && "
          "printf '\\n[nodez]\\nname = 1\\n' >> /etc/avi-agent/agent.toml")
    try:
        p = ct.sh("systemctl start avi-agent", check=False, timeout=60)
        assert p.returncode != 0
        ct.wait_for("failed state", lambda: ct.prop("ActiveState") == "failed")
        assert ct.prop("ExecMainStatus") == "78"
        # (a manual start resets NRestarts: count from the failure on)
        restarts = int(ct.prop("NRestarts"))
        time.sleep(4)  # RestartSec=2: a restart would have happened by now
        assert ct.prop("ActiveState") == "failed"
        assert int(ct.prop("NRestarts")) == restarts
        log = ct.sh("journalctl -u avi-agent --no-pager -n 20", check=False).stdout
        assert "nodez" in log, log
    finally:
        ct.sh("cp /root/agent.toml.good /etc/avi-agent/agent.toml && systemctl reset-failed avi-agent", check=False)
    # Fixed config: starts again.
    ct.sh("systemctl start avi-agent", timeout=60)
    assert ct.prop("ActiveState") == "active"


def test_missing_sound_card_is_degraded_not_failed_then_recovers(ct: Container) -> None:
    """Under real systemd: a sound card that is missing at start does not hold back READY=1
    (Type=notify would time the start out and restart for ever): the unit is active, STATUS=
    says degraded and what is missing; when the device appears the agent opens it (back-off)
    and the fault clears, without a restart."""
    wav = "/var/lib/avi-agent/mic.wav"
    ct.sh(f"rm -f {wav}; mkdir -p /etc/systemd/system/avi-agent.service.d && "
          "cat >/etc/systemd/system/avi-agent.service.d/mic.conf <<'EOF'\n[Service]\n"
          f"Environment=AVI_AUDIO__FAKE_SOURCE__KIND=wav AVI_AUDIO__FAKE_SOURCE__PATH={wav} "
          "AVI_AUDIO__REOPEN_INTERVAL_S=0.5\nEOF\nsystemctl daemon-reload")
    try:
        ct.sh("systemctl restart avi-agent", timeout=60)  # returns once READY=1 came
        assert ct.prop("ActiveState") == "active"
        ct.wait_for("STATUS=degraded: no sound card",
                    lambda: ct.prop("StatusText").startswith("degraded: no sound card (") and "mic.wav" in ct.prop("StatusText"))
        status = ct.sh("systemctl status avi-agent --no-pager", check=False).stdout
        assert "Active: active (running)" in status and 'Status: "degraded: no sound card' in status, status
        pid, restarts = ct.prop("MainPID"), ct.prop("NRestarts")
        # The device appears (a 1 s WAV, readable by the service user).
        ct.sh("python3 -c \"import wave; w = wave.open('/tmp/m.wav', 'wb'); w.setnchannels(1); w.setsampwidth(2); "
              "w.setframerate(16000); w.writeframes(bytes(32000)); w.close()\" && "
              f"install -o avi -g avi -m 0600 /tmp/m.wav {wav}")
        ct.wait_for("the fault to clear", lambda: ct.prop("StatusText").startswith("pi-ct ready")
                    and "no errors" in ct.prop("StatusText"), timeout=60)
        assert (ct.prop("MainPID"), ct.prop("NRestarts")) == (pid, restarts), "recovered without a restart"
        log = ct.sh("journalctl -u avi-agent --no-pager -n 60", check=False).stdout
        assert "recovered: audio" in log, log
    finally:
        ct.sh("rm -f /etc/systemd/system/avi-agent.service.d/mic.conf; systemctl daemon-reload; "
              "systemctl restart avi-agent", check=False, timeout=60)
