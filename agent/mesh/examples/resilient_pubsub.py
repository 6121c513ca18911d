"""Publish a counter on a topic, print what the others publish, and survive peers restarting.

    python -m agent.mesh.examples.resilient_pubsub --port 4001 --identity a.key
    python -m agent.mesh.examples.resilient_pubsub --dial /ip4/127.0.0.1/tcp/4001/p2p/12D3KooW...

Kill and restart either side (same `--identity` and `--port`): the other keeps publishing, and
hears the restarted peer again within seconds. `--dial` peers are bootstrap peers, which the
node's own maintenance loop redials; on top of that this example redials a `--dial` peer at
once (with a short back-off) when it disconnects, so recovery does not wait for the node's
slower discovery rounds.

Each message is ``<name> <counter> <sender start id>``: the start id changes when a peer restarts,
so a receiver tells a restart (counter starts again) from lost messages (a gap in the counter).
"""

from __future__ import annotations

import argparse
import secrets
from dataclasses import dataclass, field

import trio

from agent.mesh import (AviP2p, AviP2pError, AviP2pHandle, Message, PeerConnected, PeerDisconnected,
                        PeerId)

from ._common import (base_parser, listen_line, main_wrapper, make_config, out, run_until_signalled,
                      setup_logging, short, stamp)

REDIAL_FIRST = 0.25
REDIAL_MAX = 5.0


MAX_RUNS = 8  # runs (restarts) remembered per peer


@dataclass
class Run:
    """One run of a sender: counters seen, lowest and highest (messages may arrive out of order)."""

    count: int = 0
    lo: int = 0
    hi: int = -1

    @property
    def missing(self) -> int:
        return max(0, self.hi - self.lo + 1 - self.count)


@dataclass
class PeerCount:
    runs: dict[str, Run] = field(default_factory=dict)
    received: int = 0

    @property
    def restarts(self) -> int:
        return max(0, len(self.runs) - 1)

    @property
    def missing(self) -> int:
        return sum(r.missing for r in self.runs.values())


@dataclass
class Tally:
    sent: int = 0
    publish_errors: int = 0
    peers: dict[PeerId, PeerCount] = field(default_factory=dict)
    connects: int = 0
    disconnects: int = 0

    def on_message(self, peer: PeerId, data: bytes) -> str:
        try:
            name, n_text, run_id = data.decode().split(" ")
            n = int(n_text)
        except ValueError:
            return f"{stamp()}  recv from {short(peer)}: {data[:60]!r} (not a counter)"
        c = self.peers.setdefault(peer, PeerCount())
        c.received += 1
        note = ""
        run = c.runs.get(run_id)
        if run is None:
            if c.runs:
                note = "  (peer restarted)"
            run = c.runs[run_id] = Run(lo=n, hi=n - 1)
            while len(c.runs) > MAX_RUNS:
                c.runs.pop(next(iter(c.runs)))
        before = run.missing
        run.count += 1
        run.lo, run.hi = min(run.lo, n), max(run.hi, n)
        if run.missing > before:
            note += f"  ({run.missing} missing so far)"
        return f"{stamp()}  recv {name} #{n} from {short(peer)}{note}"


async def dial_until_connected(handle: AviP2pHandle, address: str) -> None:
    """Dial `address` until we are connected to its peer (by our dial or by theirs), backing off
    from REDIAL_FIRST to REDIAL_MAX seconds between attempts."""
    peer = address.rsplit("/p2p/", 1)[1]
    delay = REDIAL_FIRST
    while peer not in handle.connected_peers():
        try:
            await handle.dial(address)
            return
        except AviP2pError as exc:
            out(f"{stamp()}  dial {short(peer)} failed ({exc}); retry in {delay:g} s")
        await trio.sleep(delay)
        delay = min(delay * 2, REDIAL_MAX)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = base_parser("resilient_pubsub", "Publish a counter, print the others', survive restarts.")
    p.add_argument("--topic", default="avi-counter", help="topic (default avi-counter)")
    p.add_argument("--every-ms", type=int, default=500, help="publish interval in ms (default 500)")
    p.add_argument("--count", type=int, default=0, help="stop after publishing this many (0 = run until Ctrl-C)")
    p.add_argument("--quiet", action="store_true", help="print only connection changes and the summary")
    return p.parse_args(argv)


async def run(args: argparse.Namespace) -> int:
    config = make_config(args)
    tally = Tally()
    run_id = secrets.token_hex(3)

    async def body() -> None:
        async with AviP2p.start(config) as (node, events):
            handle = node.handle()
            out(listen_line(handle.listen_addresses()))
            out(f"local peer id: {handle.local_peer_id}; topic {args.topic!r}; run {run_id}")
            await handle.subscribe(args.topic)
            dial_peers = {a.rsplit("/p2p/", 1)[1]: a for a in args.dial}

            async def publisher() -> None:
                n = 0
                start = trio.current_time()
                while args.count == 0 or n < args.count:
                    await trio.sleep_until(start + n * args.every_ms / 1000)
                    try:
                        await handle.publish(args.topic, f"{args.name} {n} {run_id}".encode())
                        tally.sent += 1
                        if not args.quiet:
                            out(f"{stamp()}  sent #{n} ({len(handle.connected_peers())} peers)")
                    except AviP2pError as exc:
                        tally.publish_errors += 1
                        out(f"{stamp()}  publish #{n} failed: {exc}")
                    n += 1
                await trio.sleep(1.0)  # let the last one leave before the node stops
                nursery.cancel_scope.cancel()

            redialling: set[PeerId] = set()

            async def redial(peer: PeerId) -> None:
                redialling.add(peer)
                try:
                    await dial_until_connected(handle, dial_peers[peer])
                finally:
                    redialling.discard(peer)

            async with trio.open_nursery() as nursery:
                for addr in args.dial:
                    nursery.start_soon(dial_until_connected, handle, addr)
                nursery.start_soon(publisher)
                async for event in events:
                    match event:
                        case Message(peer_id=p, topic=t, data=d) if t == args.topic:
                            line = tally.on_message(p, d)
                            if not args.quiet:
                                out(line)
                        case PeerConnected(peer_id=p, address=a):
                            tally.connects += 1
                            out(f"{stamp()}  connected {p} via {a or '?'}")
                        case PeerDisconnected(peer_id=p):
                            tally.disconnects += 1
                            out(f"{stamp()}  disconnected {p}")
                            if p in dial_peers and p not in redialling:
                                out(f"{stamp()}  redialling {short(p)}")
                                nursery.start_soon(redial, p)
                        case _:
                            pass

    try:
        stopped_by = await run_until_signalled(body)
    except AviP2pError as exc:
        out(f"error: {exc}")
        return 1
    per_peer = "; ".join(f"{short(p)}: {c.received} received, {c.missing} missing, {c.restarts} restarts"
                         for p, c in tally.peers.items()) or "nothing received"
    out(f"summary: stopped by {stopped_by}; sent {tally.sent} ({tally.publish_errors} failed); "
        f"connects {tally.connects}, disconnects {tally.disconnects}; {per_peer}")
    return 0


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    setup_logging(args.verbose)
    main_wrapper(lambda: trio.run(run, args))


if __name__ == "__main__":
    main()
