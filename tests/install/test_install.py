"""scripts/install.sh into a throwaway root (--root): files, modes, user, unit, idempotence,
a config that is never overwritten, clear errors, and --uninstall [--purge].

The real-host path (apt, useradd, systemctl against a running systemd) is exercised by
test_systemd_nspawn.py, which runs the same script for real inside a container."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import tempfile
from pathlib import Path

import pytest

from .util import ROOT, diff, frozen_source, passwd_entry, run, script_env, snapshot

# Tests that use `installed` are slow: one pip install of the project (~20 s idle, ~110 s seen
# on a busy machine), shared by the module. The usage checks need no install: fast.

UNIT = "etc/systemd/system/avi-agent.service"
WANTS = "etc/systemd/system/multi-user.target.wants/avi-agent.service"


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str, Path]:
    """(root, output of the first run, the install.sh used: a frozen copy of the source)"""
    if os.geteuid() != 0:
        pytest.skip("install.sh --root writes files owned by root and uses useradd --prefix: run as root")
    root = tmp_path_factory.mktemp("root")
    install = frozen_source(tmp_path_factory.mktemp("src")) / "scripts/install.sh"
    p = run(["bash", str(install), "--root", str(root)], timeout=400)
    return root, p.stdout, install


INSTALL = ROOT / "scripts/install.sh"


@pytest.mark.slow
def test_installs_venv_config_unit_and_user(installed: tuple[Path, str, Path]) -> None:
    root, out, _ = installed
    venv = root / "opt/avi-agent/venv"
    assert (venv / "bin/avi-agent").is_file()
    # The installed console script works and accepts the installed config.
    chk = run([str(venv / "bin/avi-agent"), "check-config", str(root / "etc/avi-agent/agent.toml")])
    assert "[node]" in chk.stdout
    # Real devices are importable in the venv (extras alsa,systemd).
    run([str(venv / "bin/python"), "-c", "import alsaaudio, systemd.daemon, agent.cli, hw"])

    conf = root / "etc/avi-agent/agent.toml"
    assert conf.read_bytes() == (ROOT / "config/agent.toml").read_bytes()
    assert stat.S_IMODE(conf.stat().st_mode) == 0o644
    assert stat.S_IMODE(conf.parent.stat().st_mode) == 0o755
    unit = root / UNIT
    assert unit.read_bytes() == (ROOT / "systemd/avi-agent.service").read_bytes()
    assert stat.S_IMODE(unit.stat().st_mode) == 0o644
    assert os.readlink(root / WANTS) == "/etc/systemd/system/avi-agent.service"
    # Readable by the service user: the venv is not private to root.
    assert stat.S_IMODE((venv / "bin/python").parent.stat().st_mode) == 0o755

    avi = passwd_entry(root, "avi")
    assert avi is not None and avi[5:] == ["/var/lib/avi-agent", "/usr/sbin/nologin"]
    assert int(avi[2]) < 1000, "a system user"
    group_of_avi = passwd_entry(root, "avi", "group")
    assert group_of_avi is not None and group_of_avi[2] == avi[3]
    for g in ("audio", "gpio"):
        entry = passwd_entry(root, g, "group")
        assert entry is not None and "avi" in entry[3].split(","), f"avi not in group {g}: {entry}"
    # Nothing leaked onto the host.
    assert subprocess.run(["getent", "passwd", "avi"], capture_output=True).returncode != 0
    assert not Path("/opt/avi-agent").exists()

    assert "skipped (--root): apt-get install" in out and "libasound2-dev" in out and "libgmp-dev" in out
    assert "steps skipped because of --root" in out
    assert 'not a Raspberry Pi: /etc/avi-agent/agent.toml uses the simulated audio and GPIO' in out


@pytest.mark.slow  # its own install into a --root: 68 s measured in a fast-set run with a CPU hog
def test_on_a_raspberry_pi_the_config_uses_the_real_devices(tmp_path: Path) -> None:
    """A Pi 4 (its device-tree model file): the installed config selects ALSA and RPi.GPIO,
    and the venv has RPi.GPIO (extras rpi). The fakes are for demos and tests."""
    if os.geteuid() != 0:
        pytest.skip("install.sh --root uses useradd --prefix: run as root")
    from agent.config import load_config

    model = tmp_path / "model"
    model.write_bytes(b"Raspberry Pi 4 Model B Rev 1.4\0")
    root = tmp_path / "root"
    install = frozen_source(tmp_path / "src") / "scripts/install.sh"
    p = run(["bash", str(install), "--root", str(root)], timeout=600,
            env=script_env(AVI_DEVICE_MODEL_FILE=str(model)))
    assert "board: Raspberry Pi 4 Model B Rev 1.4 -> pi" in p.stdout
    assert "with the real devices of a pi: audio alsa, gpio rpi" in p.stdout
    conf = root / "etc/avi-agent/agent.toml"
    cfg = load_config(conf, env={})
    assert (cfg.audio.backend, cfg.gpio.backend) == ("alsa", "rpi")
    # Everything else is the shipped default, comments included.
    shipped = (ROOT / "config/agent.toml").read_text().splitlines()
    changed = [(a, b) for a, b in zip(shipped, conf.read_text().splitlines()) if a != b]
    assert [a for a, _ in changed] == ['backend = "fake"', 'backend = "fake"'], changed
    venv = root / "opt/avi-agent/venv"
    run([str(venv / "bin/python"), "-c", "import importlib.util, sys; sys.exit(importlib.util.find_spec('RPi') is None)"])
    run([str(venv / "bin/avi-agent"), "check-config", str(conf)])


@pytest.mark.slow
def test_second_run_changes_nothing(installed: tuple[Path, str, Path]) -> None:
    root, _, INSTALL = installed
    before = snapshot(root)
    p = run(["bash", str(INSTALL), "--root", str(root)])
    assert "nothing to do" in p.stdout, p.stdout
    assert diff(before, snapshot(root)) == []


@pytest.mark.slow
def test_existing_config_is_never_overwritten(installed: tuple[Path, str, Path], tmp_path: Path) -> None:
    root, _, INSTALL = installed
    conf = root / "etc/avi-agent/agent.toml"
    original = conf.read_bytes()
    try:
        conf.write_text('[node]\nname = "edited-by-hand"\n')
        other = tmp_path / "other.toml"
        other.write_text('[node]\nname = "from-config-option"\n')
        p = run(["bash", str(INSTALL), "--root", str(root), "--config", str(other)])
        assert conf.read_text() == '[node]\nname = "edited-by-hand"\n'
        assert "kept the existing /etc/avi-agent/agent.toml" in p.stdout
        assert "nothing to do" in p.stdout
    finally:
        conf.write_bytes(original)


@pytest.mark.slow
def test_bad_config_stops_with_what_to_do(installed: tuple[Path, str, Path]) -> None:
    root, _, INSTALL = installed
    conf = root / "etc/avi-agent/agent.toml"
    original = conf.read_bytes()
    try:
        conf.write_text("[node]\nnmae = 'typo'\n")
        p = run(["bash", str(INSTALL), "--root", str(root)], check=False)
        assert p.returncode == 1
        assert "nmae" in p.stderr and "unknown key" in p.stderr
        assert "what to do: fix /etc/avi-agent/agent.toml" in p.stderr
    finally:
        conf.write_bytes(original)


@pytest.mark.parametrize("args, expect", [
    (["--purge"], "--purge only goes with --uninstall"),
    (["--from", "/nonexistent-src"], "has no pyproject.toml"),
    (["--wheel", "/nonexistent.whl"], "no such file"),
    (["--bogus"], "unknown argument: --bogus"),
])
def test_usage_errors_say_what_to_do(tmp_path: Path, args: list[str], expect: str) -> None:
    p = run(["bash", str(INSTALL), "--root", str(tmp_path / "r"), *args], check=False)
    assert p.returncode != 0
    assert expect in p.stderr
    assert "what to do:" in p.stderr


def test_without_root_privileges_it_refuses(tmp_path: Path) -> None:
    if os.geteuid() != 0 or shutil.which("setpriv") is None:
        pytest.skip("needs root and setpriv to drop to an unprivileged user")
    # The unprivileged user must be able to read the script wherever the checkout lives (a
    # clone inside a 0700 `mktemp -d` directory is not readable by it): run a copy from a
    # directory of its own under /tmp, readable by everyone.
    public = Path(tempfile.mkdtemp(prefix="avi-install-test-", dir="/tmp"))
    try:
        public.chmod(0o755)
        script = public / "install.sh"
        shutil.copyfile(INSTALL, script)
        script.chmod(0o644)
        p = run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
                 "bash", str(script)], check=False, cwd=public)
    finally:
        shutil.rmtree(public)
    assert p.returncode == 1, (p.returncode, p.stderr)
    assert "must run as root" in p.stderr and "what to do: run: sudo" in p.stderr


@pytest.mark.slow
def test_uninstall_keeps_config_and_identity_unless_purge(installed: tuple[Path, str, Path],
                                                          tmp_path: Path) -> None:
    src, _, INSTALL = installed
    root = tmp_path / "root"
    shutil.copytree(src, root, symlinks=True)
    ident = root / "var/lib/avi-agent/identity.key"
    ident.parent.mkdir(parents=True, mode=0o700)
    ident.write_bytes(b"key")

    p = run(["bash", str(INSTALL), "--root", str(root), "--uninstall"])
    assert not (root / "opt/avi-agent").exists()
    assert not (root / UNIT).exists() and not (root / WANTS).is_symlink()
    assert passwd_entry(root, "avi") is None
    assert passwd_entry(root, "gpio", "group") is not None, "the gpio group stays"
    assert (root / "etc/avi-agent/agent.toml").exists() and ident.exists()
    assert "kept /etc/avi-agent" in p.stdout and "kept /var/lib/avi-agent" in p.stdout

    again = run(["bash", str(INSTALL), "--root", str(root), "--uninstall"])
    assert "nothing to do: avi-agent is not installed" in again.stdout

    run(["bash", str(INSTALL), "--root", str(root), "--uninstall", "--purge"])
    assert not (root / "etc/avi-agent").exists()
    assert not (root / "var/lib/avi-agent").exists()
