"""The avi-agent command line as real processes: check-config, config errors -> exit 78, python -m agent."""

from __future__ import annotations

import os
import subprocess
import sys
import tomllib
from pathlib import Path

from agent.config import AgentConfig, load_config
from tests.agent.test_service import ROOT, AgentProc, NotifySocket, write_config

AVI_AGENT = Path(sys.executable).parent / "avi-agent"


def run(args: list[str], env: dict[str, str] | None = None, timeout: float = 60,
        exe: list[str] | None = None) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("AVI_") and k != "NOTIFY_SOCKET"}
    clean.update(env or {})
    return subprocess.run([*(exe or [sys.executable, "-m", "agent"]), *args], cwd=ROOT, env=clean,
                          capture_output=True, text=True, timeout=timeout)


def test_check_config_prints_the_effective_config(tmp_path: Path) -> None:
    shipped = ROOT / "config" / "agent.toml"
    p = run(["check-config", str(shipped)], env={"AVI_NODE__NAME": "pi-hall"})
    assert p.returncode == 0, p.stderr
    assert "# environment overrides applied: AVI_NODE__NAME" in p.stdout
    printed = tmp_path / "printed.toml"
    printed.write_text(p.stdout)
    tomllib.loads(p.stdout)
    # What it prints is the effective config and loads back to the same model.
    again = load_config(printed, env={})
    assert again == load_config(shipped, env={"AVI_NODE__NAME": "pi-hall"})
    assert again.node.name == "pi-hall" and again.mesh.node_name == "pi-hall"
    assert f"{shipped}: OK" in p.stderr


def test_installed_entry_point_and_module_agree(tmp_path: Path) -> None:
    cfg = write_config(tmp_path / "a.toml")
    a = run(["check-config", str(cfg)], exe=[str(AVI_AGENT)])
    b = run(["check-config", str(cfg)])
    assert a.returncode == b.returncode == 0
    assert a.stdout == b.stdout
    v = run(["--version"])
    assert v.returncode == 0 and v.stdout.startswith("avi-agent ")
    bad = run(["frobnicate"])
    assert bad.returncode == 2 and "invalid choice" in bad.stderr


BAD = """
[node]
name = "bad name"
[mesh]
listen_port = 99999
typo = 1
[status]
interval_s = 10.0
stale_after_s = 5.0
"""


def test_config_errors_all_at_once_exit_78(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text(BAD)
    for args in (["check-config", str(bad)], ["run", "--config", str(bad)]):
        p = run(args, env={"AVI_AUDIO__RATE": "fast"})
        assert p.returncode == 78, (args, p.stderr)
        assert "configuration error (5 problem(s))" in p.stderr
        for needle in (f"{bad}: node.name: String should match pattern",
                       f"{bad}: mesh.listen_port: Input should be less than or equal to 65535 (got 99999)",
                       f"{bad}: mesh.typo: unknown key (expected one of:",
                       f"{bad}: status: stale_after_s (5.0) must be greater than interval_s (10.0)",
                       "AVI_AUDIO__RATE: audio.rate:"):
            assert needle in p.stderr, (needle, p.stderr)
        assert p.stdout == ""


def test_run_config_errors_never_say_ready(tmp_path: Path) -> None:
    """exit 78 before anything is started: no READY=1, no STATUS=, for every kind of error."""
    ns = NotifySocket(tmp_path / "notify.sock")
    try:
        cases = [
            (["run", "--config", str(tmp_path / "missing.toml")], {}, "missing.toml: file not found"),
            (["run", "--config", str(write_config(tmp_path / "ok.toml"))], {"AVI_MESH_LISTEN_PORT": "1"},
             "AVI_MESH_LISTEN_PORT: looks like a mesh setting but has no '__'"),
            (["run", "--config", str(tmp_path / "syntax.toml")], {}, "syntax.toml:2:"),
        ]
        (tmp_path / "syntax.toml").write_text("[node]\nname = = 1\n")
        for args, env, needle in cases:
            agent = AgentProc(args, env=env, notify=ns)
            try:
                assert agent.wait(30) == 78
                agent._thread.join(5)
                assert needle in agent.log(), agent.log()
            finally:
                agent.kill()
        assert ns.texts() == []
    finally:
        ns.close()


def test_corrupt_identity_key_is_a_config_error(tmp_path: Path) -> None:
    key = tmp_path / "identity.key"
    key.write_bytes(b"not a key")
    key.chmod(0o600)
    cfg = write_config(tmp_path / "a.toml")
    p = run(["run", "--config", str(cfg)], env={"AVI_MESH__IDENTITY_PATH": str(key)})
    assert p.returncode == 78, p.stderr
    assert "mesh configuration error" in p.stderr and "identity.key" in p.stderr


def test_default_config_is_valid() -> None:
    assert AgentConfig() == load_config(ROOT / "config" / "agent.toml", env={})
