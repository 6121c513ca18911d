"""The rough edges a newcomer hit (issue 16): check-config, monitor --dial, simulate's arguments and
Ctrl-C, install.sh --help, the monitor's output into a pipe, and `avi-agent status`."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

import agent.cli as cli
import agent.config as config_mod
from agent.mesh import new_identity, peer_id_of, write_identity
from agent.monitor import NO_NODES_HINT
from tests.agent.test_service import ROOT, AgentProc, procs, write_config  # noqa: F401 (fixture)

PEER = "12D3KooWAarzhoLWpQDaDBzTEWRCN5u6NWPD34WvsXtm2TgzxFLP"


def run_cli(*args: str, timeout: float = 60, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    e = {k: v for k, v in os.environ.items() if not k.startswith("AVI_")}
    e.update(env or {})
    return subprocess.run([sys.executable, "-m", "agent", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout, env=e)


# --- check-config ------------------------------------------------------------------------------

def test_check_config_without_a_file_says_built_in_defaults(tmp_path: Path, monkeypatch, capsys) -> None:
    monkeypatch.setattr(cli, "DEFAULT_CONFIG_PATH", tmp_path / "absent.toml")
    monkeypatch.setattr(config_mod, "DEFAULT_CONFIG_PATH", tmp_path / "absent.toml")
    assert cli.main(["check-config"]) == 0
    err = capsys.readouterr().err
    assert "absent.toml: not found: built-in defaults" in err and ": OK" not in err.replace("(OK)", "")


def test_check_config_takes_config_like_run(tmp_path: Path, capsys) -> None:
    f = write_config(tmp_path / "a.toml")
    assert cli.main(["check-config", "--config", str(f)]) == 0
    assert f"{f}: OK" in capsys.readouterr().err
    g = write_config(tmp_path / "b.toml")
    assert cli.main(["check-config", str(f), "--config", str(g)]) == 2


def test_check_config_reports_every_bad_peer_entry(tmp_path: Path, capsys) -> None:
    f = tmp_path / "bad.toml"
    f.write_text(f'[mesh]\nallowed_peers = ["notapeer", "{PEER}", "12D3KooWshort"]\n'
                 'bootstrap_peers = ["bad1", "/ip4/1.2.3.4/tcp/1", "/ip4/1.2.3.4/tcp/1/p2p/QmNope", '
                 f'"/ip4/1.2.3.4/tcp/1/p2p/{PEER}"]\n')
    assert cli.main(["check-config", str(f)]) == config_mod.EX_CONFIG
    err = capsys.readouterr().err
    allowed = [ln for ln in err.splitlines() if "mesh.allowed_peers:" in ln][0].split(" (got ")[0]
    assert "'notapeer'" in allowed and "'12D3KooWshort'" in allowed and PEER not in allowed
    assert "[0] not a multiaddr: 'bad1'" in err
    assert "[1] '/ip4/1.2.3.4/tcp/1' has no /p2p/" in err
    assert "[2]" in err and "[3]" not in err


def test_check_config_checks_the_identity_key(tmp_path: Path, capsys) -> None:
    key = tmp_path / "id.key"
    kp = new_identity()
    write_identity(key, kp)
    f = tmp_path / "a.toml"
    f.write_text(f'[mesh]\nidentity_path = "{key}"\n')
    assert cli.main(["check-config", str(f)]) == 0
    assert peer_id_of(kp) in capsys.readouterr().err
    key.chmod(0o644)
    assert cli.main(["check-config", str(f)]) == config_mod.EX_CONFIG
    assert f"chmod 600 {key}" in capsys.readouterr().err
    key.chmod(0o600)
    key.write_bytes(b"garbage")
    assert cli.main(["check-config", str(f)]) == config_mod.EX_CONFIG
    assert "corrupt" in capsys.readouterr().err
    f.write_text(f'[mesh]\nidentity_path = "{tmp_path}/nodir/id.key"\n')
    assert cli.main(["check-config", str(f)]) == config_mod.EX_CONFIG
    assert "does not exist, so run cannot create the key" in capsys.readouterr().err


# --- monitor --dial, simulate's arguments, install.sh ------------------------------------------

@pytest.mark.parametrize("addr, expect", [
    ("garbage", "is not a multiaddr"),
    ("/ip4/10.0.0.1/tcp/4001", "has no /p2p/<peer id> part"),
    ("/ip4/10.0.0.1/tcp/4001/p2p/notapeer", "notapeer"),
])
def test_monitor_dial_malformed_exits_at_once(addr: str, expect: str) -> None:
    r = run_cli("monitor", "--dial", addr, timeout=30)
    assert r.returncode == 2 and expect in r.stderr and "Traceback" not in r.stderr


@pytest.mark.parametrize("duration", ["3", "0", "-1", "nan"])
def test_simulate_rejects_a_duration_shorter_than_its_script(duration: str, tmp_path: Path) -> None:
    r = run_cli("simulate", "--out", str(tmp_path), "--duration", duration)
    assert r.returncode == 2 and "too short" in r.stderr and "at least 14 s" in r.stderr
    assert not (tmp_path / "a").exists()  # nothing started


def test_simulate_out_unwritable_is_a_sentence() -> None:
    r = run_cli("simulate", "--out", "/proc/nope")
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert "cannot write the simulation files to /proc/nope" in r.stderr


def test_install_help_is_complete_and_bogus_says_what_to_do() -> None:
    script = ROOT / "scripts" / "install.sh"
    header = []
    for line in script.read_text().splitlines()[1:]:
        if not line.startswith("#"):
            break
        header.append(line)
    r = subprocess.run(["bash", str(script), "--help"], capture_output=True, text=True, timeout=30)
    assert r.returncode == 0 and len(r.stdout.splitlines()) == len(header) > 20
    assert r.stdout.rstrip().endswith(header[-1].lstrip("# ").rstrip())
    r = subprocess.run(["bash", str(script), "--bogus"], capture_output=True, text=True, timeout=30)
    assert r.returncode == 1 and "unknown argument: --bogus" in r.stderr and "--help" in r.stderr
    assert "usage above" not in r.stderr and "step" not in r.stderr


# --- the monitor into a pipe, status -----------------------------------------------------------

def test_monitor_into_a_pipe_has_plain_lines_and_the_hint(tmp_path: Path, procs) -> None:
    cfg = write_config(tmp_path / "a.toml", "pi-a", extra='[metrics]\nlisten = ""\n')
    # nobody around: the hint, no escape codes
    r = run_cli("monitor", "--config", str(cfg), "--duration", "4")
    assert r.returncode == 0 and "\x1b" not in r.stdout
    assert NO_NODES_HINT in r.stdout and r.stdout.count(NO_NODES_HINT) == 1  # printed on change only
    # one node: its row, the same columns as the page, still no escape codes
    a = AgentProc(["run", "--config", str(cfg)])
    procs.append(a)
    addr = a.address()
    r = run_cli("monitor", "--config", str(cfg), "--dial", addr, "--duration", "8")
    assert r.returncode == 0 and "\x1b" not in r.stdout, r.stdout
    lines = r.stdout.splitlines()
    head = [ln for ln in lines if ln.startswith("NAME")]
    assert head and "TALK" in head[-1] and "MIC/SPK dBFS" in head[-1] and "DEVICES" in head[-1]
    assert any(ln.startswith("pi-a ") and " ok " in ln and "fake audio, fake gpio" in ln for ln in lines), r.stdout


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_status_queries_the_running_agent(tmp_path: Path, procs) -> None:
    port = _free_port()
    cfg = write_config(tmp_path / "a.toml", "pi-status", extra=f'[metrics]\nlisten = "127.0.0.1:{port}"\n')
    r = run_cli("status", "--config", str(cfg))
    assert r.returncode == 1 and f"no agent answers on 127.0.0.1:{port}" in r.stderr
    a = AgentProc(["run", "--config", str(cfg)])
    procs.append(a)
    a.wait_log("ready: mesh listening", 30)
    deadline = time.monotonic() + 20  # the first status message is built once the mesh runs
    while True:
        r = run_cli("status", "--config", str(cfg), "--json")
        if r.returncode == 0 and json.loads(r.stdout).get("status") or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert r.returncode == 0, r.stderr
    d = json.loads(r.stdout)
    assert d["node"] == "pi-status" and d["phase"] == "ready" and d["status"]["group"] == "default"
    assert d["backends"] == {"audio": "fake", "gpio": "fake"}
    r = run_cli("status", "--config", str(cfg))
    assert r.returncode == 0
    assert r.stdout.startswith("pi-status  12D3KooW") and "talk: group default, idle" in r.stdout
    assert "levels (dBFS): mic -9.0 rms" in r.stdout  # the fake microphone's half-scale tone


@pytest.mark.slow
def test_simulate_ctrl_c_stops_cleanly_with_a_summary(tmp_path: Path) -> None:
    e = {k: v for k, v in os.environ.items() if not k.startswith("AVI_")}
    p = subprocess.Popen([sys.executable, "-m", "agent", "simulate", "--out", str(tmp_path), "--duration", "60"],
                         cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=e)
    time.sleep(8)
    p.send_signal(signal.SIGINT)
    out, err = p.communicate(timeout=40)
    assert p.returncode == 130, (out, err)
    assert "Traceback" not in err and "KeyboardInterrupt" not in err
    assert "interrupted" in out and "summary" in out
    for name in "abc":  # every agent was stopped (exit 0 on SIGTERM)
        assert any(ln.strip().startswith(name) and "   0  " in ln for ln in out.splitlines()), out
