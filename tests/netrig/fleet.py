"""A fleet of real `avi-agent run` processes, one per network namespace of the rig, with the
shipped defaults (mDNS, Kademlia, status interval, talk settings): what `bench/fleet.py` and
the slow fleet test run. Only the node's name, listen address, identity file, fake speaker WAV
and one talker's scripted press differ from `config/agent.toml`.

Time line (seconds after the last node starts; the talker is the last node started):

    0 .. CONVERGE_S          wait for every node's fleet view (its status says fleet = N-1)
    .. PRESS_AT - 1          idle window, the last `idle_s` before the press (a settled fleet):
                             CPU, RSS, bytes on the wire, log lines
    PRESS_AT .. +TALK_S      the talker holds its button (440 Hz tone)
    .. +TAIL_S               final status messages; then SIGTERM to every node at once

Each node's figures come from its own status messages (an `avi-agent monitor --json` on one
more host of the rig), /proc (CPU, RSS), the bridge's per-port counters (bytes) and its log. Its
fleet view is read from the node itself (`GET /status` of its metrics endpoint, which listens on
the node's rig address here instead of 127.0.0.1, polled by tests/netrig/viewpoll.py from the
monitor's host): a status message carries the count of nodes seen, but only with the node's next
message (at N = 50 every 50 s), not when it changes.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from statistics import median
from typing import Any

from agent.config import AgentConfig, to_toml
from agent.measure import analyse_wav
from agent.mesh import new_identity, peer_id_of, read_identity, write_identity

from .rig import Rig

REPO = Path(__file__).resolve().parents[2]
PY = sys.executable
VIEWPOLL = str(Path(__file__).with_name("viewpoll.py"))
METRICS_PORT = 9464
TONE_HZ = 440.0
FRAME_S = 0.02
LOUD_RMS = 500.0


@dataclass
class Schedule:
    start_gap_s: float = 1.0     # between node starts
    converge_s: float = 30.0     # longest wait for the full view (after the last start)
    idle_s: float = 20.0         # idle window: the last idle_s s before the press (the view complete)
    talk_s: float = 5.0
    tail_s: float = 8.0          # after the release: a periodic status (5 s) carries the totals
    exit_timeout_s: float = 20.0


@dataclass
class Node:
    index: int
    name: str
    dir: Path
    peer_id: str = ""
    proc: subprocess.Popen | None = None
    started_at: float = 0.0
    status: dict[str, Any] = field(default_factory=dict)

    @property
    def wav(self) -> Path:
        return self.dir / "heard.wav"

    @property
    def log(self) -> Path:
        return self.dir / "agent.log"


@dataclass
class Heard:
    sound_s: float
    peak_hz: float | None

    def heard(self, talk_s: float, hz: float = TONE_HZ) -> bool:
        return self.peak_hz is not None and abs(self.peak_hz - hz) < 10 and self.sound_s >= 0.8 * talk_s


def analyse(path: Path) -> Heard:
    """Seconds of sound and the dominant frequency in a node's speaker WAV."""
    if not path.exists():
        return Heard(0.0, None)
    tone = analyse_wav(path, threshold_rms=LOUD_RMS, spectrum_of="loud")
    return Heard(tone.sound_s, tone.peak_hz)


def node_config(node: Node, host_ip: str, press: tuple[float, float] | None,
                extra: dict[str, dict[str, object]] | None = None) -> str:
    """Shipped defaults, except what must differ per node (and `extra`, for baselines)."""
    data: dict[str, dict[str, Any]] = {
        "node": {"name": node.name},
        "mesh": {"listen_host": host_ip, "identity_path": str(node.dir / "identity.key")},
        "audio": {"backend": "fake", "fake_source": {"kind": "tone", "frequency_hz": TONE_HZ},
                  "fake_sink": {"kind": "wav", "path": str(node.wav)}},
        "gpio": {"backend": "fake"},
        "logging": {"journal": "never"},
        # Served on the rig address so the harness can read the node's own fleet view.
        "metrics": {"listen": f"{host_ip}:{METRICS_PORT}"},
    }
    for section, values in (extra or {}).items():  # "audio.fake_source" names a nested table
        table = data
        for part in section.split("."):
            table = table.setdefault(part, {})
        table.update(values)
    if press is not None:
        data["gpio"]["fake_presses"] = [{"at_s": press[0], "duration_s": press[1]}]
    AgentConfig.model_validate(data)
    return to_toml(data)


def _cpu_s(pid: int) -> float:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _rss_mb(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def _port_bytes(rig: Rig) -> dict[str, tuple[int, int]]:
    """Per bridge port: (bytes the host sent, bytes it received)."""
    out = subprocess.run(["ip", "-n", rig.bridge_ns, "-j", "-s", "link", "show"], capture_output=True,
                         text=True, check=True).stdout
    res = {}
    for link in json.loads(out):
        st = link.get("stats64") or link.get("stats") or {}
        res[link["ifname"]] = (st["rx"]["bytes"], st["tx"]["bytes"])
    return res


def _jsonl(path: Path) -> list[dict[str, Any]]:
    out = []
    for line in path.read_text().splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            continue  # a line being written
    return out


def _poll_views(mon_host: Any, nodes: list[Node], rig: Rig, env: dict[str, str]) -> list[int]:
    """Each node's count of nodes in its fleet view now (its /status), 0 when it does not answer."""
    addresses = [f"{nd.name}={host.ip}" for nd, host in zip(nodes, rig)]
    proc = mon_host.exec([PY, VIEWPOLL, "--once", "--want", "0", "--port", str(METRICS_PORT), *addresses],
                         stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env, text=True)
    try:
        stdout, _ = proc.communicate(timeout=30 + 2 * len(nodes))
    except subprocess.TimeoutExpired:
        mon_host.kill(proc)
        stdout = ""
    got = {}
    for line in stdout.splitlines():
        rec = json.loads(line)
        got[rec["node"]] = rec["fleet"] or 0
    return [got.get(nd.name, 0) for nd in nodes]


def _lines(path: Path) -> int:
    try:
        with path.open("rb") as f:
            return sum(1 for _ in f)
    except OSError:
        return 0


@dataclass
class FleetResult:
    n: int
    full_view_s: float | None            # after the last start
    views: list[int]                     # each node's fleet size at the end of the run
    connections: list[int]
    idle_cpu_pct: list[float]
    rss_mb: list[float]
    idle_out_bps: list[float]
    idle_in_bps: list[float]
    log_lines_per_min: list[float]
    heard: list[bool]
    frames_received: list[int]
    frames_late: list[int]
    p50_ms: list[float]
    p99_ms: list[float]
    talker_cpu_pct: float
    talker_up_bps: float
    fleet_talk_out_bps: float            # every node's upload during the talk (airtime), all nodes
    exit_s: list[float]
    exit_codes: list[int | None]
    load: tuple[float, float, float]
    notes: list[str] = field(default_factory=list)
    heard_detail: list[Heard] = field(default_factory=list)  # each listener's WAV analysis

    @property
    def expected_frames(self) -> int:
        return 0

    def row(self) -> dict[str, str]:
        def med(v: list[float]) -> str:
            return f"{median(v):.2f}" if v else "-"

        listeners = self.n - 1
        frames = round(TALK_FRAMES)
        lost = [max(0, frames - r) / frames * 100 for r in self.frames_received]
        return {
            "N": str(self.n),
            "full view": "never" if self.full_view_s is None else f"{self.full_view_s:.1f} s",
            "conns/node": f"{median(self.connections):.0f} ({min(self.connections)}-{max(self.connections)})"
            if self.connections else "-",
            "idle CPU %": f"{med(self.idle_cpu_pct)} (max {max(self.idle_cpu_pct):.1f})" if self.idle_cpu_pct else "-",
            "RSS MB": med(self.rss_mb),
            "idle out/in kB/s": f"{median(self.idle_out_bps) / 1000:.2f}/{median(self.idle_in_bps) / 1000:.2f}"
            if self.idle_out_bps else "-",
            "log lines/min": med(self.log_lines_per_min),
            "heard": f"{sum(self.heard)}/{listeners}",
            "lost % (max)": f"{median(lost):.1f} ({max(lost):.1f})" if lost else "-",
            "late (max)": f"{median(self.frames_late):.0f} ({max(self.frames_late)})" if self.frames_late else "-",
            "m2e p50/p99 ms": f"{med(self.p50_ms)}/{max(self.p99_ms):.0f}" if self.p99_ms else "-",
            "talker CPU %": f"{self.talker_cpu_pct:.0f}",
            "talker up kB/s": f"{self.talker_up_bps / 1000:.0f}",
            "fleet up in talk kB/s": f"{self.fleet_talk_out_bps / 1000:.0f}",
            "SIGTERM exit s": f"{median(self.exit_s):.2f} (max {max(self.exit_s):.2f})" if self.exit_s else "-",
            "load": "/".join(f"{x:.1f}" for x in self.load),
        }


TALK_FRAMES = 5.0 / FRAME_S


def run_fleet(n: int, out: Path, *, schedule: Schedule | None = None,
              extra: dict[str, dict[str, object]] | None = None, subnet: str = "10.78.0.0/24",
              log=print, code: Path = REPO) -> FleetResult:  # type: ignore[no-untyped-def]
    """Start `n` agents (the talker last), measure, stop them; everything is cleaned up.
    `code`: the checkout whose agent the nodes run (`python -m agent` from there: another
    commit's code as a baseline in the same run); the monitor always runs this one."""
    global TALK_FRAMES
    sch = schedule or Schedule()
    TALK_FRAMES = sch.talk_s / FRAME_S
    out.mkdir(parents=True, exist_ok=True)
    nodes = []
    for i in range(n):
        d = out / f"n{i:02d}"
        d.mkdir(exist_ok=True)
        key = d / "identity.key"
        if not key.exists():
            write_identity(key, new_identity())
        node = Node(i, f"n{i:02d}", d, peer_id_of(read_identity(key)))
        node.wav.unlink(missing_ok=True)
        nodes.append(node)
    talker = nodes[-1]
    by_peer = {nd.peer_id: nd for nd in nodes}
    # The press comes after the longest convergence wait and the idle window; the talker is the
    # last to start, so its press time counts from the last start.
    press_at = sch.converge_s + sch.idle_s + 3.0
    monitor_out = out / "monitor.jsonl"
    env = {k: v for k, v in os.environ.items()
           if k not in ("NOTIFY_SOCKET", "WATCHDOG_USEC") and not k.startswith("AVI_")}
    with Rig(n + 1, subnet) as rig:
        mon_host = rig[n]
        mon_dir = out / "monitor"
        mon_dir.mkdir(exist_ok=True)
        (mon_dir / "agent.toml").write_text(node_config(Node(n, "monitor", mon_dir), mon_host.ip, None, extra))
        with monitor_out.open("w") as mo, (mon_dir / "monitor.log").open("w") as me:
            monitor = mon_host.exec([PY, "-m", "agent", "monitor", "--config", str(mon_dir / "agent.toml"),
                                     "--json", "--duration", "3600"], cwd=REPO, stdout=mo, stderr=me, env=env)
        for node, host in zip(nodes, rig):
            press = (press_at, sch.talk_s) if node is talker else None
            (node.dir / "agent.toml").write_text(node_config(node, host.ip, press, extra))
        views_out = out / "views.jsonl"
        addresses = [f"{nd.name}={host.ip}" for nd, host in zip(nodes, rig)]
        with views_out.open("w") as vo:
            poller = mon_host.exec([PY, VIEWPOLL, "--want", str(n - 1), "--port", str(METRICS_PORT), "--interval", "1.0",
                                    "--duration", str(n * sch.start_gap_s + sch.converge_s + 5), *addresses],
                                   stdout=vo, stderr=subprocess.DEVNULL, env=env)
        t_last = 0.0
        for node, host in zip(nodes, rig):
            with node.log.open("wb") as lf:
                node.proc = host.exec([PY, "-m", "agent", "run", "--config", str(node.dir / "agent.toml")],
                                      cwd=code, stdin=subprocess.DEVNULL, stdout=lf, stderr=subprocess.STDOUT,
                                      env=env)
            node.started_at = t_last = time.monotonic()
            if node is not talker:
                time.sleep(sch.start_gap_s)
        log(f"N={n}: all {n} started; waiting for the fleet view")

        offset = 0

        def read_monitor() -> None:
            nonlocal offset
            with monitor_out.open() as f:
                f.seek(offset)
                chunk = f.read()
            cut = chunk.rfind("\n") + 1
            offset += len(chunk[:cut].encode())
            for line in chunk[:cut].splitlines():
                try:
                    view = json.loads(line)
                except json.JSONDecodeError:
                    continue
                for st in view.get("nodes", []):
                    nd = by_peer.get(st.get("peer_id", ""))
                    if nd is not None:
                        nd.status = st

        # A node's view is complete from the first status in which it reports all others
        # (its status goes out as soon as the count changes, coalesced); the fleet's view is
        # complete when every node's has been. (Monitor lines are read as they come, so a
        # node's time is when its message arrived, a little after its view completed.)
        # A node's view is complete from the first poll of its /status that counts all others
        # (polled every 1 s: each poll costs the node ~3 ms, and 50 nodes at 2 polls/s loaded the
        # machine during the start); the fleet's view is complete when every node's has been.
        full_at = None
        complete: dict[str, float] = {}
        seen: dict[str, int] = {}
        while time.monotonic() - t_last < sch.converge_s:
            read_monitor()
            for nd in nodes:
                assert nd.proc is not None
                if nd.proc.poll() is not None:
                    raise RuntimeError(f"{nd.name} exited {nd.proc.returncode}:\n{nd.log.read_text()[-2000:]}")
            for rec in _jsonl(views_out):
                if "fleet" in rec:
                    seen[rec["node"]] = rec["fleet"]
                if rec.get("complete") and rec["node"] not in complete:
                    complete[rec["node"]] = max(0.0, rec["t"] - t_last)
            if len(complete) == n:
                full_at = max(complete.values())
                break
            time.sleep(0.2)
        rig[n].kill(poller, signal.SIGTERM)
        views = [seen.get(nd.name, 0) for nd in nodes]
        log(f"N={n}: full view {'never' if full_at is None else f'after {full_at:.1f} s'}; "
            f"views now {sorted(views)}; {len(complete)} nodes have had a complete view")

        # Idle window: the last idle_s seconds before the press, once the view is complete (or
        # converge_s has passed). A fleet that has just completed its view still has start-up
        # traffic under way (retained hand-overs, on-change statuses, gossip): that is not idle.
        idle_until = t_last + press_at - 1.0
        settle = idle_until - sch.idle_s - time.monotonic()
        if settle > 0:
            time.sleep(settle)
        idle_from = time.monotonic()
        cpu0 = {nd.name: _cpu_s(nd.proc.pid) for nd in nodes}  # type: ignore[union-attr]
        bytes0 = _port_bytes(rig)
        lines0 = {nd.name: _lines(nd.log) for nd in nodes}
        time.sleep(max(1.0, idle_until - time.monotonic()))
        idle_dt = time.monotonic() - idle_from
        cpu1 = {nd.name: _cpu_s(nd.proc.pid) for nd in nodes}  # type: ignore[union-attr]
        bytes1 = _port_bytes(rig)
        lines1 = {nd.name: _lines(nd.log) for nd in nodes}
        read_monitor()
        rss = [_rss_mb(nd.proc.pid) for nd in nodes]  # type: ignore[union-attr]
        conns = [int(nd.status.get("peers", 0)) for nd in nodes]
        idle_cpu = [(cpu1[nd.name] - cpu0[nd.name]) / idle_dt * 100 for nd in nodes]
        ports = [f"vh{i}" for i in range(n)]
        idle_out = [(bytes1[p][0] - bytes0[p][0]) / idle_dt for p in ports]
        idle_in = [(bytes1[p][1] - bytes0[p][1]) / idle_dt for p in ports]
        log_rate = [(lines1[nd.name] - lines0[nd.name]) / idle_dt * 60 for nd in nodes]
        load = os.getloadavg()

        # Talk. The press time counts from the talker's own start (after its imports, seconds
        # after the process was spawned on a busy machine): measure from its "talking to
        # group" log line, not from the schedule.
        wait = t_last + press_at - time.monotonic()
        if wait > 0:
            time.sleep(wait)
        deadline = time.monotonic() + 30.0
        while "talking to group" not in talker.log.read_text(errors="replace") and time.monotonic() < deadline:
            time.sleep(0.05)
        t_cpu0 = _cpu_s(talker.proc.pid)  # type: ignore[union-attr]
        t_bytes0 = _port_bytes(rig)
        t0 = time.monotonic()
        time.sleep(max(1.0, sch.talk_s - 0.2))  # inside the press (the line comes at its start)
        talk_dt = time.monotonic() - t0
        t_cpu1 = _cpu_s(talker.proc.pid)  # type: ignore[union-attr]
        t_bytes1 = _port_bytes(rig)
        talker_cpu = (t_cpu1 - t_cpu0) / talk_dt * 100
        up = (t_bytes1[f"vh{talker.index}"][0] - t_bytes0[f"vh{talker.index}"][0]) / talk_dt
        # Gross: every copy on the shared medium counts (the idle window's traffic is another
        # column; subtracting it gave negative figures when the fleet was not settled).
        fleet_up = sum(t_bytes1[p][0] - t_bytes0[p][0] for p in ports) / talk_dt
        time.sleep(sch.tail_s)
        read_monitor()
        final_views = _poll_views(mon_host, nodes, rig, env)

        # SIGTERM to everyone at once (a busy fleet: all stop together).
        t_term = time.monotonic()
        for nd in nodes:
            try:
                os.kill(nd.proc.pid, signal.SIGTERM)  # type: ignore[union-attr]
            except ProcessLookupError:
                pass
        exit_s: dict[str, float] = {}
        while len(exit_s) < n and time.monotonic() - t_term < sch.exit_timeout_s:
            for nd in nodes:
                if nd.name not in exit_s and nd.proc.poll() is not None:  # type: ignore[union-attr]
                    exit_s[nd.name] = time.monotonic() - t_term
            time.sleep(0.02)
        codes = [nd.proc.poll() for nd in nodes]  # type: ignore[union-attr]
        rig[n].kill(monitor, signal.SIGTERM)
    listeners = [nd for nd in nodes if nd is not talker]
    heard_all = [analyse(nd.wav) for nd in listeners]
    result = FleetResult(
        n=n, full_view_s=full_at, views=final_views, connections=conns, idle_cpu_pct=idle_cpu, rss_mb=rss,
        idle_out_bps=idle_out, idle_in_bps=idle_in, log_lines_per_min=log_rate,
        heard=[h.heard(sch.talk_s) for h in heard_all],
        frames_received=[int(nd.status.get("frames_received", 0)) for nd in listeners],
        frames_late=[int(nd.status.get("frames_late", 0)) for nd in listeners],
        p50_ms=[float(nd.status["latency_p50_ms"]) for nd in listeners if nd.status.get("latency_p50_ms")],
        p99_ms=[float(nd.status["latency_p99_ms"]) for nd in listeners if nd.status.get("latency_p99_ms")],
        talker_cpu_pct=talker_cpu, talker_up_bps=up, fleet_talk_out_bps=fleet_up,
        exit_s=list(exit_s.values()), exit_codes=codes, load=load, heard_detail=heard_all)
    missing = [nd.name for nd, h in zip(listeners, heard_all) if not h.heard(sch.talk_s)]
    if missing:
        result.notes.append(f"not heard by {', '.join(missing[:10])}"
                            + (" ..." if len(missing) > 10 else "")
                            + "; e.g. " + "; ".join(f"{nd.name}: {analyse(nd.wav)}" for nd in listeners
                                                   if nd.name in missing[:3]))
    return result
