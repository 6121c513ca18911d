"""systemd/avi-agent.service: the settings the service relies on, and `systemd-analyze verify`.

`systemd-analyze verify` exits 0 even on syntax errors (it prints "... ignoring" warnings), so
its stderr is what is checked. It also insists that ExecStart= names an existing executable, so
the run uses a copy in a temporary directory whose ExecStart binary is a small executable stub
at a temporary path (arguments unchanged). It does not resolve User=/Group=/SupplementaryGroups=
(the avi user and gpio group do not exist on this machine), so those are checked by value here.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import tomllib
from collections import defaultdict
from pathlib import Path

import pytest

from agent.config import DEFAULT_CONFIG_PATH, EX_CONFIG, load_config

ROOT = Path(__file__).resolve().parents[2]
UNIT = ROOT / "systemd" / "avi-agent.service"
SHIPPED_CONFIG = ROOT / "config" / "agent.toml"
UNIT_NAME = "avi-agent.service"

needs_analyze = pytest.mark.skipif(shutil.which("systemd-analyze") is None,
                                   reason="systemd-analyze is not installed")


def parse_unit(text: str) -> dict[str, dict[str, list[str]]]:
    """section -> key -> every value in order (keys such as DeviceAllow= repeat)."""
    out: dict[str, dict[str, list[str]]] = defaultdict(lambda: defaultdict(list))
    section = None
    for raw in re.sub(r"\\\n", " ", text).splitlines():
        line = raw.strip()
        if not line or line[0] in "#;":
            continue
        m = re.fullmatch(r"\[(\w+)\]", line)
        if m:
            section = m.group(1)
            continue
        assert section is not None, f"setting outside a section: {line!r}"
        key, sep, value = line.partition("=")
        assert sep, f"not a key=value line: {line!r}"
        out[section][key.strip()].append(value.strip())
    return out


@pytest.fixture(scope="module")
def unit() -> dict[str, dict[str, list[str]]]:
    return parse_unit(UNIT.read_text())


def one(unit: dict, key: str, section: str = "Service") -> str:
    values = unit[section][key]
    assert len(values) == 1, f"{key}= given {len(values)} times"
    return values[0]


def test_service_lifecycle_settings(unit: dict) -> None:
    assert one(unit, "Type") == "notify"
    assert one(unit, "NotifyAccess") == "main"
    assert one(unit, "WatchdogSec") == "10"
    assert one(unit, "Restart") == "on-failure"
    assert one(unit, "RestartPreventExitStatus") == str(EX_CONFIG)
    assert one(unit, "TimeoutStopSec") == "10"
    assert one(unit, "ExecReload") == "/bin/kill -HUP $MAINPID"
    assert one(unit, "WantedBy", "Install") == "multi-user.target"


def test_exec_start_runs_the_installed_console_script_with_the_default_config(unit: dict) -> None:
    binary, *args = one(unit, "ExecStart").split()
    assert binary == "/opt/avi-agent/venv/bin/avi-agent"
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert Path(binary).name in scripts
    assert args == ["run", "--config", str(DEFAULT_CONFIG_PATH)]
    assert DEFAULT_CONFIG_PATH.parent == Path("/etc") / one(unit, "ConfigurationDirectory")


def test_user_groups_and_state_directory(unit: dict) -> None:
    # Checked by value: the user and groups need not exist on the machine running the tests.
    assert one(unit, "User") == "avi" and one(unit, "Group") == "avi"
    assert one(unit, "SupplementaryGroups").split() == ["audio", "gpio"]
    assert one(unit, "StateDirectory") == "avi-agent"
    assert one(unit, "ConfigurationDirectory") == "avi-agent"


def test_unit_environment_is_valid_agent_config(unit: dict) -> None:
    """Every AVI_* variable the unit sets is a known setting, and the identity key lands in the
    StateDirectory (checked through the real loader with the shipped config file)."""
    env = dict(v.split("=", 1) for v in unit["Service"]["Environment"])
    assert env["AVI_MESH__IDENTITY_PATH"] == "/var/lib/avi-agent/identity.key"
    cfg = load_config(SHIPPED_CONFIG, env)
    state_dir = Path("/var/lib") / one(unit, "StateDirectory")
    assert cfg.mesh.identity_path is not None and cfg.mesh.identity_path.parent == state_dir
    assert cfg.mesh.listen_host == "0.0.0.0"


def test_sandbox_keeps_sound_and_gpio(unit: dict) -> None:
    s = unit["Service"]
    for key, want in {"ProtectSystem": "strict", "ProtectHome": "yes", "PrivateTmp": "yes",
                      "NoNewPrivileges": "yes", "DevicePolicy": "closed"}.items():
        assert one(unit, key) == want, key
    assert one(unit, "RestrictAddressFamilies").split() == ["AF_UNIX", "AF_INET", "AF_INET6",
                                                            "AF_NETLINK"]
    allowed = {tuple(v.split()) for v in s["DeviceAllow"]}
    assert {("char-alsa", "rw"), ("char-gpiochip", "rw"), ("/dev/gpiomem", "rw")} <= allowed
    # These would hide /dev/snd and the GPIO nodes from the service.
    assert s.get("PrivateDevices", ["no"]) == ["no"]
    assert "DynamicUser" not in s


def verify_copy(tmp_path: Path, text: str) -> subprocess.CompletedProcess[str]:
    stub = tmp_path / "bin" / "avi-agent"
    stub.parent.mkdir(exist_ok=True)
    stub.write_text("#!/bin/sh\nexit 0\n")
    stub.chmod(0o755)
    rewritten, n = re.subn(r"^ExecStart=\S+", f"ExecStart={stub}", text, flags=re.M)
    assert n == 1
    unit_path = tmp_path / UNIT_NAME
    unit_path.write_text(rewritten)
    return subprocess.run(["systemd-analyze", "verify", str(unit_path)],
                          capture_output=True, text=True, timeout=60)


def about_our_unit(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if "avi-agent" in line]


@needs_analyze
def test_systemd_analyze_verify_is_clean(tmp_path: Path) -> None:
    proc = verify_copy(tmp_path, UNIT.read_text())
    assert about_our_unit(proc.stderr) == [], proc.stderr
    assert proc.returncode == 0, proc.stderr


@needs_analyze
def test_verify_check_catches_a_broken_unit(tmp_path: Path) -> None:
    """The check above can fail: a misspelt key and a bad value are reported on stderr."""
    broken = UNIT.read_text().replace("NotifyAccess=main", "NotifyAcess=main").replace(
        "WatchdogSec=10", "WatchdogSec=ten")
    problems = about_our_unit(verify_copy(tmp_path, broken).stderr)
    assert any("NotifyAcess" in p for p in problems), problems
    lineno = broken.splitlines().index("WatchdogSec=ten") + 1
    assert any(f":{lineno}: Failed to parse sec value" in p for p in problems), problems


@needs_analyze
def test_security_exposure_is_low(tmp_path: Path) -> None:
    stub_run = verify_copy(tmp_path, UNIT.read_text())
    assert stub_run.returncode == 0
    proc = subprocess.run(["systemd-analyze", "security", "--offline=yes", "--no-pager",
                           str(tmp_path / UNIT_NAME)], capture_output=True, text=True, timeout=60)
    m = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", proc.stdout)
    if m is None:
        pytest.skip(f"systemd-analyze security --offline unsupported here: {proc.stderr.strip()}")
    # 0 = fully locked down, 10 = unprotected; sound and GPIO access keep it above zero.
    assert float(m.group(1)) <= 3.0, proc.stdout
