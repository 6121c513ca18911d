"""Push-to-talk through real agents over loopback: mouth-to-ear latency, CPU, RSS, frames lost.

Runs four processes on this machine, each a mesh node (127.0.0.1, mDNS/DHT off) with fake
hardware (tone source, null sink paced in real time, scripted button) and `agent.talk.Talk`:
one listener L and three talkers T1-T3 that dial L. Phases, each ``--seconds`` long:

- idle: nobody talks (L and T1 still run their playout clock and capture)
- 1 stream: T1 holds the button (L receives 1 stream)
- 3 streams: T1, T2 and T3 hold the button (L mixes 3 streams)

Per phase: L's mouth-to-ear latency p50/p99 (capture timestamp on the talker to the hand-off to
L's sink; one CLOCK_MONOTONIC on one machine), CPU (% of one core, from /proc utime+stime)
and RSS of L and T1, frames sent by the talkers vs played by L (lost = sent - played, which
includes late, dropped and never-arrived frames). Goal: p50 and p99 under 80 ms with 20 ms
frames and the default 40 ms jitter target.

    /work/main/.venv/bin/python bench/talk.py [--seconds 10]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

TICK = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")
GOAL_MS = 80.0


# --- child: one agent-like process ----------------------------------------------------------------
async def child(name: str, freq: float) -> None:
    import trio

    from agent.config import AgentConfig
    from agent.mesh import AviP2p, AviP2pConfig
    from agent.talk import Talk
    from hw.audio.fake import NullSink, ToneSource
    from hw.gpio.fake import FakeButton, FakeLed

    logging.getLogger("libp2p").setLevel(logging.CRITICAL)
    cfg = AgentConfig(node={"name": name})
    mesh = AviP2pConfig.local_only(node_name=name)
    async with AviP2p.start(mesh) as (node, events), ToneSource(frequency_hz=freq) as source, \
            NullSink() as sink, FakeButton() as button, FakeLed("idle") as led:
        handle = node.handle()
        talk = Talk(cfg, handle, source, sink, button, led)
        async with trio.open_nursery() as n:
            await n.start(talk.run)

            async def dispatch() -> None:
                async for ev in events:
                    await talk.handle_event(ev)

            n.start_soon(dispatch)
            out = trio.lowlevel.FdStream(os.dup(1))

            async def reply(obj: dict[str, Any]) -> None:
                await out.send_all((json.dumps(obj) + "\n").encode())

            await reply({"addr": handle.listen_addresses()[0], "peer": handle.local_peer_id})
            inp = trio.lowlevel.FdStream(os.dup(0))
            buf = b""
            while True:
                chunk = await inp.receive_some(4096)
                if not chunk:
                    break
                buf += chunk
                while b"\n" in buf:
                    line, buf = buf.split(b"\n", 1)
                    cmd, _, arg = line.decode().strip().partition(" ")
                    if cmd == "dial":
                        await handle.dial(arg)
                        await reply({"ok": True})
                    elif cmd == "press":
                        await button.press()
                        await reply({"ok": True})
                    elif cmd == "release":
                        await button.release()
                        await reply({"ok": True})
                    elif cmd == "reset":
                        talk.latency.reset()
                        await reply({"ok": True})
                    elif cmd == "group":
                        await reply({"peers": talk.peers_in_group()})
                    elif cmd == "stats":
                        s = talk.stats()
                        await reply(dataclasses.asdict(s))  # nested dataclasses too (Levels)
                    elif cmd == "quit":
                        n.cancel_scope.cancel()
                        return


# --- parent ---------------------------------------------------------------------------------------
class Proc:
    def __init__(self, name: str, freq: float) -> None:
        self.name = name
        self.p = subprocess.Popen([sys.executable, __file__, "--child", name, "--freq", str(freq)],
                                  cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                  stderr=subprocess.DEVNULL, text=True, bufsize=1)
        self.lock = threading.Lock()
        hello = self._read()
        self.addr, self.peer = hello["addr"], hello["peer"]

    def _read(self) -> dict[str, Any]:
        assert self.p.stdout is not None
        line = self.p.stdout.readline()
        if not line:
            raise RuntimeError(f"{self.name} exited (rc={self.p.poll()})")
        return json.loads(line)

    def cmd(self, text: str) -> dict[str, Any]:
        with self.lock:
            assert self.p.stdin is not None
            self.p.stdin.write(text + "\n")
            self.p.stdin.flush()
            return self._read()

    def cpu_s(self) -> float:
        f = Path(f"/proc/{self.p.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(f[11]) + int(f[12])) / TICK

    def rss_mb(self) -> float:
        return int(Path(f"/proc/{self.p.pid}/statm").read_text().split()[1]) * PAGE / 2**20

    def stop(self) -> None:
        try:
            self.cmd("quit")
        except Exception:
            pass
        try:
            self.p.wait(10)
        except subprocess.TimeoutExpired:
            self.p.kill()
            self.p.wait()


def wait_group(p: Proc, want: set[str], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if want <= set(p.cmd("group")["peers"]):
            return
        time.sleep(0.2)
    raise RuntimeError(f"{p.name} did not learn its peers' talk groups within {timeout} s")


def phase(label: str, talkers: list[Proc], listener: Proc, watch: list[Proc], seconds: float) -> dict[str, Any]:
    listener.cmd("reset")
    before = {p.name: p.cmd("stats") for p in [listener, *talkers]}
    cpu0 = {p.name: p.cpu_s() for p in watch}
    t0 = time.monotonic()
    for t in talkers:
        t.cmd("press")
    time.sleep(seconds)
    cpu1 = {p.name: p.cpu_s() for p in watch}
    wall = time.monotonic() - t0
    rss = {p.name: p.rss_mb() for p in watch}
    lat = listener.cmd("stats")  # percentiles of this phase (reset above), before the tail
    for t in talkers:
        t.cmd("release")
    time.sleep(0.5)  # the jitter buffer plays out
    after = {p.name: p.cmd("stats") for p in [listener, *talkers]}
    sent = sum(after[t.name]["frames_sent"] - before[t.name]["frames_sent"] for t in talkers)
    ln = listener.name
    d = {k: after[ln][k] - before[ln][k] for k in ("frames_received", "frames_played", "frames_late",
                                                  "frames_dropped", "frames_concealed")}
    return {"label": label, "streams": len(talkers), "p50": lat["latency_p50_ms"], "p99": lat["latency_p99_ms"],
            "samples": lat["latency_samples"], "sent": sent, **d, "lost": sent - d["frames_played"],
            "cpu": {n: 100 * (cpu1[n] - cpu0[n]) / wall for n in cpu0}, "rss": rss}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=10.0, help="length of each phase")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--freq", type=float, default=440.0, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        import trio

        logging.basicConfig(level=logging.WARNING)
        trio.run(child, args.child, args.freq)
        return

    procs: list[Proc] = []
    try:
        L = Proc("L", 1000)
        procs.append(L)
        talkers = [Proc(f"T{i}", f) for i, f in ((1, 440), (2, 550), (3, 660))]
        procs += talkers
        for t in talkers:
            t.cmd(f"dial {L.addr}")
        for t in talkers:
            wait_group(t, {L.peer})
        wait_group(L, {t.peer for t in talkers})
        time.sleep(1.0)
        watch = [L, talkers[0]]
        rows = [phase("idle", [], L, watch, min(args.seconds, 5.0)),
                phase("1 stream", talkers[:1], L, watch, args.seconds),
                phase("3 streams", talkers, L, watch, args.seconds)]
    finally:
        for p in procs:
            p.stop()

    print(f"\npush-to-talk through 4 agent processes on loopback ({os.cpu_count()} cores), "
          f"20 ms frames, 40 ms jitter target, {args.seconds:g} s per phase")
    hdr = (f"{'phase':<10} {'p50 ms':>7} {'p99 ms':>7} {'sent':>6} {'played':>6} {'late':>5} {'concl':>5} "
           f"{'lost':>5} {'L cpu%':>7} {'L rss MB':>8} {'T1 cpu%':>7} {'T1 rss MB':>9}")
    print(hdr)
    print("-" * len(hdr))
    fmt = lambda v: "-" if v is None else f"{v:.1f}"  # noqa: E731
    for r in rows:
        print(f"{r['label']:<10} {fmt(r['p50']):>7} {fmt(r['p99']):>7} {r['sent']:>6} {r['frames_played']:>6} "
              f"{r['frames_late']:>5} {r['frames_concealed']:>5} {r['lost']:>5} {r['cpu']['L']:>7.1f} "
              f"{r['rss']['L']:>8.1f} {r['cpu']['T1']:>7.1f} {r['rss']['T1']:>9.1f}")
    lat_rows = [r for r in rows if r["p99"] is not None]
    ok = all(r["p50"] < GOAL_MS and r["p99"] < GOAL_MS for r in lat_rows)
    print(f"\ngoal p50/p99 < {GOAL_MS:g} ms: {'met' if ok else 'NOT met'}")
    print("L is the listener; T1 talks in '1 stream' and '3 streams' (in 'idle' T1 only captures and "
          "plays silence). 'lost' = frames sent by the talkers - frames played by L.")


if __name__ == "__main__":
    main()
