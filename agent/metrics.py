"""Prometheus metrics of one node: ``GET /metrics`` (text format 0.0.4) and ``GET /status`` (JSON).

The service serves both from its own trio task (:func:`serve_metrics`, via :mod:`agent.httpd`,
not prometheus_client's threaded server) on ``metrics.listen``, 127.0.0.1:9464 by default. Values
are read at scrape time from a :class:`NodeMetrics` snapshot the service builds; nothing is
counted twice. Names follow Prometheus conventions: ``avi_`` prefix, base units in the name
(seconds, bytes, dBFS, celsius), ``_total`` for counters; the process figures are
prometheus_client's standard ``process_*`` (CPU seconds, resident memory, open fds).

:class:`LatencyHistogram` is the pure, cumulative mouth-to-ear histogram talk fills per frame.
"""

from __future__ import annotations

import bisect
import importlib
import json
import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import trio

from agent.config import DEFAULT_METRICS_LISTEN, MetricsConfig
from agent.faults import FaultReporter, describe

__all__ = ["LatencyHistogram", "LATENCY_BUCKETS_S", "NodeMetrics", "METRIC_NAMES", "render_metrics",
           "metrics_handler", "serve_metrics"]

log = logging.getLogger("agent.service")  # the service's lines (tests and the journal read them so)

METRICS_RETRY_S = 30.0

# Mouth-to-ear latency buckets (seconds): 40 ms of jitter buffer plus a few frames is ~80 ms.
LATENCY_BUCKETS_S = (0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.15, 0.2, 0.3, 0.5, 1.0, 2.0)


class LatencyHistogram:
    """Cumulative counts of latencies (one ``observe_us`` per played frame: a bisect and two adds)."""

    def __init__(self, buckets_s: Iterable[float] = LATENCY_BUCKETS_S) -> None:
        self.bounds_us = [int(b * 1_000_000) for b in buckets_s]
        self.counts = [0] * (len(self.bounds_us) + 1)  # the last is +Inf
        self.count = 0
        self.sum_us = 0

    def observe_us(self, latency_us: int) -> None:
        self.counts[bisect.bisect_left(self.bounds_us, latency_us)] += 1
        self.count += 1
        self.sum_us += latency_us

    def cumulative(self) -> list[tuple[str, int]]:
        """``[(le, count <= le), ..., ("+Inf", total)]`` as Prometheus wants them."""
        out, acc = [], 0
        for b, c in zip(self.bounds_us, self.counts):
            acc += c
            out.append((repr(b / 1_000_000), acc))
        out.append(("+Inf", acc + self.counts[-1]))
        return out


@dataclass(frozen=True, slots=True)
class NodeMetrics:
    """Everything /metrics shows, as plain values (built by the service at scrape time)."""

    node: str
    peer_id: str
    version: str
    state: str
    backends: dict[str, str] = field(default_factory=dict)
    peers: int = 0
    fleet_fresh: int = 0
    fleet_stale: int = 0
    streams_in: int = 0
    streams_out: int = 0
    frames_sent: int = 0
    frames_received: int = 0
    frames_late: int = 0
    frames_concealed: int = 0
    frames_dropped: int = 0
    bytes_sent: int = 0
    bytes_received: int = 0
    messages_published: int = 0
    messages_received: int = 0
    xruns: dict[str, int] = field(default_factory=dict)  # device -> count
    latency: LatencyHistogram | None = None
    levels: dict[str, tuple[float, float, int]] = field(default_factory=dict)  # dir -> rms, peak, clipped
    gains_db: dict[str, float] = field(default_factory=dict)
    transmitting: bool = False
    receiving: bool = False
    group: str | None = None
    groups: tuple[str, ...] = ()
    load: float | None = None
    temp_c: float | None = None
    faults: int = 0
    status_rejected: int = 0
    identify: dict[str, int] = field(default_factory=dict)  # result -> count
    status: dict[str, Any] = field(default_factory=dict)  # what /status returns


# name -> (type, help); the README's list is made from this.
METRIC_NAMES: dict[str, tuple[str, str]] = {
    "avi_build_info": ("gauge", "1, labelled with version, node name and peer id"),
    "avi_node_state": ("gauge", "1 for the node's current state (starting, ok, degraded)"),
    "avi_backend_info": ("gauge", "1, labelled with the audio and gpio backends (fake or real)"),
    "avi_peers": ("gauge", "connected peers"),
    "avi_fleet_nodes": ("gauge", "other nodes in the fleet view, by freshness (fresh, stale)"),
    "avi_audio_streams": ("gauge", "open audio streams by direction (in, out)"),
    "avi_audio_frames_sent_total": ("counter", "audio frames sent to peers"),
    "avi_audio_frames_received_total": ("counter", "audio frames received from peers"),
    "avi_audio_frames_late_total": ("counter", "received frames that came too late to play"),
    "avi_audio_frames_concealed_total": ("counter", "missing frames filled by concealment"),
    "avi_audio_frames_dropped_total": ("counter", "frames dropped (queues, overruns, undecodable)"),
    "avi_mesh_bytes_sent_total": ("counter", "bytes sent on the mesh (pub/sub and audio streams)"),
    "avi_mesh_bytes_received_total": ("counter", "bytes received on the mesh"),
    "avi_mesh_messages_published_total": ("counter", "pub/sub messages published"),
    "avi_mesh_messages_received_total": ("counter", "pub/sub messages received"),
    "avi_audio_xruns_total": ("counter", "device overruns/underruns, by device (capture, playback)"),
    "avi_mouth_to_ear_latency_seconds": ("histogram", "capture timestamp to playback hand-off, per played frame"),
    "avi_audio_level_rms_dbfs": ("gauge", "RMS level over the last second, by direction (capture, playback)"),
    "avi_audio_level_peak_dbfs": ("gauge", "peak level over the last second, by direction"),
    "avi_audio_clipped_samples_total": ("counter", "samples at full scale, by direction"),
    "avi_audio_gain_db": ("gauge", "configured gain, by direction"),
    "avi_talk_transmitting": ("gauge", "1 while this node's button is held and it transmits"),
    "avi_talk_receiving": ("gauge", "1 while this node plays someone's talk"),
    "avi_talk_group_info": ("gauge", "1 for the current talk group, 0 for the node's other groups"),
    "avi_cpu_load_ratio": ("gauge", "1-minute load average divided by the number of CPUs"),
    "avi_soc_temperature_celsius": ("gauge", "SoC temperature (absent when the machine has no sensor)"),
    "avi_faults": ("gauge", "active faults (devices, audio, mesh, status, talk, config)"),
    "avi_status_messages_rejected_total": ("counter", "peers' status messages dropped as invalid"),
    "avi_identify_requests_total": ("counter", "identify requests by result (done, refused, rate_limited)"),
    "process_cpu_seconds_total": ("counter", "this process's CPU time (prometheus_client)"),
    "process_resident_memory_bytes": ("gauge", "this process's RSS (prometheus_client)"),
}


def _families(m: NodeMetrics) -> Iterable[Any]:
    from prometheus_client.core import (CounterMetricFamily, GaugeMetricFamily,
                                        HistogramMetricFamily)

    def g(name: str, labels: list[str] | None = None) -> GaugeMetricFamily:
        return GaugeMetricFamily(name, METRIC_NAMES[name][1], labels=labels)

    def c(name: str, labels: list[str] | None = None) -> CounterMetricFamily:
        # prometheus_client appends _total itself
        return CounterMetricFamily(name.removesuffix("_total"), METRIC_NAMES[name][1], labels=labels)

    f = g("avi_build_info", ["version", "node", "peer_id"])
    f.add_metric([m.version, m.node, m.peer_id], 1)
    yield f
    f = g("avi_node_state", ["state"])
    for s in ("starting", "ok", "degraded"):
        f.add_metric([s], 1 if m.state == s else 0)
    yield f
    f = g("avi_backend_info", ["audio", "gpio"])
    f.add_metric([m.backends.get("audio", ""), m.backends.get("gpio", "")], 1)
    yield f
    yield GaugeMetricFamily("avi_peers", METRIC_NAMES["avi_peers"][1], value=m.peers)
    f = g("avi_fleet_nodes", ["freshness"])
    f.add_metric(["fresh"], m.fleet_fresh)
    f.add_metric(["stale"], m.fleet_stale)
    yield f
    f = g("avi_audio_streams", ["direction"])
    f.add_metric(["in"], m.streams_in)
    f.add_metric(["out"], m.streams_out)
    yield f
    for name, value in (("avi_audio_frames_sent_total", m.frames_sent),
                        ("avi_audio_frames_received_total", m.frames_received),
                        ("avi_audio_frames_late_total", m.frames_late),
                        ("avi_audio_frames_concealed_total", m.frames_concealed),
                        ("avi_audio_frames_dropped_total", m.frames_dropped),
                        ("avi_mesh_bytes_sent_total", m.bytes_sent),
                        ("avi_mesh_bytes_received_total", m.bytes_received),
                        ("avi_mesh_messages_published_total", m.messages_published),
                        ("avi_mesh_messages_received_total", m.messages_received),
                        ("avi_status_messages_rejected_total", m.status_rejected)):
        f = c(name)
        f.add_metric([], value)
        yield f
    f = c("avi_audio_xruns_total", ["device"])
    for dev in ("capture", "playback"):
        f.add_metric([dev], m.xruns.get(dev, 0))
    yield f
    hist = m.latency or LatencyHistogram()
    yield HistogramMetricFamily("avi_mouth_to_ear_latency_seconds",
                                METRIC_NAMES["avi_mouth_to_ear_latency_seconds"][1],
                                buckets=hist.cumulative(), sum_value=hist.sum_us / 1_000_000)
    rms, peak, clip = g("avi_audio_level_rms_dbfs", ["direction"]), g("avi_audio_level_peak_dbfs", ["direction"]), \
        c("avi_audio_clipped_samples_total", ["direction"])
    for d, (r, p, n) in sorted(m.levels.items()):
        rms.add_metric([d], r)
        peak.add_metric([d], p)
        clip.add_metric([d], n)
    yield rms
    yield peak
    yield clip
    f = g("avi_audio_gain_db", ["direction"])
    for d, v in sorted(m.gains_db.items()):
        f.add_metric([d], v)
    yield f
    yield GaugeMetricFamily("avi_talk_transmitting", METRIC_NAMES["avi_talk_transmitting"][1],
                            value=int(m.transmitting))
    yield GaugeMetricFamily("avi_talk_receiving", METRIC_NAMES["avi_talk_receiving"][1], value=int(m.receiving))
    f = g("avi_talk_group_info", ["group"])
    for grp in m.groups:
        f.add_metric([grp], 1 if grp == m.group else 0)
    yield f
    if m.load is not None:
        yield GaugeMetricFamily("avi_cpu_load_ratio", METRIC_NAMES["avi_cpu_load_ratio"][1], value=m.load)
    if m.temp_c is not None:
        yield GaugeMetricFamily("avi_soc_temperature_celsius", METRIC_NAMES["avi_soc_temperature_celsius"][1],
                                value=m.temp_c)
    yield GaugeMetricFamily("avi_faults", METRIC_NAMES["avi_faults"][1], value=m.faults)
    f = c("avi_identify_requests_total", ["result"])
    for r in ("done", "refused", "rate_limited"):
        f.add_metric([r], m.identify.get(r, 0))
    yield f


class _Collector:
    def __init__(self, snapshot: Callable[[], NodeMetrics]) -> None:
        self.snapshot = snapshot

    def collect(self) -> Iterable[Any]:
        return list(_families(self.snapshot()))


def _registry(snapshot: Callable[[], NodeMetrics]) -> Any:
    from prometheus_client import CollectorRegistry, ProcessCollector

    reg = CollectorRegistry(auto_describe=False)
    reg.register(_Collector(snapshot))  # type: ignore[arg-type]
    ProcessCollector(registry=reg)
    return reg


def render_metrics(snapshot: Callable[[], NodeMetrics], registry: Any = None) -> bytes:
    """The Prometheus text exposition of ``snapshot()`` plus process metrics."""
    from prometheus_client import generate_latest

    return generate_latest(registry if registry is not None else _registry(snapshot))


def metrics_handler(snapshot: Callable[[], NodeMetrics]) -> Any:
    """An :mod:`agent.httpd` handler for ``/metrics`` and ``/status``."""
    from prometheus_client import CONTENT_TYPE_LATEST

    from agent.httpd import Request, Response

    registry = _registry(snapshot)

    async def handle(req: Request) -> Response:
        if req.method not in ("GET", "HEAD"):
            return Response(405, b"GET only\n")
        if req.path == "/metrics":
            return Response(200, render_metrics(snapshot, registry), CONTENT_TYPE_LATEST)
        if req.path == "/status":
            body = json.dumps(snapshot().status, indent=1).encode() + b"\n"
            return Response(200, body, "application/json")
        if req.path == "/":
            return Response(200, b"avi-agent: GET /metrics (Prometheus), GET /status (JSON)\n")
        return Response(404, b"not found: try /metrics or /status\n")

    return handle


async def serve_metrics(cfg: MetricsConfig, snapshot: Callable[[], NodeMetrics], reporter: FaultReporter) -> None:
    """Serve /metrics and /status on ``cfg.listen`` until cancelled (nothing when it is off),
    retried while the address is busy; a busy default address is not a fault (several agents on
    one machine: the first one serves it)."""
    addr = cfg.address
    if addr is None:
        return
    # prometheus_client takes a while to import: on a worker thread, so the event loop (the
    # capture device, the watchdog) is not held up meanwhile.
    await trio.to_thread.run_sync(importlib.import_module, "prometheus_client", abandon_on_cancel=True)
    from agent.httpd import serve_http

    handler = metrics_handler(snapshot)
    default = cfg.listen == DEFAULT_METRICS_LISTEN
    while True:
        why = None
        try:
            async with trio.open_nursery() as n:
                address = await n.start(serve_http, handler, addr[0], addr[1])
                reporter.clear_fault("metrics")
                log.info("metrics: http://%s:%d/metrics and /status", *address[:2])
        except* OSError as group:
            why = describe(group)
        if why is not None and default:
            # Several agents on one machine (tests, the demo): the first one serves it.
            log.info("metrics: cannot listen on %s (%s); /metrics is not served", cfg.listen, why)
            return
        if why is not None:
            reporter.fault("metrics", f"cannot listen on {cfg.listen}: {why}")
        await trio.sleep(METRICS_RETRY_S)
