"""`avi-agent monitor --web` in a real headless Chromium, against a small live fleet.

Two agent processes (a talks from ~8 s for 5 s; b listens), a monitor process serving the page,
and Debian's `chromium` driven over the DevTools protocol (trio-websocket, already installed with
py-libp2p). The test waits for both nodes to appear, waits for a's talk to show, measures how long
after a's press the page showed it (printed; a figure, not an assertion), clicks identify and
saves a screenshot (tmp_path/fleet.png; also to $AVI_SCREENSHOT_OUT when set, which is how
docs/fleet-page.png was made).
"""

from __future__ import annotations

import base64
import itertools
import json
import os
import re
import shutil
import subprocess
import threading
import time
from pathlib import Path

import pytest
import trio
from trio_websocket import open_websocket_url

from agent.httpd import http_get
from tests.agent.test_service import AgentProc, procs, write_config  # noqa: F401 (fixture)

CHROMIUM = shutil.which("chromium")
pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (scripts/bootstrap.sh)")]

FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-dev-shm-usage", "--window-size=1600,420", "--remote-debugging-port=0"]


class Chromium:
    """Headless Chromium with a fresh profile; ``evaluate`` runs JavaScript in the page."""

    def __init__(self, url: str, profile: Path) -> None:
        self.proc = subprocess.Popen([CHROMIUM, *FLAGS, f"--user-data-dir={profile}", url],
                                     stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.PIPE, text=True)
        self.ws_url = ""
        self.stderr: list[str] = []
        got = threading.Event()

        def read() -> None:
            assert self.proc.stderr is not None
            for line in self.proc.stderr:
                self.stderr.append(line)
                m = re.search(r"DevTools listening on (ws://\S+)", line)
                if m:
                    self.ws_url = m.group(1)
                    got.set()
        threading.Thread(target=read, daemon=True).start()
        if not got.wait(30):
            self.close()
            raise AssertionError("chromium did not start its DevTools endpoint:\n" + "".join(self.stderr[-20:]))
        self._ids = itertools.count(1)

    async def page_ws(self) -> str:
        m = re.match(r"ws://([^:/]+):(\d+)/", self.ws_url)
        assert m
        for _ in range(50):
            _status, body = await http_get(m.group(1), int(m.group(2)), "/json/list")
            pages = [t for t in json.loads(body) if t.get("type") == "page"]
            if pages:
                return pages[0]["webSocketDebuggerUrl"]
            await trio.sleep(0.1)
        raise AssertionError("no page target in chromium")

    async def call(self, ws, method: str, **params) -> dict:
        i = next(self._ids)
        await ws.send_message(json.dumps({"id": i, "method": method, "params": params}))
        while True:
            msg = json.loads(await ws.get_message())
            if msg.get("id") == i:
                if "error" in msg:
                    raise AssertionError(f"{method}: {msg['error']}")
                return msg["result"]

    async def evaluate(self, ws, expr: str):
        r = await self.call(ws, "Runtime.evaluate", expression=expr, returnByValue=True)
        return r["result"].get("value")

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


def test_fleet_page_in_headless_chromium(tmp_path: Path, procs) -> None:
    off = '[metrics]\nlisten = ""\n'
    b = AgentProc(["run", "--config", str(write_config(tmp_path / "b.toml", "pi-b", extra=off))])
    procs.append(b)
    b_addr = b.address()
    a = AgentProc(["run", "--config", str(write_config(tmp_path / "a.toml", "pi-a", extra=off))], env={
        "AVI_MESH__BOOTSTRAP_PEERS": json.dumps([b_addr]),
        # a press every 10 s: the page must be showing both nodes before one of them counts
        "AVI_GPIO__FAKE_PRESSES": json.dumps([{"at_s": at, "duration_s": 5.0} for at in (8, 18, 28, 38, 48)])})
    procs.append(a)
    mon = AgentProc(["monitor", "--config", str(tmp_path / "b.toml"), "--dial", b_addr,
                     "--web", "127.0.0.1:0", "--duration", "90"], stdout=subprocess.PIPE)
    procs.append(mon)
    url = mon.wait_log(r"fleet page at (http://\S+)", 30).group(1)

    browser = Chromium(url, tmp_path / "profile")
    try:
        async def drive() -> dict:
            async with open_websocket_url(await browser.page_ws()) as ws:
                async def until(expr: str, timeout: float, what: str):
                    with trio.move_on_after(timeout):
                        while True:
                            v = await browser.evaluate(ws, expr)
                            if v:
                                return v
                            await trio.sleep(0.05)
                    raise AssertionError(f"page: {what} not within {timeout} s; page text: "
                                         f"{await browser.evaluate(ws, 'document.body.innerText')}")

                # both nodes appear, fresh
                await until("document.querySelectorAll('#rows tr:not(.stale)').length === 2", 40, "two nodes")
                names = await browser.evaluate(ws, "[...document.querySelectorAll('#rows tr')].map(r => r.dataset.name)")
                assert sorted(names) == ["pi-a", "pi-b"]
                heads = await browser.evaluate(ws, "[...document.querySelectorAll('#head th')].map(t => t.textContent)")
                assert heads[:3] == ["NAME", "PEER", "STATE"] and "TALK" in heads and "LATENCY p50/p99" in heads
                # a's talk shows up: TX on a, RX on b (the first press after both nodes showed)
                await until("document.querySelector('tr[data-name=\"pi-a\"] td.talk').textContent === '-'",
                            20, "a idle")
                await browser.evaluate(ws, "delete window.__seen['pi-a:TX:ok']")
                seen_ms = await until("window.__seen['pi-a:TX:ok']", 40, "a transmitting")
                await until("document.querySelector('tr[data-name=\"pi-b\"] td.talk').textContent === 'RX'",
                            25, "b receiving")  # (or at the next press, 10 s on)
                await trio.sleep(1.5)  # a full second of levels and latency for the screenshot
                shot = await browser.call(ws, "Page.captureScreenshot", format="png")
                # identify from the page: a chimes and blinks
                await browser.evaluate(ws, "document.querySelector('tr[data-name=\"pi-a\"] button').click()")
                await until("document.querySelector('tr[data-name=\"pi-a\"] button').textContent === 'sent ✓'",
                            10, "identify sent")
                updates = await browser.evaluate(ws, "window.__updates")
                return {"seen_ms": seen_ms, "png": shot["data"], "updates": updates}

        try:
            got = trio.run(drive)
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n--- a:\n" + "\n".join(a.lines[-25:]) + "\n--- b:\n"
                                 + "\n".join(b.lines[-25:])) from None
    finally:
        browser.close()
    # a's presses by its own log's timestamps (local wall clock, ms; same machine as Chromium)
    pressed_at = [time.mktime(time.strptime(m.group(1), "%Y-%m-%d %H:%M:%S")) + int(m.group(2)) / 1000
                  for m in (re.match(r"(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d)\.(\d{3}) .*talking to group", ln)
                            for ln in a.lines) if m]
    seen_s = got["seen_ms"] / 1000.0
    before = [t for t in pressed_at if t <= seen_s]
    assert before, f"the page showed a talk before a logged one ({pressed_at}, {seen_s})"
    delay = seen_s - before[-1]
    print(f"\npage update delay (a's press logged -> TX shown on the page): {delay * 1000:.0f} ms; "
          f"{got['updates']} updates received")
    a.wait_log("identify requested by", 15)
    png = tmp_path / "fleet.png"
    png.write_bytes(base64.b64decode(got["png"]))
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5000
    if os.environ.get("AVI_SCREENSHOT_OUT"):
        shutil.copy(png, os.environ["AVI_SCREENSHOT_OUT"])
    # the monitor's stdout (a pipe) has plain lines, no escape codes, and the same columns
    rc, _ = mon.signal_and_wait(__import__("signal").SIGTERM)
    assert rc == 0
