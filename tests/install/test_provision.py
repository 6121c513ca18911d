"""scripts/provision on a directory standing for the boot partition, then the first boot run
against it (scripts/firstboot.sh --root), including a power cut in the middle."""

from __future__ import annotations

import fcntl
import os
import signal
import stat
import subprocess
import time
from pathlib import Path

import pytest

from agent.config import load_config
from agent.mesh import peer_id_of, read_identity, write_identity, new_identity

from .util import PROVISION, diff, passwd_entry, run, script_env, snapshot

CMDLINE = "console=serial0,115200 console=tty1 root=PARTUUID=4e639091-02 rootfstype=ext4 fsck.repair=yes rootwait quiet"
HOOK = ("systemd.run=/boot/firmware/avi/firstrun.sh systemd.run_success_action=reboot "
        "systemd.unit=kernel-command-line.target")
BOOTSTRAP = "/ip4/10.0.0.2/tcp/4001/p2p/12D3KooWJWoaqZhDaoEFshF7Rh1bpY9ohihFhzcW6d69Lr2NASuq"


def boot_dir(tmp_path: Path) -> Path:
    boot = tmp_path / "bootfs"
    boot.mkdir(parents=True)
    (boot / "cmdline.txt").write_text(CMDLINE + "\n")
    (boot / "config.txt").write_text("dtparam=audio=on\n")
    return boot


def provision(boot: Path, *extra: str, check: bool = True) -> subprocess.CompletedProcess:
    return run([str(PROVISION), str(boot), "--name", "pi-kitchen", "--group", "house", "--group", "yard",
                "--bootstrap", BOOTSTRAP, "--audio-device", "plughw:CARD=Device,DEV=0",
                "--button-pin", "5", "--led-pin", "6", *extra], check=check)


def test_provision_writes_what_first_boot_needs(tmp_path: Path) -> None:
    boot = boot_dir(tmp_path)
    p = provision(boot, "--identity", "new")
    name, peer, where = p.stdout.strip().split("\t")
    assert (name, where) == ("pi-kitchen", str(boot))

    avi = boot / "avi"
    key = avi / "identity.key"
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert peer_id_of(read_identity(key)) == peer == (avi / "peer-id").read_text().strip()

    cfg = load_config(avi / "agent.toml", env={})
    assert cfg.node.name == "pi-kitchen" and cfg.mesh.node_name == "pi-kitchen"
    assert cfg.talk.groups == ["house", "yard"]
    assert cfg.mesh.bootstrap_peers == [BOOTSTRAP]
    assert cfg.mesh.listen_port == 4001
    assert (cfg.audio.backend, cfg.audio.capture_device, cfg.audio.playback_device) == \
        ("alsa", "plughw:CARD=Device,DEV=0", "plughw:CARD=Device,DEV=0")
    assert (cfg.gpio.backend, cfg.gpio.button_pin, cfg.gpio.led_pin) == ("rpi", 5, 6)

    assert (boot / "cmdline.txt").read_text() == f"{CMDLINE} {HOOK}\n"
    hook = avi / "firstrun.sh"
    assert os.access(hook, os.X_OK)
    assert "firstboot.sh --stage hook --boot /boot/firmware" in hook.read_text()
    for rel in ("scripts/install.sh", "scripts/firstboot.sh", "systemd/avi-agent.service",
                "systemd/avi-agent-firstboot.service", "config/agent.toml", "pyproject.toml",
                "agent/cli.py", "hw/__init__.py"):
        assert (avi / "src" / rel).is_file(), rel
    assert not list((avi / "src").rglob("__pycache__"))

    # Again: same identity, the hook is not added twice.
    p2 = provision(boot, "--identity", "new")
    assert p2.stdout.split("\t")[1] == peer
    assert (boot / "cmdline.txt").read_text() == f"{CMDLINE} {HOOK}\n"


def test_provision_uses_a_given_key_file(tmp_path: Path) -> None:
    key = tmp_path / "my.key"
    kp = new_identity()
    write_identity(key, kp)
    boot = boot_dir(tmp_path)
    p = provision(boot, "--identity", str(key))
    assert p.stdout.split("\t")[1] == peer_id_of(kp)
    os.chmod(key, 0o644)
    bad = provision(boot_dir(tmp_path / "x"), "--identity", str(key), check=False)
    assert bad.returncode == 1 and "chmod 600" in bad.stderr


def test_invalid_settings_are_refused_with_the_field(tmp_path: Path) -> None:
    boot = boot_dir(tmp_path)
    p = run([str(PROVISION), str(boot), "--name", "pi-x", "--button-pin", "6", "--led-pin", "6"], check=False)
    assert p.returncode == 78
    assert "node 'pi-x'" in p.stderr and "led_pin" in p.stderr
    assert not (boot / "avi").exists()
    assert (boot / "cmdline.txt").read_text() == CMDLINE + "\n"


def test_chains_into_raspberry_pi_imager_firstrun(tmp_path: Path) -> None:
    boot = boot_dir(tmp_path)
    imager = ("#!/bin/bash\nset +e\necho pi-kitchen >/etc/hostname\n"
              "rm -f /boot/firstrun.sh\nsed -i 's| systemd.run.*||g' /boot/cmdline.txt\nexit 0\n")
    (boot / "firstrun.sh").write_text(imager)
    line = (f"{CMDLINE} systemd.run=/boot/firstrun.sh systemd.run_success_action=reboot "
            "systemd.unit=kernel-command-line.target")
    (boot / "cmdline.txt").write_text(line + "\n")
    p = provision(boot)
    assert "Imager's firstrun.sh now calls" in p.stderr
    assert (boot / "cmdline.txt").read_text() == line + "\n", "Imager's hook stays the only systemd.run="
    lines = (boot / "firstrun.sh").read_text().splitlines()
    call = lines.index(next(l for l in lines if "/boot/firmware/avi/firstrun.sh" in l))
    assert call < lines.index("rm -f /boot/firstrun.sh")
    provision(boot)
    assert (boot / "firstrun.sh").read_text().count("/boot/firmware/avi/firstrun.sh") == 1


def test_fleet_prints_peer_ids_and_resolves_bootstrap_by_name(tmp_path: Path) -> None:
    fleet = tmp_path / "fleet.toml"
    fleet.write_text("""
[defaults]
group = "crew"
audio_device = "plughw:CARD=Device,DEV=0"
bootstrap = ["pi-hub"]

[[node]]
name = "pi-hub"
address = "10.0.0.2"
bootstrap = []

[[node]]
name = "pi-a"
button_pin = 22

[[node]]
name = "pi-b"
identity = "none"
""")
    out = tmp_path / "cards"
    p = run([str(PROVISION), "--fleet", str(fleet), "--out", str(out)])
    rows = {r.split("\t")[0]: r.split("\t")[1] for r in p.stdout.strip().splitlines()}
    assert set(rows) == {"pi-hub", "pi-a", "pi-b"}
    assert rows["pi-hub"].startswith("12D3KooW") and rows["pi-a"].startswith("12D3KooW")
    assert rows["pi-b"] == "(made on first start)"
    for name in ("pi-hub", "pi-a"):
        assert peer_id_of(read_identity(out / name / "avi/identity.key")) == rows[name]
    a = load_config(out / "pi-a/avi/agent.toml", env={})
    assert a.mesh.bootstrap_peers == [f"/ip4/10.0.0.2/tcp/4001/p2p/{rows['pi-hub']}"]
    assert a.gpio.button_pin == 22 and a.talk.groups == ["crew"]
    assert load_config(out / "pi-hub/avi/agent.toml", env={}).mesh.bootstrap_peers == []

    card = boot_dir(tmp_path / "card")
    c = run([str(PROVISION), "--copy", str(out / "pi-a"), str(card)])
    assert c.stdout.strip() == rows["pi-a"]
    assert (card / "cmdline.txt").read_text() == f"{CMDLINE} {HOOK}\n"
    assert stat.S_IMODE((card / "avi/identity.key").stat().st_mode) == 0o600


def test_fleet_errors_name_the_node(tmp_path: Path) -> None:
    fleet = tmp_path / "fleet.toml"
    fleet.write_text('[[node]]\nname = "a"\nbootstrap = ["nobody"]\n')
    p = run([str(PROVISION), "--fleet", str(fleet), "--out", str(tmp_path / "o")], check=False)
    assert p.returncode == 1 and "node 'a': bootstrap 'nobody'" in p.stderr


def test_node_spec_defaults_are_the_agents_and_unknown_keys_are_refused() -> None:
    from pydantic import ValidationError

    from agent.config import TalkConfig
    from agent.provision import DEFAULT_LISTEN_PORT, NodeSpec
    from hw.config import AudioConfig, GpioConfig

    spec = NodeSpec(name="n")
    assert (spec.button_pin, spec.led_pin) == (GpioConfig().button_pin, GpioConfig().led_pin)
    assert spec.audio_device == AudioConfig().capture_device
    assert spec.groups == TalkConfig().groups
    assert spec.listen_port == DEFAULT_LISTEN_PORT == 4001
    with pytest.raises(ValidationError, match="button_pn"):
        NodeSpec(name="n", button_pn=5)
    assert NodeSpec.model_validate({"name": "n", "group": "g"}).groups == ["g"]
    with pytest.raises(ValidationError, match="group or groups, not both"):
        NodeSpec.model_validate({"name": "n", "group": "g", "groups": ["h"]})


def test_provision_error_carries_its_exit_code(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from agent.config import EX_CONFIG
    from agent.provision import ProvisionError, main

    assert ProvisionError("x").exit_code == 1 and ProvisionError("x", EX_CONFIG).exit_code == 78
    boot = boot_dir(tmp_path)
    assert main([str(boot), "--name", "pi-x", "--button-pin", "6", "--led-pin", "6"]) == EX_CONFIG
    assert main([str(boot), "--name", "pi-x", "--wheel", str(tmp_path / "none.whl")]) == 1
    # The message alone no longer decides: a ProvisionError mentioning "invalid node settings"
    # for another reason keeps exit status 1.
    fleet = tmp_path / "fleet.toml"
    fleet.write_text('[[node]]\nname = "invalid node settings"\nbootstrap = ["x"]\n')
    assert main(["--fleet", str(fleet), "--out", str(tmp_path / "o")]) == 1
    err = capsys.readouterr().err
    assert "led_pin" in err and "none.whl: no such file" in err


def test_fleet_file_keys_are_checked_by_the_node_model(tmp_path: Path) -> None:
    from agent.provision import ProvisionError, provision_fleet

    fleet = tmp_path / "fleet.toml"
    fleet.write_text('[defaults]\ngroup = "crew"\n\n[[node]]\nname = "a"\nled = 5\n')
    with pytest.raises(ProvisionError, match=r"node 1: unknown key 'led' \(expected some of .*'led_pin'"):
        provision_fleet(fleet, tmp_path / "o")
    fleet.write_text('[[node]]\nbutton_pin = 5\n')
    with pytest.raises(ProvisionError, match="node 1: every \\[\\[node\\]\\] needs a name"):
        provision_fleet(fleet, tmp_path / "o")
    fleet.write_text('[[node]]\nname = "a"\nbutton_pin = "five"\n')
    with pytest.raises(ProvisionError, match="node 1: button_pin: Input should be a valid integer"):
        provision_fleet(fleet, tmp_path / "o")
    # a node's own groups replace the [defaults] group
    fleet.write_text('[defaults]\ngroup = "crew"\n\n[[node]]\nname = "a"\ngroups = ["x", "y"]\n'
                     'identity = "none"\n\n[[node]]\nname = "b"\nidentity = "none"\n')
    provision_fleet(fleet, tmp_path / "o")
    assert load_config(tmp_path / "o/a/avi/agent.toml", env={}).talk.groups == ["x", "y"]
    assert load_config(tmp_path / "o/b/avi/agent.toml", env={}).talk.groups == ["crew"]


def _firstboot(boot: Path, root: Path, *extra: str) -> list[str]:
    return ["bash", str(boot / "avi/src/scripts/firstboot.sh"), "--root", str(root), "--boot", str(boot), *extra]


def _wait_until_unlocked(lock: Path, timeout: float = 60.0) -> None:
    """A power cut stops every process at once; SIGKILL to the group does not: on a busy machine a
    killed pip child can take seconds to exit and still holds firstboot.sh's lock (fd 9), and the
    next boot would then rightly say "another firstboot.sh is running". Wait for the lock to be
    free (up to 60 s) so the test models a real power cut."""
    deadline = time.monotonic() + timeout
    with open(lock, "a") as f:
        while True:
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                assert time.monotonic() < deadline, f"{lock} still held {timeout} s after the power cut"
                time.sleep(0.1)
            else:
                fcntl.flock(f, fcntl.LOCK_UN)
                return


@pytest.mark.slow
def test_first_boot_applies_the_card_and_survives_a_power_cut(tmp_path: Path) -> None:
    """Hook stage, then the run stage killed (SIGKILL, like a power cut) while install.sh is
    installing into the venv, then a second boot that finishes the job."""
    if os.geteuid() != 0:
        pytest.skip("first boot writes root-owned files and chowns the key to avi: run as root")
    boot = boot_dir(tmp_path)
    peer = provision(boot, "--identity", "new").stdout.split("\t")[1]
    provisioned = (boot / "avi/agent.toml").read_bytes()
    root = tmp_path / "root"

    # Early boot (systemd.run=): the first-boot unit goes in, our hook leaves cmdline.txt.
    run(_firstboot(boot, root, "--stage", "hook"))
    unit = root / "etc/systemd/system/avi-agent-firstboot.service"
    assert "ExecStart=/bin/bash /boot/firmware/avi/src/scripts/firstboot.sh --boot /boot/firmware" in unit.read_text()
    assert (root / "etc/systemd/system/multi-user.target.wants/avi-agent-firstboot.service").is_symlink()
    assert (boot / "cmdline.txt").read_text() == CMDLINE + "\n"

    # Normal boot, power cut while pip runs.
    state = root / "var/lib/avi-agent-firstboot"
    proc = subprocess.Popen(_firstboot(boot, root), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, env=script_env(), start_new_session=True)
    seen = []
    deadline = time.monotonic() + 120
    assert proc.stdout is not None
    for line in proc.stdout:
        seen.append(line)
        if "installing avi-agent[" in line or time.monotonic() > deadline:
            break
    time.sleep(2.0)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    _wait_until_unlocked(state / "lock")
    assert any("installing avi-agent[" in l for l in seen), "".join(seen)
    assert (state / "config.done").exists() and not (state / "install.done").exists()
    assert (boot / "avi/identity.key").exists(), "the key stays on the card until it is installed"

    # Next boot: resumes at the interrupted step.
    p = run(_firstboot(boot, root), timeout=400)
    assert "step config: already done" in p.stdout
    assert "step install: done" in p.stdout and "first boot finished" in p.stdout

    assert (root / "etc/avi-agent/agent.toml").read_bytes() == provisioned
    key = root / "var/lib/avi-agent/identity.key"
    avi = passwd_entry(root, "avi")
    assert avi is not None
    st = key.stat()
    assert stat.S_IMODE(st.st_mode) == 0o600 and (st.st_uid, st.st_gid) == (int(avi[2]), int(avi[3]))
    assert stat.S_IMODE(key.parent.stat().st_mode) == 0o700
    assert peer_id_of(read_identity(key)) == peer
    assert not (boot / "avi/identity.key").exists(), "the private key must leave the FAT partition"
    assert (root / "etc/systemd/system/multi-user.target.wants/avi-agent.service").is_symlink()
    assert not (root / "etc/systemd/system/multi-user.target.wants/avi-agent-firstboot.service").exists()
    assert (state / "done").exists()

    # A third boot does nothing at all.
    before = snapshot(root)
    again = run(_firstboot(boot, root))
    assert "nothing to do" in again.stdout
    assert diff(before, snapshot(root)) == []
