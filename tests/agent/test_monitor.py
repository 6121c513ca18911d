"""Two agent processes see each other's status; `avi-agent monitor --json` lists both, then
marks the one that stopped as stale. Also the table rendering."""

from __future__ import annotations

import json
import queue
import signal
import subprocess
import threading
import time
from pathlib import Path

from agent.mesh import new_identity, peer_id_of, write_identity
from agent.monitor import COLUMNS, NO_NODES_HINT, fleet_rows, render_table
from agent.status import FleetView, StatusMessage, encode_status
from tests.agent.test_service import STOP_BOUND_S, AgentProc, write_config


class JsonLines:
    """Reads a process's stdout on a thread; lines become parsed JSON objects in a queue."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self.q: queue.Queue[dict] = queue.Queue(maxsize=10000)
        self.bad: list[str] = []
        self.count = 0
        threading.Thread(target=self._read, args=(proc,), daemon=True).start()

    def _read(self, proc: subprocess.Popen[str]) -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            try:
                self.q.put_nowait(json.loads(line))
                self.count += 1
            except (json.JSONDecodeError, queue.Full):
                self.bad.append(line)

    def until(self, pred, timeout: float) -> dict:
        deadline = time.monotonic() + timeout
        seen = None
        while time.monotonic() < deadline:
            try:
                seen = self.q.get(timeout=min(0.5, max(0.01, deadline - time.monotonic())))
            except queue.Empty:
                continue
            if pred(seen):
                return seen
        raise AssertionError(f"no matching monitor line in {timeout} s; last: {seen}")


def test_two_agents_and_monitor_json(tmp_path: Path) -> None:
    # A fixed identity for A, so its peer id is known before it starts.
    key_path = tmp_path / "a.key"
    kp = new_identity()
    write_identity(key_path, kp)
    a_peer = peer_id_of(kp)

    a = AgentProc(["run", "--config", str(write_config(tmp_path / "a.toml", "pi-a", interval=1.0, stale=3.0))],
                  env={"AVI_MESH__IDENTITY_PATH": str(key_path)})
    procs = [a]
    try:
        a_addr = a.address()
        assert a_addr.endswith(f"/p2p/{a_peer}")
        b = AgentProc(["run", "--config", str(write_config(tmp_path / "b.toml", "pi-b", interval=1.0, stale=3.0))],
                      env={"AVI_MESH__BOOTSTRAP_PEERS": a_addr})
        procs.append(b)
        b_peer = b.address().rsplit("/p2p/", 1)[1]
        # Each agent hears the other's status (logged by its fleet view).
        a.wait_log(rf"fleet: first status from pi-b \({b_peer[:6]}…{b_peer[-8:]}\)", timeout=20)  # short ids
        b.wait_log(rf"fleet: first status from pi-a \({a_peer[:6]}…{a_peer[-8:]}\)", timeout=20)

        mon = AgentProc(["monitor", "--config", str(tmp_path / "a.toml"), "--dial", a_addr, "--json",
                         "--duration", "40"], stdout=subprocess.PIPE)
        procs.append(mon)
        lines = JsonLines(mon.proc)

        def both_fresh(d: dict) -> bool:
            nodes = {n["node"]: n for n in d["nodes"]}
            return (set(nodes) == {"pi-a", "pi-b"} and not any(n["stale"] for n in nodes.values())
                    and nodes["pi-a"]["fleet"] >= 1 and nodes["pi-b"]["fleet"] >= 1)

        got = lines.until(both_fresh, timeout=25)
        nodes = {n["node"]: n for n in got["nodes"]}
        assert nodes["pi-a"]["peer_id"] == a_peer and nodes["pi-b"]["peer_id"] == b_peer
        assert b_peer in nodes["pi-a"]["connected_peers"] and a_peer in nodes["pi-b"]["connected_peers"]
        assert all(n["v"] == 1 and n["state"] == "ok" and n["last_error"] is None for n in nodes.values())
        assert got["connected"] >= 1 and got["rejected"] == 0

        # B stops: the monitor marks it stale (stale_after_s = 3), A stays fresh.
        rc, took = b.signal_and_wait(signal.SIGTERM)
        assert rc == 0 and took < STOP_BOUND_S

        def b_stale(d: dict) -> bool:
            nodes = {n["node"]: n for n in d["nodes"]}
            return nodes.get("pi-b", {}).get("stale") is True and nodes["pi-a"]["stale"] is False

        got = lines.until(b_stale, timeout=15)
        assert got["stale"] == 1
        rc, took = mon.signal_and_wait(signal.SIGTERM)
        assert rc == 0 and took < STOP_BOUND_S
        assert lines.bad == []
    finally:
        for p in procs:
            p.kill()


def test_render_table() -> None:
    t = [1000.0]
    view = FleetView(stale_after_s=5.0, clock=lambda: t[0])
    peer = "12D3KooWAarzhoLWpQDaDBzTEWRCN5u6NWPD34WvsXtm2TgzxFLP"
    view.receive(peer, encode_status(StatusMessage(
        node="pi-kitchen", peer_id=peer, version="0.1.0", seq=0, uptime_s=3.0, state="ok", peers=2,
        streams_in=1, temp_c=51.04, backends={"audio": "fake", "gpio": "rpi"}, group="house", receiving=True,
        capture_rms_dbfs=-31.2, playback_rms_dbfs=-12.6, playback_clipped=3, latency_p50_ms=61.0,
        latency_p99_ms=85.4, drops=4, frames_late=2)))
    lines = render_table(view.entries(), t[0], "header")
    assert lines[0] == "header"
    assert lines[1].startswith("NAME") and "MIC/SPK dBFS" in lines[1] and "LATENCY p50/p99" in lines[1]
    heads = [h for _, h in COLUMNS]
    starts = [lines[1].index(h) for h in heads]
    row = lines[2]
    cells = {k: row[a:b].strip() for (k, _), a, b in zip(COLUMNS, starts, starts[1:] + [len(row)])}
    assert cells["name"] == "pi-kitchen" and cells["state"] == "ok" and cells["peers"] == "2"
    assert cells["backends"] == "fake audio" and cells["group"] == "house" and cells["talk"] == "RX"
    assert cells["levels"] == "-31/-13 3 clip" and cells["latency"] == "61/85 ms"
    assert cells["drops"] == "4 +2 late" and cells["temp"] == "51.0°C" and cells["seen"] == "0s ago"
    t[0] += 6
    assert fleet_rows(view.entries(), t[0])[0]["state"] == "stale"
    assert render_table([], t[0])[-1] == NO_NODES_HINT
    assert "--dial ADDR" in NO_NODES_HINT and "mDNS" in NO_NODES_HINT


def test_live_table_keeps_stderr_below_it(capfd) -> None:
    """While the live table owns the terminal, whatever is written to fd 2 (py-libp2p prints
    there too) goes to a file; the table shows its last lines, and it is echoed at exit."""
    import os

    from agent.monitor import _StderrToFile

    redirect = _StderrToFile()
    with redirect:
        os.write(2, b"libp2p: something noisy\nsecond line\n")
        assert redirect.tail() == ["libp2p: something noisy", "second line"]
        assert capfd.readouterr().err == ""  # nothing reached the terminal meanwhile
    assert capfd.readouterr().err == "libp2p: something noisy\nsecond line\n"
