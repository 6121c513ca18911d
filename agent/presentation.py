"""What the service shows, read from its state: the figures of the status message, the STATUS=
line for ``systemctl status``, /metrics and /status, and the LED pattern (idle or error).

Read-only: nothing here changes the service (the one state of its own is the process CPU
sampler, which measures between two reads).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any, Protocol

from agent import __version__
from agent.config import AgentConfig
from agent.devices import DeviceSupervisor
from agent.faults import Faults
from agent.health import ProcessCpu, load_average, soc_temperature
from agent.identify import IdentifyPolicy
from agent.metrics import NodeMetrics
from agent.status import LocalFigures, Status, TalkStreamStatus, fake_devices
from agent.talk import TalkLike

if TYPE_CHECKING:  # the mesh node's module loads py-libp2p: only its types are needed here
    from agent.mesh import AviP2p, AviP2pHandle

__all__ = ["ServiceState", "ServiceView", "backends"]

log = logging.getLogger("agent.service")


class ServiceState(Protocol):
    """What the view reads of the service (``agent.service.Service``)."""

    config: AgentConfig
    phase: str  # starting, ready, stopping
    faults: Faults
    restart_needed: list[str]
    hw: DeviceSupervisor
    node: AviP2p | None  # while the mesh runs
    handle: AviP2pHandle | None
    status: Status | None
    talk: TalkLike | None  # while push-to-talk runs
    peer_id: str | None
    listen_addresses: list[str]
    identify_policy: IdentifyPolicy


def backends(config: AgentConfig) -> dict[str, str]:
    return {"audio": config.audio.backend, "gpio": config.gpio.backend}


class ServiceView:
    """The service's figures, status line, metrics and LED pattern, computed on demand."""

    def __init__(self, state: ServiceState) -> None:
        self.state = state
        self._cpu = ProcessCpu()

    def stream_counts(self) -> tuple[int, int]:
        """Live audio streams of the mesh node: (in, out)."""
        node = self.state.node
        if node is None:
            return 0, 0
        live = [s for s in node.stats().streams if s.state != "closed"]
        return (sum(1 for s in live if s.direction == "in"), sum(1 for s in live if s.direction == "out"))

    def figures(self) -> LocalFigures:
        """This node's figures for the status message."""
        s = self.state
        peers = [str(p) for p in s.handle.connected_peers()] if s.handle is not None else []
        s_in, s_out = self.stream_counts()
        sent = received = drops = xruns = late = concealed = 0
        stretched = 0.0
        streams: tuple[TalkStreamStatus, ...] = ()
        p50 = p95 = p99 = None
        tx = rx = False
        group = s.config.talk.active_group
        cap_lv = play_lv = None
        if s.node is not None:
            st = s.node.stats()
            drops += st.audio_frames_dropped
            sent = sum(x.frames_sent for x in st.streams)
            received = sum(x.frames_received for x in st.streams)
        if s.talk is not None:
            try:
                ts = s.talk.stats()
                sent, received = ts.frames_sent, ts.frames_received
                drops += ts.frames_dropped
                late = ts.frames_late
                p50, p95, p99 = ts.latency_p50_ms, ts.latency_p95_ms, ts.latency_p99_ms
                concealed = ts.frames_concealed
                stretched = ts.stretched_ms
                streams = tuple(TalkStreamStatus(peer=str(x.peer), codec=x.codec, delay_ms=float(x.delay_ms),
                                                 target_ms=float(x.target_ms), concealed=x.concealed,
                                                 stretched_ms=float(x.stretched_ms), late=x.late)
                                for x in ts.streams)
                s_in, s_out = max(s_in, ts.streams_in), max(s_out, ts.streams_out)
                tx, rx = ts.transmitting, ts.receiving
                group = ts.group
                c, p = ts.capture_levels, ts.playback_levels
                cap_lv = (c.rms_dbfs, c.peak_dbfs, c.clipped)
                play_lv = (p.rms_dbfs, p.peak_dbfs, p.clipped)
            except Exception as exc:
                log.debug("talk.stats() failed: %s", exc)
        d = s.hw.devices
        if d is not None:
            for dev in (d.source, d.sink):
                try:
                    a = dev.stats()
                    xruns += a.xruns
                    drops += a.dropped
                except Exception as exc:
                    log.debug("device stats failed: %s", exc)
        state = "starting" if s.phase == "starting" else ("degraded" if s.faults.active else "ok")
        return LocalFigures(state=state, peers=peers, streams_in=s_in, streams_out=s_out,
                            frames_sent=sent, frames_received=received, xruns=xruns, drops=drops,
                            cpu_load=load_average(), process_cpu=self._cpu.sample(),
                            temp_c=soc_temperature(), talk=s.talk is not None,
                            frames_late=late, latency_p50_ms=p50, latency_p99_ms=p99, latency_p95_ms=p95,
                            frames_concealed=concealed, stretched_ms=stretched, talk_streams=streams,
                            last_error=s.faults.last_error, backends=backends(s.config),
                            transmitting=tx, receiving=rx, group=group,
                            capture_levels=cap_lv, playback_levels=play_lv)

    def status_line(self) -> str:
        """One line for ``systemctl status``: phase, peers, fleet, streams, talk, errors. Once
        ready, a fault puts ``degraded: <what>`` first (it is what the admin needs to see)."""
        s = self.state
        n_peers = len(s.handle.connected_peers()) if s.handle is not None else 0
        s_in, s_out = self.stream_counts()
        degraded = s.phase == "ready" and bool(s.faults.active)
        parts = [f"degraded: {s.faults.summary()}"] if degraded else []
        parts.append(f"{s.config.node.name} {s.phase}")
        parts.append(f"{n_peers} peer{'s' if n_peers != 1 else ''}")
        if s.status is not None:
            fs = s.status.view.stats()
            parts.append(f"fleet {fs.nodes - fs.stale} seen" + (f", {fs.stale} stale" if fs.stale else ""))
            if fs.rejected:
                parts.append(f"{fs.rejected} bad status msgs")
        parts.append(f"streams {s_in} in/{s_out} out")
        parts.append("talk on" if s.talk is not None else "talk off")
        parts.extend(fake_devices(backends(s.config)))
        if s.restart_needed:
            parts.append("restart needed for " + ", ".join(s.restart_needed[:4])
                         + (" ..." if len(s.restart_needed) > 4 else ""))
        if not degraded:
            parts.append(f"ERROR {s.faults.summary()}" if s.faults.active else "no errors")
        return "; ".join(parts)

    def led_pattern(self) -> str:
        """The service's LED pattern: ``error`` while any fault is active, else ``idle``."""
        return "error" if self.state.faults.active else "idle"

    def metrics_snapshot(self) -> NodeMetrics:
        """The figures /metrics and /status show, read now."""
        s = self.state
        f = self.figures()
        st = s.node.stats() if s.node is not None else None
        fs = s.status.view.stats() if s.status is not None else None
        levels = {}
        if f.capture_levels is not None:
            levels["capture"] = f.capture_levels
        if f.playback_levels is not None:
            levels["playback"] = f.playback_levels
        xruns = {}
        if s.hw.audio is not None:
            for name, dev in (("capture", s.hw.audio[0]), ("playback", s.hw.audio[1])):
                try:
                    xruns[name] = dev.stats().xruns
                except Exception:  # a device fault is reported by the health check
                    pass
        a = s.config.audio
        msg: dict[str, Any] = {}
        if s.status is not None:
            try:
                msg = s.status.build().model_dump(mode="json")
            except Exception as exc:  # /status must answer even when a figure is odd
                msg = {"error": f"{type(exc).__name__}: {exc}"}
        status = {"node": s.config.node.name, "peer_id": s.peer_id, "phase": s.phase,
                  "summary": self.status_line(), "listen_addresses": s.listen_addresses,
                  "faults": dict(s.faults.active), "restart_needed": s.restart_needed,
                  "backends": backends(s.config),
                  "gains_db": {"capture": a.capture_gain_db, "playback": a.playback_gain_db},
                  "status": msg}
        return NodeMetrics(
            node=s.config.node.name, peer_id=s.peer_id or "", version=__version__, state=f.state,
            backends=backends(s.config), peers=len(f.peers),
            fleet_fresh=(fs.nodes - fs.stale) if fs else 0, fleet_stale=fs.stale if fs else 0,
            streams_in=f.streams_in, streams_out=f.streams_out, frames_sent=f.frames_sent,
            frames_received=f.frames_received, frames_late=f.frames_late,
            frames_concealed=f.frames_concealed, frames_dropped=f.drops,
            bytes_sent=st.bytes_out if st else 0, bytes_received=st.bytes_in if st else 0,
            messages_published=st.messages_published if st else 0,
            messages_received=st.messages_received if st else 0, xruns=xruns,
            latency=s.talk.latency_histogram if s.talk is not None else None, levels=levels,
            gains_db={"capture": a.capture_gain_db, "playback": a.playback_gain_db},
            transmitting=f.transmitting, receiving=f.receiving, group=f.group,
            groups=tuple(s.config.talk.groups), load=f.cpu_load, temp_c=f.temp_c,
            faults=len(s.faults.active), status_rejected=fs.rejected if fs else 0,
            identify=dict(s.identify_policy.counts), status=status)
