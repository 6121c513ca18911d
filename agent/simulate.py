"""`avi-agent simulate`: a small mesh of agent processes with fake hardware, on this machine.

Three agents (a, b, c) run as separate `avi-agent run` processes on 127.0.0.1, each with a
simulated sound card and button: a's button is pressed on a schedule while its fake microphone
plays a 440 Hz tone, b answers once at 660 Hz, c only listens. Every node records what it plays
to a WAV file and publishes its status; this process joins the mesh listen-only, shows the fleet
and the talk activity live, and ends with a summary (frames, latency, the recorded WAVs).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import trio

from agent.config import AgentConfig, StatusConfig, to_toml
from agent.measure import analyse_tone, read_wav
from agent.mesh import new_identity, peer_id_of, write_identity

STATUS_TOPIC = StatusConfig().topic  # the agents below keep the default


@dataclass
class SimNode:
    name: str
    tone_hz: float
    presses: list[tuple[float, float]]  # (at_s, duration_s) after the agent starts
    port: int = 0  # 0: prepare() picks a free port on 127.0.0.1
    host: str = "127.0.0.1"  # listen address (a test rig host's own address, say)
    enable_mdns: bool = False
    peer_id: str = ""
    dir: Path = Path()
    proc: subprocess.Popen[bytes] | None = None
    log: Path = Path()
    status: dict[str, object] = field(default_factory=dict)

    @property
    def addr(self) -> str:
        return f"/ip4/{self.host}/tcp/{self.port}/p2p/{self.peer_id}"

    @property
    def wav(self) -> Path:
        return self.dir / "heard.wav"


def default_nodes() -> list[SimNode]:
    return [
        SimNode("a", 440.0, [(4.0, 2.0), (11.0, 2.0)]),
        SimNode("b", 660.0, [(8.0, 1.5)]),
        SimNode("c", 880.0, []),
    ]


def min_duration(nodes: list[SimNode] | None = None) -> float:
    """The shortest run that plays the whole script: the last release, plus a second for the
    agents to start and a second for the last frames to arrive."""
    ends = [at + d for n in (nodes or default_nodes()) for at, d in n.presses]
    return max(ends, default=0.0) + 1.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def node_config(node: SimNode, bootstrap: list[str]) -> str:
    """The node's agent.toml: fake hardware, its own listen address, status every second."""
    data: dict[str, Any] = {
        "node": {"name": node.name},
        "mesh": {"listen_host": node.host, "listen_port": node.port, "bootstrap_peers": bootstrap,
                 "enable_mdns": node.enable_mdns, "enable_kad": True,
                 "identity_path": str(node.dir / "identity.key")},
        "audio": {"backend": "fake",
                  "fake_source": {"kind": "tone", "frequency_hz": node.tone_hz, "level": 0.5},
                  "fake_sink": {"kind": "wav", "path": str(node.wav)}},
        "gpio": {"backend": "fake",
                 "fake_presses": [{"at_s": at_s, "duration_s": dur} for at_s, dur in node.presses]},
        "status": {"interval_s": 1.0, "stale_after_s": 5.0},
        "logging": {"level": "INFO", "journal": "never"},
    }
    # Fail here, with the node named, rather than in three agents at once.
    AgentConfig.model_validate(data)
    return "# written by avi-agent simulate\n\n" + to_toml(data)


def prepare(out: Path, nodes: list[SimNode]) -> None:
    """Write each node's identity key and agent.toml under ``out/<name>``; every node but the
    first bootstraps to the first. Nodes without a port get a free one on 127.0.0.1."""
    out.mkdir(parents=True, exist_ok=True)
    for node in nodes:
        node.dir = out / node.name
        node.dir.mkdir(exist_ok=True)
        key_path = node.dir / "identity.key"
        if not key_path.exists():
            write_identity(key_path, new_identity())
        from agent.mesh import read_identity

        node.peer_id = peer_id_of(read_identity(key_path))
        if not node.port:
            node.port = free_port()
        node.wav.unlink(missing_ok=True)
    hub = nodes[0]
    for node in nodes:
        bootstrap = [] if node is hub else [hub.addr]
        (node.dir / "agent.toml").write_text(node_config(node, bootstrap))


def start(node: SimNode, popen: Callable[..., subprocess.Popen[bytes]] = subprocess.Popen) -> None:
    """Start ``avi-agent run`` for the node, output to ``agent.log``, in its own session.
    ``popen`` starts it elsewhere (a test rig's ``Host.exec`` runs it in a network namespace)."""
    node.log = node.dir / "agent.log"
    env = {k: v for k, v in os.environ.items() if k not in ("NOTIFY_SOCKET", "WATCHDOG_USEC")}
    env = {k: v for k, v in env.items() if not k.startswith("AVI_")}
    with open(node.log, "wb") as log:
        node.proc = popen(
            [sys.executable, "-m", "agent", "run", "--config", str(node.dir / "agent.toml")],
            stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, env=env,
            start_new_session=True)


def stop(node: SimNode, timeout: float = 10.0) -> int | None:
    if node.proc is None or node.proc.poll() is not None:
        return node.proc.returncode if node.proc else None
    node.proc.send_signal(signal.SIGTERM)
    try:
        return node.proc.wait(timeout)
    except subprocess.TimeoutExpired:
        os.killpg(node.proc.pid, signal.SIGKILL)
        return node.proc.wait()


def wav_summary(path: Path) -> str:
    """Duration, seconds with sound, and the tones of the loud parts."""
    if not path.exists():
        return "no file (nothing played)"
    x, rate = read_wav(path)
    text = f"{len(x) / rate:5.1f} s"
    heard = analyse_tone(x, rate, spectrum_of="loud", k=4, guard_hz=30.0)
    if not heard.loud_frames:
        return text + ", silence"
    tones = sorted(int(round(f / 10) * 10) for f, m in heard.peaks if m > heard.peaks[0][1] * 0.3)
    return text + f", {heard.sound_s:4.1f} s of sound, tones ~{', '.join(f'{t} Hz' for t in tones)}"


async def watch(nodes: list[SimNode], duration: float, live: bool) -> None:
    """Join the mesh listen-only, keep the latest status of every node, and show it."""
    import logging

    from agent.mesh import AviP2p, AviP2pConfig, Message

    # py-libp2p installs its own stderr handler on import; our table owns the terminal.
    logging.getLogger("libp2p").setLevel(logging.CRITICAL)
    by_peer = {n.peer_id: n for n in nodes}
    cfg = AviP2pConfig.local_only(node_name="simulate-monitor", bootstrap_peers=[nodes[0].addr])
    started = time.monotonic()
    async with AviP2p.start(cfg) as (node, events):
        await node.handle().subscribe(STATUS_TOPIC)
        async with trio.open_nursery() as nursery:
            async def collect() -> None:
                async for ev in events:
                    if isinstance(ev, Message) and ev.topic == STATUS_TOPIC and ev.peer_id in by_peer:
                        try:
                            by_peer[ev.peer_id].status = json.loads(ev.data)
                        except ValueError:
                            pass

            nursery.start_soon(collect)
            nursery.start_soon(_on_sigint, nursery.cancel_scope)
            shown = 0
            while (elapsed := time.monotonic() - started) < duration:
                for n in nodes:
                    if n.proc is not None and n.proc.poll() is not None:
                        raise RuntimeError(f"agent {n.name} exited with status {n.proc.returncode}; "
                                           f"see {n.log}")
                table = render(nodes, elapsed, duration)
                if live:
                    sys.stdout.write(("\033[%dA" % shown if shown else "") + "\033[J" + table + "\n")
                    shown = table.count("\n") + 1
                elif int(elapsed) % 3 == 0:
                    print(table, flush=True)
                sys.stdout.flush()
                await trio.sleep(0.5 if live else 1.0)
            nursery.cancel_scope.cancel()


async def _on_sigint(scope: trio.CancelScope) -> None:
    global _interrupted
    with trio.open_signal_receiver(signal.SIGINT) as signals:
        async for _ in signals:
            _interrupted = True
            scope.cancel()
            return


_interrupted = False


def _talk_state(n: SimNode, elapsed: float) -> str:
    for at_s, dur in n.presses:
        if at_s <= elapsed - 1.0 < at_s + dur:  # agents start about a second after us
            return f"TALKING {n.tone_hz:.0f} Hz"
    s = n.status
    if s.get("streams_in"):
        return "hearing"
    return "idle"


def render(nodes: list[SimNode], elapsed: float, duration: float) -> str:
    rows = [("NODE", "PEER", "STATE", "PEERS", "STREAMS", "SENT", "RECEIVED", "DROPPED",
             "LATENCY p50/p99", "TALK")]
    for n in nodes:
        s = n.status
        lat = (f"{s.get('latency_p50_ms'):.0f}/{s.get('latency_p99_ms'):.0f} ms"
               if s.get("latency_p50_ms") is not None else "-")
        rows.append((n.name, n.peer_id[-8:], str(s.get("state", "starting")), str(s.get("peers", "-")),
                     f"{s.get('streams_in', 0)} in/{s.get('streams_out', 0)} out",
                     str(s.get("frames_sent", 0)), str(s.get("frames_received", 0)),
                     str(s.get("drops", 0)), lat, _talk_state(n, elapsed)))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = [f"avi-agent simulate: {elapsed:4.1f} s of {duration:.0f} s"]
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
    return "\n".join(lines)


def run(out: Path, duration: float) -> int:
    global _interrupted
    _interrupted = False
    nodes = default_nodes()
    try:
        prepare(out, nodes)
    except OSError as exc:
        print(f"avi-agent simulate: cannot write the simulation files to {out}: "
              f"{exc.strerror or exc}", file=sys.stderr)
        return 1
    print(f"avi-agent simulate: 3 agents with fake hardware, files in {out}")
    for n in nodes:
        presses = ", ".join(f"{d:g} s at {a:g} s" for a, d in n.presses) or "never"
        print(f"  {n.name}: {n.addr}  tone {n.tone_hz:g} Hz, button pressed: {presses}")
    print()
    live = sys.stdout.isatty()
    try:
        for n in nodes:
            start(n)
        trio.run(watch, nodes, duration, live)
    except RuntimeError as exc:
        print(f"\navi-agent simulate: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:  # a Ctrl-C before the watcher's own handler was installed
        _interrupted = True
    finally:
        codes = {n.name: stop(n) for n in nodes}
    if _interrupted:
        print("\ninterrupted: the agents were stopped; the summary so far:")
        summary(nodes, codes)
        return 130
    return summary(nodes, codes)


def summary(nodes: list[SimNode], codes: dict[str, int | None]) -> int:
    print("\nsummary")
    print(f"  {'node':<5}{'sent':>7}{'received':>10}{'dropped':>9}{'late':>6}{'p50 ms':>8}{'p99 ms':>8}"
          f"  exit  recorded")
    ok = True
    for n in nodes:
        s = n.status
        p50 = s.get("latency_p50_ms")
        p99 = s.get("latency_p99_ms")
        print(f"  {n.name:<5}{s.get('frames_sent', 0):>7}{s.get('frames_received', 0):>10}"
              f"{s.get('drops', 0):>9}{s.get('frames_late', 0):>6}"
              f"{p50 if p50 is not None else '-':>8}{p99 if p99 is not None else '-':>8}"
              f"  {codes.get(n.name)!s:>4}  {n.wav}: {wav_summary(n.wav)}")
        if codes.get(n.name) != 0:
            ok = False
    print("  mouth-to-ear latency: capture timestamp on the talker to hand-over to the listener's "
          "sound card (one clock: all on this machine)")
    print(f"  logs: {', '.join(str(n.log) for n in nodes)}")
    heard = [n for n in nodes if n.status.get("frames_received", 0)]
    if len(heard) < 2:
        print("avi-agent simulate: FAILED: the listeners received no audio (see the logs)", file=sys.stderr)
        ok = False
    return 0 if ok else 1
