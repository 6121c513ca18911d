"""Identify: who may ask (the allow list), how often (rate limit), and the whole path from
`avi-agent monitor --identify` through the mesh to the node."""

from __future__ import annotations

import json
import logging
import subprocess
from pathlib import Path

from agent.config import AgentConfig
from agent.identify import IdentifyPolicy, encode_request, parse_request
from agent.mesh import new_identity, peer_id_of, write_identity
from agent.sdnotify import Notifier
from agent.service import Service
from tests.agent.test_service import AgentProc, procs, write_config  # noqa: F401 (fixture)

ALLOWED = "12D3KooWAarzhoLWpQDaDBzTEWRCN5u6NWPD34WvsXtm2TgzxFLP"
OTHER = "12D3KooWG3yePR2XqNwRoEfJYESoRThLG7tSTNhAXX8E2ihmzMEa"


def test_policy_allow_list_and_rate_limit() -> None:
    p = IdentifyPolicy([ALLOWED], min_interval_s=10.0)
    assert p.decide(OTHER, 0.0) == "refused"
    assert p.decide(ALLOWED, 0.0) == "done"
    assert p.decide(ALLOWED, 5.0) == "rate_limited"
    assert p.decide(OTHER, 20.0) == "refused"  # a refusal never counts as a request carried out
    assert p.decide(ALLOWED, 10.0) == "done"
    assert p.counts == {"done": 2, "refused": 2, "rate_limited": 1}
    open_policy = IdentifyPolicy([])
    assert open_policy.decide(OTHER, 0.0) == "done"  # no list: anyone may ask


def test_request_format() -> None:
    assert parse_request(encode_request(ALLOWED, "mon")) == ALLOWED
    for bad in (b"", b"{}", b"[1]", b'{"v": 2, "target": "x"}', b'{"v": 1, "target": 3}', b"x" * 600):
        assert parse_request(bad) is None


def test_service_refuses_a_peer_not_on_the_allow_list(caplog) -> None:
    caplog.set_level(logging.INFO, logger="agent.service")
    cfg = AgentConfig(mesh={"allowed_peers": [ALLOWED]})
    s = Service(cfg, notifier=Notifier(env={}), env={})
    s.peer_id = OTHER  # this node
    s._on_identify(ALLOWED + "x", encode_request(OTHER))  # not this one's list
    s._on_identify("12D3KooWPKF2WYzi7K3NeGaFEMJGFdkV1fYvpGWeritws8FnEzuX", encode_request(OTHER))
    assert s.identify_policy.counts["refused"] == 2 and s.identify_policy.counts["done"] == 0
    assert "identify refused" in caplog.text and "is not in mesh.allowed_peers" in caplog.text
    s._on_identify(ALLOWED, encode_request(ALLOWED))  # addressed to another node: ignored
    assert sum(s.identify_policy.counts.values()) == 2
    s._on_identify(ALLOWED, encode_request(OTHER))
    s._on_identify(ALLOWED, encode_request(OTHER))
    assert s.identify_policy.counts == {"done": 1, "refused": 2, "rate_limited": 1}


def test_identify_from_the_monitor_only_for_allowed_peers(tmp_path: Path, procs) -> None:
    keys = {}
    for name in ("b", "x", "k"):
        kp = new_identity()
        write_identity(tmp_path / f"{name}.key", kp)
        keys[name] = peer_id_of(kp)
    off = '[metrics]\nlisten = ""\n'
    b = AgentProc(["run", "--config", str(write_config(tmp_path / "b.toml", "pi-b", extra=off))],
                  env={"AVI_MESH__IDENTITY_PATH": str(tmp_path / "b.key")})
    procs.append(b)
    b_addr = b.address()
    # x admits b and the monitor key k only
    x = AgentProc(["run", "--config", str(write_config(tmp_path / "x.toml", "pi-x", extra=off))], env={
        "AVI_MESH__IDENTITY_PATH": str(tmp_path / "x.key"), "AVI_MESH__BOOTSTRAP_PEERS": json.dumps([b_addr]),
        "AVI_MESH__ALLOWED_PEERS": json.dumps([keys["b"], keys["k"]])})
    procs.append(x)
    x.wait_log("fleet: first status from pi-b", 30)

    # a monitor with a throw-away identity asks through b: x never chimes
    stranger = AgentProc(["monitor", "--config", str(tmp_path / "b.toml"), "--dial", b_addr, "--json",
                          "--identify", "pi-x", "--duration", "40"], stdout=subprocess.PIPE)
    procs.append(stranger)
    stranger.wait_log("identify request sent to pi-x", 30)
    # the monitor with key k (on x's list) asks twice: x chimes once, then rate-limits
    allowed = AgentProc(["monitor", "--config", str(tmp_path / "b.toml"), "--dial", b_addr, "--json",
                         "--identity", str(tmp_path / "k.key"), "--identify", "pi-x", "--identify", "pi-x",
                         "--duration", "40"], stdout=subprocess.PIPE)
    procs.append(allowed)
    k_short = rf"\S*{keys['k'][-8:]}"  # the log shortens peer ids
    x.wait_log(rf"identify requested by {k_short}: chiming and blinking", 30)
    x.wait_log(rf"identify from {k_short} ignored: at most one per 10 s", 15)
    assert x.log().count("identify requested by") == 1  # the stranger's request was never carried out

