"""``avi-agent monitor``: a listen-only mesh node that shows the fleet's status live.

It joins the mesh like a node (same config file: bootstrap peers, mDNS, status topic) but with a
fresh identity (or ``--identity FILE``, for fleets with an allow list) and any free port, opens no
devices and publishes nothing but identify requests. Outputs:

- a terminal: the table redrawn in place; everything written to stderr meanwhile (py-libp2p
  included) goes to a file whose last lines are shown under the table, never over it;
- a pipe or file: the table as plain lines (no escape codes), printed when it changes;
- ``--json``: one JSON object per line whenever the view changes;
- ``--web [ADDR:PORT]``: a page with the same columns, updated by server-sent events
  (:mod:`agent.webmon`).

The columns come from :func:`fleet_rows`, shared by the table and the page.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import sys
import tempfile
import time
from collections.abc import Callable
from typing import Any, TextIO

import trio

from agent.config import AgentConfig
from agent.mesh import AviP2pError, Message
from agent.status import FleetEntry, FleetView, entry_json, fake_devices

__all__ = ["Monitor", "render_table", "fleet_rows", "COLUMNS", "NO_NODES_HINT", "dial_address_problem"]

log = logging.getLogger("agent.monitor")

HOME_CLEAR = "\x1b[H\x1b[2J"
EOL_CLEAR = "\x1b[K"
CLEAR_BELOW = "\x1b[J"
NO_NODES_HINT = ("(no status heard yet: listening on the LAN via mDNS; "
                 "for nodes elsewhere use --dial ADDR)")

# (key, heading) in display order; the web page uses the same list.
COLUMNS: list[tuple[str, str]] = [
    ("name", "NAME"), ("peer", "PEER"), ("state", "STATE"), ("backends", "DEVICES"), ("peers", "PEERS"),
    ("group", "GROUP"), ("talk", "TALK"), ("levels", "MIC/SPK dBFS"), ("latency", "LATENCY p50/p99"),
    ("drops", "DROPS"), ("audio", "AUDIO"), ("temp", "TEMP"), ("seen", "LAST SEEN"), ("error", "ERROR"),
]


def _short_peer(peer: str) -> str:
    return peer if len(peer) <= 16 else f"{peer[:6]}…{peer[-8:]}"


def _ago(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.0f}s ago"
    if seconds < 3600:
        return f"{seconds / 60:.0f}m ago"
    return f"{seconds / 3600:.1f}h ago"


def _db(v: float | None) -> str:
    return "-" if v is None else ("-inf" if v <= -120 else f"{v:.0f}")


def _audio_detail(s: Any) -> str:
    """Per-stream audio figures the node reports: codecs, jitter-buffer delay, concealment and
    time-stretching (``talk_streams``, ``frames_concealed``, ``stretched_ms``)."""
    parts = []
    streams = getattr(s, "talk_streams", None) or []
    codecs = sorted({str(getattr(x, "codec", "")) for x in streams} - {""})
    if codecs:
        parts.append("/".join(codecs))
    delays = [getattr(x, "delay_ms", None) for x in streams]
    delays = [d for d in delays if isinstance(d, (int, float))]
    if delays:
        parts.append(f"buf {max(delays):.0f} ms")
    concealed = getattr(s, "frames_concealed", 0) or 0
    if concealed:
        parts.append(f"{concealed} concealed")
    stretched = getattr(s, "stretched_ms", 0) or 0
    if stretched:
        parts.append(f"stretched {stretched:.0f} ms")
    return ", ".join(parts) or "-"


def fleet_rows(entries: list[FleetEntry], now: float) -> list[dict[str, Any]]:
    """One dict per node: the display text of every column in :data:`COLUMNS`, plus ``peer_id``,
    ``stale`` and ``talking`` for the page's styling and identify button."""
    rows = []
    for e in entries:
        s = e.status
        backends = getattr(s, "backends", {}) or {}
        fakes = fake_devices(backends)
        devices = ", ".join(fakes) if fakes else ("real" if backends else "-")
        talk = "TX" if s.transmitting else ("RX" if s.receiving else "-")
        lat = (f"{s.latency_p50_ms:.0f}/{s.latency_p99_ms:.0f} ms"
               if s.latency_p50_ms is not None and s.latency_p99_ms is not None else "-")
        clipped = s.capture_clipped + s.playback_clipped
        levels = f"{_db(s.capture_rms_dbfs)}/{_db(s.playback_rms_dbfs)}" + (f" {clipped} clip" if clipped else "")
        rows.append({
            "name": s.node, "peer": _short_peer(s.peer_id), "peer_id": s.peer_id,
            "state": "stale" if e.stale else s.state, "backends": devices, "peers": str(s.peers),
            "group": s.group or "-", "talk": talk, "levels": levels, "latency": lat,
            "drops": f"{s.drops}" + (f" +{s.frames_late} late" if s.frames_late else ""),
            "audio": _audio_detail(s),
            "temp": f"{s.temp_c:.1f}°C" if s.temp_c is not None else "-",
            "seen": _ago(e.age(now)), "error": (s.last_error or "")[:60],
            "stale": e.stale, "talking": s.transmitting, "age_s": round(e.age(now), 1),
        })
    return rows


def render_table(entries: list[FleetEntry], now: float, header: str = "") -> list[str]:
    """The fleet as aligned text lines, the columns of :data:`COLUMNS`."""
    rows = [tuple(h for _, h in COLUMNS)]
    rows += [tuple(r[k] for k, _ in COLUMNS) for r in fleet_rows(entries, now)]
    widths = [max(len(r[i]) for r in rows) for i in range(len(COLUMNS))]
    lines = [header] if header else []
    for r in rows:
        lines.append("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip())
    if len(rows) == 1:
        lines.append(NO_NODES_HINT)
    return lines


def dial_address_problem(addr: str) -> str | None:
    """Why ``addr`` cannot be dialled (a sentence), or None when it is a dialable multiaddr."""
    from multiaddr import Multiaddr

    from agent.mesh import is_peer_id

    try:
        ma = str(Multiaddr(addr))
    except Exception as exc:  # multiaddr raises several unrelated types
        return f"{addr!r} is not a multiaddr ({exc})"
    if "/p2p/" not in ma:
        return f"{addr!r} has no /p2p/<peer id> part (e.g. /ip4/192.168.1.20/tcp/4001/p2p/12D3KooW...)"
    if not is_peer_id(ma.rsplit("/p2p/", 1)[1].split("/")[0]):
        return f"{addr!r}: the part after /p2p/ is not a peer id"
    if "/tcp/" not in ma:
        return f"{addr!r} has no /tcp/<port> part (nodes listen on TCP)"
    return None


class _StderrToFile:
    """While the live table owns the terminal, fd 2 goes to a file; its last lines are shown
    under the table, and whatever was written is echoed to the real stderr at exit."""

    def __init__(self) -> None:
        self._saved: int | None = None
        self._file = tempfile.TemporaryFile(prefix="avi-monitor-stderr-")

    def __enter__(self) -> "_StderrToFile":
        sys.stderr.flush()
        self._saved = os.dup(2)
        os.dup2(self._file.fileno(), 2)
        return self

    def tail(self, n: int = 3) -> list[str]:
        sys.stderr.flush()
        size = os.fstat(self._file.fileno()).st_size
        data = os.pread(self._file.fileno(), min(size, 4096), max(0, size - 4096))
        return [ln for ln in data.decode("utf-8", "replace").splitlines() if ln.strip()][-n:]

    def __exit__(self, *exc: object) -> None:
        sys.stderr.flush()
        if self._saved is not None:
            os.dup2(self._saved, 2)
            os.close(self._saved)
        size = os.fstat(self._file.fileno()).st_size
        if size:
            data = os.pread(self._file.fileno(), min(size, 65536), max(0, size - 65536))
            sys.stderr.write(data.decode("utf-8", "replace"))
        self._file.close()


class Monitor:
    def __init__(self, config: AgentConfig, *, dial: list[str] | None = None, json_lines: bool = False,
                 refresh_s: float = 1.0, duration_s: float | None = None, out: TextIO | None = None,
                 web: tuple[str, int] | None = None, identify: list[str] | None = None,
                 identity_path: Any = None, tty: bool | None = None,
                 on_web_started: Callable[[str], None] | None = None) -> None:
        self.config = config
        self.dial = list(dial or [])
        self.json_lines = json_lines
        self.refresh_s = max(0.1, refresh_s)
        self.duration_s = duration_s
        self.out = out or sys.stdout
        self.tty = self.out.isatty() if tty is None else tty
        self.web = web
        self.identify_targets = list(identify or [])
        self.identity_path = identity_path
        self.on_web_started = on_web_started
        self.view = FleetView.from_config(config.status)
        self.updates = 0
        self.version = 0  # bumped whenever the view changes (the page's SSE waits on it)
        self._changed = trio.Event()
        self._dirty = trio.Event()
        self._handle: Any = None
        self._last_stale: frozenset[str] = frozenset()
        self._last_plain: list[dict[str, Any]] | None = None
        self._stderr: _StderrToFile | None = None
        self.identify_sent: dict[str, float] = {}
        self.web_url: str | None = None

    def mesh_config(self) -> Any:
        """The node's mesh settings, as a throw-away identity on any free port (so the monitor
        can run next to the agent on the same box without taking its peer id)."""
        return self.config.mesh.model_copy(update={
            "identity_path": self.identity_path, "listen_port": 0,
            "retained_topics": list(dict.fromkeys([*self.config.mesh.retained_topics, self.config.status.topic])),
            "node_name": f"{self.config.node.name}-monitor"[:64]})

    @property
    def connected(self) -> int:
        return len(self._handle.connected_peers()) if self._handle else 0

    def _bump(self) -> None:
        self.version += 1
        self._changed.set()
        self._changed = trio.Event()

    async def wait_change(self, seen: int, timeout: float) -> int:
        """Wait until the view's version differs from ``seen`` (or ``timeout``); the version."""
        with trio.move_on_after(timeout):
            while self.version == seen:
                await self._changed.wait()
        return self.version

    async def run(self) -> int:
        from agent.logs import adopt_libp2p_logging
        from agent.mesh import AviP2p

        adopt_libp2p_logging()  # py-libp2p's import set its logger to bypass ours

        live_table = not self.json_lines and self.tty
        if live_table:
            self._stderr = _StderrToFile()
            self._stderr.__enter__()
        try:
            if not self.json_lines:
                self._write_lines(["avi-agent fleet: starting the mesh node ..."])
            with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
                async with trio.open_nursery() as n:
                    n.start_soon(self._signals, signals, n.cancel_scope)
                    if self.duration_s is not None:
                        n.cancel_scope.deadline = trio.current_time() + self.duration_s
                    async with AviP2p.start(self.mesh_config()) as (node, events):
                        self._handle = node.handle()
                        self.view.local_peer_id = self._handle.local_peer_id
                        await self._handle.subscribe(self.config.status.topic)
                        for addr in self.dial:
                            n.start_soon(self._dial, addr)
                        if self.web is not None:
                            from agent.webmon import serve_page

                            url = await n.start(serve_page, self, self.web[0], self.web[1])
                            self.web_url = url
                            if self.on_web_started is not None:
                                self.on_web_started(url)
                        n.start_soon(self._render_loop)
                        if self.identify_targets:
                            n.start_soon(self._identify_loop)
                        async for event in events:
                            if isinstance(event, Message) and event.topic == self.config.status.topic:
                                if self.view.receive(event.peer_id, event.data, event.age_s, event.seqno) is not None:
                                    self._dirty.set()
                                    self._bump()
        finally:
            if self._stderr is not None:
                if not self.json_lines:
                    self.out.write("\n")
                    self.out.flush()
                self._stderr.__exit__()
                self._stderr = None
        return 0

    async def _signals(self, signals: Any, scope: trio.CancelScope) -> None:
        async for _ in signals:
            scope.cancel()
            return

    async def _dial(self, addr: str) -> None:
        delay = 1.0
        while True:
            try:
                peer = await self._handle.dial(addr)
                log.info("monitor connected to %s", peer)
                return
            except AviP2pError as exc:
                log.warning("dial %s failed: %s; retrying in %g s", addr, exc, delay)
            await trio.sleep(delay)
            delay = min(delay * 2, 10.0)

    # --- identify ------------------------------------------------------------------------------
    def find_node(self, name_or_peer: str) -> str | None:
        """The peer id of a node by name or peer id (as the fleet view knows it)."""
        for e in self.view.entries():
            if name_or_peer in (e.status.node, e.peer_id):
                return e.peer_id
        return None

    async def request_identify(self, peer_id: str) -> None:
        """Ask ``peer_id`` to chime and blink (it decides whether we may: allow list, rate)."""
        from agent import identify

        await self._handle.publish(identify.TOPIC, identify.encode_request(peer_id, self.config.node.name))
        self.identify_sent[peer_id] = time.time()
        log.info("identify request sent to %s", peer_id)

    async def _identify_loop(self) -> None:
        """``--identify NODE``: ask each named node once it has been heard from (and subscribed)."""
        from agent import identify

        await self._handle.subscribe(identify.TOPIC)  # so the gossip mesh for the topic forms
        pending = list(self.identify_targets)
        while pending:
            for target in list(pending):
                peer = self.find_node(target)
                if peer is not None:
                    await trio.sleep(1.0)  # a heartbeat for the topic's mesh to include us
                    try:
                        await self.request_identify(peer)
                        pending.remove(target)
                        print(f"avi-agent monitor: identify request sent to {target} ({peer}); the node "
                              "chimes and blinks if this monitor may ask (allowed_peers, once per 10 s)",
                              file=sys.stderr, flush=True)
                    except AviP2pError as exc:
                        log.warning("identify %s: %s", target, exc)
            await trio.sleep(0.5)

    # --- output --------------------------------------------------------------------------------
    async def _render_loop(self) -> None:
        while True:
            with trio.move_on_after(self.refresh_s):
                await self._dirty.wait()
            changed = self._dirty.is_set()
            self._dirty = trio.Event()
            now = time.monotonic()
            entries = self.view.entries(now)
            stale = frozenset(e.peer_id for e in entries if e.stale)
            if stale != self._last_stale:
                changed = True
                self._last_stale = stale
                self._bump()
            if self.json_lines:
                if changed:
                    self._emit_json(entries, now)
            elif self.tty:
                self._draw(entries, now)
            else:
                self._plain(entries, now)

    def _emit_json(self, entries: list[FleetEntry], now: float) -> None:
        self.updates += 1
        st = self.view.stats(now)
        line = {"time": round(time.time(), 3), "nodes": [entry_json(e, now) for e in entries],
                "stale": st.stale, "rejected": st.rejected, "connected": self.connected}
        self.out.write(json.dumps(line, separators=(",", ":")) + "\n")
        self.out.flush()

    def _header(self, now: float, clock: bool = True) -> str:
        st = self.view.stats(now)
        when = f"  {time.strftime('%H:%M:%S')}" if clock else ""
        page = f"  page: {self.web_url}" if self.web_url else ""
        return (f"avi-agent fleet{when}  {st.nodes} node(s), {st.stale} stale, connected to {self.connected}, "
                f"{st.rejected} bad message(s){page}")

    def _plain(self, entries: list[FleetEntry], now: float) -> None:
        """Not a terminal: the table as plain lines, printed again only when a column other than
        'last seen' changed (a log file gets one block per change, not one per second)."""
        rows = render_table(entries, now)
        key = [{k: v for k, v in r.items() if k not in ("seen", "age_s")} for r in fleet_rows(entries, now)]
        key.append({"header": self._header(now, clock=False)})
        if key == self._last_plain:
            return
        self._last_plain = key
        self.updates += 1
        self._write_lines([f"{time.strftime('%H:%M:%S')} {self._header(now, clock=False)}", *rows, ""])

    def _write_lines(self, lines: list[str]) -> None:
        if self.tty and not self.json_lines:
            self.out.write(HOME_CLEAR + "".join(line + EOL_CLEAR + "\n" for line in lines) + CLEAR_BELOW)
        else:
            self.out.write("".join(line + "\n" for line in lines))
        self.out.flush()

    def _draw(self, entries: list[FleetEntry], now: float) -> None:
        self.updates += 1
        lines = render_table(entries, now, self._header(now) + "   Ctrl-C to quit")
        if self._stderr is not None:
            tail = self._stderr.tail()
            if tail:
                lines += ["", "recent log (stderr):", *[f"  {t[:200]}" for t in tail]]
        self.out.write(HOME_CLEAR if self.updates == 1 else "\x1b[H")
        self.out.write("".join(line + EOL_CLEAR + "\n" for line in lines) + CLEAR_BELOW)
        self.out.flush()
