"""``avi-agent monitor``: a listen-only mesh node that shows the fleet's status live.

It joins the mesh like a node (same config file: bootstrap peers, mDNS, status topic) but with a
fresh identity and any free port, opens no devices and publishes nothing. The table is redrawn
in place with ANSI escapes; ``--json`` prints one JSON object per line whenever the view changes
(a status message arrived, or a node went stale) for scripts.
"""

from __future__ import annotations

import json
import logging
import signal
import sys
import time
from typing import Any, TextIO

import trio

from agent.config import AgentConfig
from agent.mesh.errors import AviP2pError
from agent.mesh.events import Message
from agent.status import FleetEntry, FleetView, entry_json, fake_devices

__all__ = ["Monitor", "render_table"]

log = logging.getLogger("agent.monitor")

HOME_CLEAR = "\x1b[H\x1b[2J"
EOL_CLEAR = "\x1b[K"
CLEAR_BELOW = "\x1b[J"


def _short_peer(peer: str) -> str:
    return peer if len(peer) <= 16 else f"{peer[:6]}…{peer[-8:]}"


def _ago(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.0f}s ago"
    if seconds < 3600:
        return f"{seconds / 60:.0f}m ago"
    return f"{seconds / 3600:.1f}h ago"


def render_table(entries: list[FleetEntry], now: float, header: str = "") -> list[str]:
    """The fleet as aligned text lines: name, peer, state, peers, streams, temp, last seen."""
    rows = [("NAME", "PEER", "STATE", "PEERS", "STREAMS", "TEMP", "LAST SEEN", "ERROR")]
    for e in entries:
        s = e.status
        state = ", ".join(["stale" if e.stale else s.state, *fake_devices(s.backends)])
        temp = f"{s.temp_c:.1f}°C" if s.temp_c is not None else "-"
        err = (s.last_error or "")[:40]
        rows.append((s.node, _short_peer(s.peer_id), state, str(s.peers),
                     f"{s.streams_in} in/{s.streams_out} out", temp, _ago(e.age(now)), err))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = [header] if header else []
    for r in rows:
        lines.append("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip())
    if len(rows) == 1:
        lines.append("(no status heard yet)")
    return lines


class Monitor:
    def __init__(self, config: AgentConfig, *, dial: list[str] | None = None, json_lines: bool = False,
                 refresh_s: float = 1.0, duration_s: float | None = None, out: TextIO | None = None) -> None:
        self.config = config
        self.dial = list(dial or [])
        self.json_lines = json_lines
        self.refresh_s = max(0.1, refresh_s)
        self.duration_s = duration_s
        self.out = out or sys.stdout
        self.view = FleetView.from_config(config.status)
        self.updates = 0
        self._dirty = trio.Event()
        self._handle: Any = None
        self._last_stale: frozenset[str] = frozenset()

    def mesh_config(self) -> Any:
        """The node's mesh settings, as a throw-away identity on any free port (so the monitor
        can run next to the agent on the same box without taking its peer id)."""
        return self.config.mesh.model_copy(update={
            "identity_path": None, "listen_port": 0,
            "retained_topics": list(dict.fromkeys([*self.config.mesh.retained_topics, self.config.status.topic])),
            "node_name": f"{self.config.node.name}-monitor"[:64]})

    async def run(self) -> int:
        from agent.logs import adopt_libp2p_logging
        from agent.mesh import AviP2p

        adopt_libp2p_logging()  # py-libp2p's import set its logger to bypass ours

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
                    n.start_soon(self._render_loop)
                    async for event in events:
                        if isinstance(event, Message) and event.topic == self.config.status.topic:
                            if self.view.receive(event.from_peer, event.data, event.age_s) is not None:
                                self._dirty.set()
        if not self.json_lines:
            self.out.write("\n")
            self.out.flush()
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
            if self.json_lines:
                if changed:
                    self._emit_json(entries, now)
            else:
                self._draw(entries, now)

    def _emit_json(self, entries: list[FleetEntry], now: float) -> None:
        self.updates += 1
        st = self.view.stats(now)
        line = {"time": round(time.time(), 3), "nodes": [entry_json(e, now) for e in entries],
                "stale": st.stale, "rejected": st.rejected,
                "connected": len(self._handle.connected_peers()) if self._handle else 0}
        self.out.write(json.dumps(line, separators=(",", ":")) + "\n")
        self.out.flush()

    def _draw(self, entries: list[FleetEntry], now: float) -> None:
        self.updates += 1
        st = self.view.stats(now)
        connected = len(self._handle.connected_peers()) if self._handle else 0
        header = (f"avi-agent fleet  {time.strftime('%H:%M:%S')}  {st.nodes} node(s), {st.stale} stale, "
                  f"connected to {connected}, {st.rejected} bad message(s)   Ctrl-C to quit")
        lines = render_table(entries, now, header)
        self.out.write(HOME_CLEAR if self.updates == 1 else "\x1b[H")
        self.out.write("".join(line + EOL_CLEAR + "\n" for line in lines) + CLEAR_BELOW)
        self.out.flush()
