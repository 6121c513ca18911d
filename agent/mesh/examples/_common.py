"""What every example shares: command-line options, the node's config, signals, output."""

from __future__ import annotations

import argparse
import datetime as _dt
import logging
import signal
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path

import trio

from agent.mesh import AviP2pConfig, ConfigError
from pydantic import ValidationError


def base_parser(prog: str, description: str) -> argparse.ArgumentParser:
    """The options all three examples take."""
    p = argparse.ArgumentParser(prog=f"python -m agent.mesh.examples.{prog}", description=description)
    p.add_argument("--port", type=int, default=0, help="TCP port to listen on (default: any free port)")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to listen on (default 127.0.0.1; 0.0.0.0 for the LAN)")
    p.add_argument("--dial", action="append", default=[], metavar="MULTIADDR",
                   help="peer to connect to, e.g. /ip4/127.0.0.1/tcp/4001/p2p/12D3KooW... "
                        "(repeatable; kept connected as a bootstrap peer)")
    p.add_argument("--identity", type=Path, metavar="PATH",
                   help="Ed25519 key file (created 0600 when missing) for a stable peer id")
    p.add_argument("--mdns", action=argparse.BooleanOptionalAction, default=True,
                   help="discover peers on the LAN with mDNS (default: on)")
    p.add_argument("--kad", action=argparse.BooleanOptionalAction, default=True,
                   help="discover peers through the Kademlia DHT (default: on)")
    p.add_argument("--name", default=prog, help="node name")
    p.add_argument("-v", "--verbose", action="store_true", help="log the node's INFO messages to stderr")
    return p


def make_config(args: argparse.Namespace, **extra: object) -> AviP2pConfig:
    """The node's config from the common options; exits 78 (EX_CONFIG) on a bad value."""
    try:
        return AviP2pConfig(node_name=args.name, listen_host=args.host, listen_port=args.port,
                            bootstrap_peers=list(args.dial), enable_mdns=args.mdns, enable_kad=args.kad,
                            identity_path=args.identity, **extra)
    except (ValidationError, ConfigError) as exc:
        sys.exit(_config_error(exc))


def _config_error(exc: Exception) -> int:
    print(f"error: bad option: {exc}", file=sys.stderr)
    return 78


def setup_logging(verbose: bool) -> None:
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    # Importing py-libp2p resets its "libp2p" logger (level WARNING, no handler, no propagation,
    # so Python's last-resort handler prints each failed dial attempt): set it up afterwards.
    import libp2p  # noqa: F401  (the node needs it anyway)

    lib = logging.getLogger("libp2p")
    lib.propagate = True
    lib.setLevel(logging.WARNING if verbose else logging.CRITICAL)


def out(line: str) -> None:
    """One line to stdout, flushed (the examples are read through pipes by tests and tools)."""
    print(line, flush=True)


def stamp() -> str:
    return _dt.datetime.now().strftime("%H:%M:%S.%f")[:-3]


def short(peer: str) -> str:
    """A peer id shortened for tables: the tail is where ids differ (they share `12D3KooW`)."""
    return f"…{peer[-8:]}" if len(peer) > 12 else peer


def listen_line(addresses: list[str]) -> str:
    """The first line every example prints: the multiaddr to dial it by."""
    return f"listening: {addresses[0]}" if addresses else "listening: (none)"


async def run_until_signalled(body: Callable[[], Awaitable[None]]) -> str:
    """Run `body` until it returns or SIGINT/SIGTERM arrives; returns "done" or the signal's name.

    The signal cancels `body`, so its `finally` blocks and the node's shutdown run normally.
    """
    stopped_by = "done"
    async with trio.open_nursery() as nursery:
        async def watch() -> None:
            nonlocal stopped_by
            with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
                async for signum in signals:
                    stopped_by = signal.Signals(signum).name
                    nursery.cancel_scope.cancel()
                    return

        async def work() -> None:
            await body()
            nursery.cancel_scope.cancel()

        nursery.start_soon(watch)
        nursery.start_soon(work)
    return stopped_by


def main_wrapper(run: Callable[[], int]) -> None:
    """Exit with `run()`'s status; a Ctrl-C before the signal watcher is up exits 130 quietly."""
    try:
        code = run()
    except KeyboardInterrupt:
        code = 130
    sys.exit(code)
