"""Watch peers come and go: PeerDiscovered / PeerConnected / PeerDisconnected, live.

    python -m agent.mesh.examples.discovery_monitor                     # mDNS + DHT on the LAN
    python -m agent.mesh.examples.discovery_monitor --no-mdns --dial /ip4/127.0.0.1/tcp/4001/p2p/12D3KooW...
    python -m agent.mesh.examples.discovery_monitor --json | jq .

Prints each discovery event with a timestamp as it happens and, every `--interval` seconds, a
table of the connected peers. With `--json`, every event (and every table) is one JSON line.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import dataclass, field

import trio

from agent.mesh import (AviP2p, AviP2pError, PeerConnected, PeerDisconnected, PeerDiscovered, PeerId,
                        Started)

from ._common import (base_parser, listen_line, main_wrapper, make_config, out, run_until_signalled,
                      setup_logging, short, stamp)


@dataclass
class Monitor:
    json_mode: bool
    connected: dict[PeerId, tuple[str, float]] = field(default_factory=dict)  # peer -> (address, since)
    counts: dict[str, int] = field(default_factory=lambda: {"discovered": 0, "connected": 0,
                                                             "disconnected": 0})

    def emit(self, kind: str, text: str, **fields: object) -> None:
        if self.json_mode:
            out(json.dumps({"ts": time.time(), "event": kind, **fields}))
        else:
            out(f"{stamp()}  {kind:<17} {text}")

    def on_event(self, event: object) -> None:
        match event:
            case Started(local_peer_id=me, listen_addresses=addrs):
                self.emit("Started", f"local peer {me}", local_peer_id=me, listen_addresses=list(addrs))
            case PeerDiscovered(peer_id=p):
                self.counts["discovered"] += 1
                self.emit("PeerDiscovered", p, peer_id=p)
            case PeerConnected(peer_id=p, address=a):
                self.counts["connected"] += 1
                self.connected[p] = (a, time.monotonic())
                self.emit("PeerConnected", f"{p} via {a or '?'}", peer_id=p, address=a)
            case PeerDisconnected(peer_id=p):
                self.counts["disconnected"] += 1
                since = self.connected.pop(p, (None, None))[1]
                held = f" after {time.monotonic() - since:.1f} s" if since is not None else ""
                self.emit("PeerDisconnected", f"{p}{held}", peer_id=p)
            case _:
                pass  # messages and audio are not this example's business

    def table(self) -> None:
        now = time.monotonic()
        rows = sorted(self.connected.items(), key=lambda kv: kv[1][1])
        if self.json_mode:
            out(json.dumps({"ts": time.time(), "event": "PeerTable",
                            "peers": [{"peer_id": p, "address": a, "connected_s": round(now - t, 1)}
                                      for p, (a, t) in rows]}))
            return
        out(f"{stamp()}  connected peers: {len(rows)}")
        if rows:
            out(f"    {'peer':<54} {'address':<28} {'for':>8}")
            for p, (a, t) in rows:
                out(f"    {p:<54} {a:<28} {now - t:>7.1f}s")

    def summary(self, stopped_by: str) -> None:
        c = self.counts
        if self.json_mode:
            out(json.dumps({"ts": time.time(), "event": "Summary", "stopped_by": stopped_by, **c,
                            "connected_now": len(self.connected)}))
        else:
            out(f"summary: stopped by {stopped_by}; discovered {c['discovered']}, connected "
                f"{c['connected']}, disconnected {c['disconnected']}, connected now "
                f"{len(self.connected)} ({', '.join(short(p) for p in self.connected) or 'none'})")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = base_parser("discovery_monitor", "Print peer discovery and connection events as they happen.")
    p.add_argument("--interval", type=float, default=5.0, help="seconds between peer tables (default 5)")
    p.add_argument("--json", action="store_true", help="one JSON object per line instead of text")
    p.add_argument("--duration", type=float, default=0.0, help="stop after this many seconds (0 = run until Ctrl-C)")
    return p.parse_args(argv)


async def monitor(args: argparse.Namespace) -> int:
    config = make_config(args)
    mon = Monitor(args.json)

    async def body() -> None:
        async with AviP2p.start(config) as (node, events):
            handle = node.handle()
            addrs = handle.listen_addresses()
            if not args.json:
                out(listen_line(addrs))
                out(f"local peer id: {handle.local_peer_id}")

            async def tables() -> None:
                while True:
                    await trio.sleep(args.interval)
                    mon.table()
                    await handle.discover_peers()  # a discovery round per table: cheap, and live

            async with trio.open_nursery() as nursery:
                nursery.start_soon(tables)
                if args.duration > 0:
                    nursery.cancel_scope.deadline = trio.current_time() + args.duration
                async for event in events:
                    mon.on_event(event)
                nursery.cancel_scope.cancel()

    try:
        stopped_by = await run_until_signalled(body)
    except AviP2pError as exc:
        out(f"error: {exc}")
        return 1
    mon.summary(stopped_by)
    return 0


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    setup_logging(args.verbose)
    main_wrapper(lambda: trio.run(monitor, args))


if __name__ == "__main__":
    main()
