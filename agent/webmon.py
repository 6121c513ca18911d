"""``avi-agent monitor --web``: the fleet as one live web page, served from the monitor's trio loop.

``GET /`` is a single HTML page (inline CSS and a little plain JavaScript, no build step) that
opens ``GET /events``, a server-sent event stream: a snapshot of the fleet at once, then one
whenever a status message arrives or a node goes stale (and once a second for the "last seen"
ages). ``GET /fleet.json`` is the same snapshot once. ``POST /identify`` (body: a peer id or node
name, header ``X-Avi-Action: identify`` so another site's page cannot trigger it) asks that node
to chime and blink. Listens on 127.0.0.1 unless told otherwise (``--web 0.0.0.0:8080``).
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

import trio

from agent.httpd import Request, Response, Stream, serve_http
from agent.mesh import AviP2pError
from agent.monitor import COLUMNS, fleet_rows

if TYPE_CHECKING:
    from agent.monitor import Monitor

__all__ = ["serve_page", "snapshot", "PAGE", "DEFAULT_WEB"]

DEFAULT_WEB = ("127.0.0.1", 8080)
SSE_TICK_S = 1.0


def snapshot(mon: "Monitor") -> dict[str, Any]:
    now = time.monotonic()
    st = mon.view.stats(now)
    return {"time": round(time.time(), 3), "version": mon.version, "nodes": fleet_rows(mon.view.entries(now), now),
            "columns": COLUMNS, "stale": st.stale, "rejected": st.rejected, "connected": mon.connected}


def handler(mon: "Monitor") -> Any:
    async def handle(req: Request) -> Response | Stream:
        if req.path == "/" and req.method in ("GET", "HEAD"):
            return Response(200, PAGE.encode(), "text/html; charset=utf-8")
        if req.path == "/fleet.json" and req.method == "GET":
            return Response(200, json.dumps(snapshot(mon)).encode(), "application/json")
        if req.path == "/events" and req.method == "GET":
            return Stream(_events(mon))
        if req.path == "/identify":
            if req.method != "POST":
                return Response(405, b"POST only\n")
            if req.headers.get("x-avi-action") != "identify":
                return Response(403, b"missing X-Avi-Action: identify\n")
            target = req.body.decode("utf-8", "replace").strip()
            peer = mon.find_node(target)
            if peer is None:
                return Response(404, f"no node {target!r} in the fleet view\n".encode())
            try:
                await mon.request_identify(peer)
            except AviP2pError as exc:
                return Response(503, f"could not send: {exc}\n".encode())
            return Response(200, f"identify sent to {target}\n".encode())
        return Response(404, b"not found\n")
    return handle


async def _events(mon: "Monitor") -> AsyncIterator[bytes]:
    yield b"retry: 1000\n\n"
    seen = -1
    while True:
        data = json.dumps(snapshot(mon), separators=(",", ":"))
        yield f"data: {data}\n\n".encode()
        seen = mon.version
        await mon.wait_change(seen, SSE_TICK_S)


async def serve_page(mon: "Monitor", host: str, port: int, *,
                     task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED) -> None:
    """Serve the page until cancelled; ``task_status.started(url)``."""
    from agent import identify

    try:
        await mon._handle.subscribe(identify.TOPIC)  # so identify requests have a gossip mesh
    except (AviP2pError, AttributeError):
        pass
    async with trio.open_nursery() as n:
        h, p = await n.start(serve_http, handler(mon), host, port)
        shown = "localhost" if h in ("127.0.0.1", "::1") else h
        task_status.started(f"http://{shown}:{p}/")


PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<title>avi-agent fleet</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>
 body { font: 14px/1.4 system-ui, sans-serif; margin: 1.2em; color: #222; background: #fafafa; }
 h1 { font-size: 1.3em; margin: 0 0 .3em; }
 #summary { color: #555; margin-bottom: .8em; }
 table { border-collapse: collapse; width: 100%; background: #fff; }
 th, td { padding: .35em .6em; border-bottom: 1px solid #e3e3e3; text-align: left; white-space: nowrap; }
 th { background: #eef1f5; font-weight: 600; font-size: .9em; }
 tr.stale td { color: #999; background: #f4f4f4; }
 tr.stale td.state { color: #b00; font-weight: 600; }
 tr.talking td { background: #e6f7e6; }
 td.talk.TX { color: #070; font-weight: 700; } td.talk.RX { color: #036; font-weight: 700; }
 td.state.degraded { color: #b60; font-weight: 600; } td.error { color: #b00; white-space: normal; }
 td.backends.fake { color: #a60; }
 button { font-size: .85em; }
 #hint { color: #777; margin-top: 1em; }
 #conn { float: right; font-size: .85em; color: #777; }
</style></head>
<body>
<h1>avi-agent fleet <span id="conn">connecting…</span></h1>
<div id="summary"></div>
<table><thead><tr id="head"></tr></thead><tbody id="rows"></tbody></table>
<div id="hint"></div>
<script>
"use strict";
window.__updates = 0; window.__seen = {}; window.__identify = {};
function cell(tr, text, cls) { const td = document.createElement("td"); td.textContent = text;
  if (cls) td.className = cls; tr.appendChild(td); return td; }
function render(s) {
  window.__updates++; window.__last = s;
  const head = document.getElementById("head");
  if (!head.childElementCount) {
    for (const [k, h] of s.columns) { const th = document.createElement("th"); th.textContent = h; head.appendChild(th); }
    const th = document.createElement("th"); head.appendChild(th);
  }
  const tbody = document.getElementById("rows");
  tbody.replaceChildren();
  const now = Date.now();
  for (const n of s.nodes) {
    const tr = document.createElement("tr");
    tr.dataset.peer = n.peer_id; tr.dataset.name = n.name;
    if (n.stale) tr.classList.add("stale");
    if (n.talking) tr.classList.add("talking");
    for (const [k, h] of s.columns) {
      let cls = k;
      if (k === "talk" || k === "state") cls += " " + n[k];
      if (k === "backends" && n[k].includes("fake")) cls += " fake";
      cell(tr, n[k], cls);
    }
    const td = cell(tr, "", "actions"); const b = document.createElement("button");
    b.textContent = window.__identify[n.peer_id] || "identify"; b.title = "make this node chime and blink";
    b.onclick = () => { window.__identify[n.peer_id] = "sending…"; render(window.__last);
      fetch("/identify", {method: "POST", headers: {"X-Avi-Action": "identify"}, body: n.peer_id})
        .then(r => r.text()).then(t => { window.__identify[n.peer_id] = r_ok(t); render(window.__last); })
        .catch(() => { window.__identify[n.peer_id] = "failed"; render(window.__last); }); };
    td.appendChild(b); tbody.appendChild(tr);
    const key = n.name + ":" + n.talk + ":" + n.state;
    if (!(key in window.__seen)) window.__seen[key] = now;
  }
  document.getElementById("summary").textContent =
    s.nodes.length + " node(s), " + s.stale + " stale, connected to " + s.connected + " peer(s), " +
    s.rejected + " bad message(s); updated " + new Date(s.time * 1000).toLocaleTimeString();
  document.getElementById("hint").textContent = s.nodes.length ? "" :
    "No status heard yet: listening on the LAN via mDNS; for nodes elsewhere start the monitor with --dial ADDR.";
}
function r_ok(t) { return t.startsWith("identify sent") ? "sent ✓" : "failed"; }
function connect() {
  const es = new EventSource("/events");
  es.onopen = () => { document.getElementById("conn").textContent = "live"; };
  es.onmessage = (e) => render(JSON.parse(e.data));
  es.onerror = () => { document.getElementById("conn").textContent = "reconnecting…"; };
}
connect();
</script>
</body></html>
"""
