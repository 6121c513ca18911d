"""One mesh node in its own process, for tests that must kill or freeze a peer.

    python tests/mesh/peer_proc.py [--dial ADDR] [--accept [--reply]] [--send-to PEER] [--pace S]
                                   [--subscribe TOPIC]... [--identity PATH]

The first line on stdout is the node's listen multiaddr (with /p2p/<peer id>); later lines
report what it did, one event a line (``connected <peer>``, ``accepted <sid>``,
``sending <sid>``, ``closed <sid> <reason>``, ``message <topic> <hex>``), flushed at once.

- `--dial ADDR`: connect to ADDR at start.
- `--accept`: accept every audio stream requested from us; with `--reply`, send frames back on it.
- `--send-to PEER`: request an audio stream to PEER (connected, e.g. via --dial) and send on it.
- Frames are 640 bytes at `--pace` seconds (default 0.02); each payload begins with its
  4-byte big-endian frame counter, so the receiver can check order.
The process runs until it is killed, or stdin closes (the test's way to stop it cleanly).

Tests import `start_peer` / `stop_peer` / `PeerProc` from here to run it.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
from pathlib import Path

import trio

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from agent.mesh import (AudioStreamAccepted, AudioStreamClosed, AudioStreamRequested,  # noqa: E402
                        AviP2p, AviP2pConfig, AviP2pError, Message, PeerConnected, PeerId)

FRAME = 640
PEER_PROC = Path(__file__).resolve()


# --- the test side: start and stop this script as a process -------------------------------


class PeerProc:
    """A peer process: its address (first stdout line) and every later line, as they come."""

    def __init__(self, proc: trio.Process) -> None:
        self.proc = proc
        self.lines: list[str] = []
        self.addr = ""
        self.peer_id = ""
        self._changed = trio.Event()

    async def _read(self) -> None:
        assert self.proc.stdout is not None
        buf = b""
        async for chunk in self.proc.stdout:
            buf += chunk
            while b"\n" in buf:
                line, buf = buf.split(b"\n", 1)
                self.lines.append(line.decode(errors="replace"))
                self._changed.set()
                self._changed = trio.Event()

    async def wait_line(self, prefix: str, timeout: float = 15.0) -> str:
        with trio.fail_after(timeout):
            while True:
                for line in self.lines:
                    if line.startswith(prefix):
                        return line
                if self.proc.returncode is not None:
                    raise AssertionError(f"peer process exited ({self.proc.returncode}): {self.lines}")
                await self._changed.wait()

    def signal(self, sig: signal.Signals) -> None:
        if self.proc.returncode is None:
            os.kill(self.proc.pid, sig)


async def start_peer(nursery: trio.Nursery, *args: str) -> PeerProc:
    """Start peer_proc.py with `args`; returns once it printed its listen address."""
    proc = await trio.lowlevel.open_process(
        [sys.executable, str(PEER_PROC), *args], cwd=str(ROOT),
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    peer = PeerProc(proc)
    nursery.start_soon(peer._read)
    try:
        peer.addr = await peer.wait_line("/ip4/", timeout=30.0)
    except BaseException:
        await stop_peer(peer)
        raise
    peer.peer_id = peer.addr.rsplit("/p2p/", 1)[1]
    return peer


async def stop_peer(peer: PeerProc) -> None:
    """Resume it if frozen, ask it to stop (stdin closed), and kill it if it does not."""
    with trio.CancelScope(shield=True):
        peer.signal(signal.SIGCONT)
        if peer.proc.stdin is not None:
            try:
                await peer.proc.stdin.aclose()
            except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                pass
        with trio.move_on_after(5.0):
            await peer.proc.wait()
        if peer.proc.returncode is None:
            peer.signal(signal.SIGKILL)
            await peer.proc.wait()


# --- the process side ---------------------------------------------------------------------


def say(*words: object) -> None:
    print(*words, flush=True)


def frame(i: int) -> bytes:
    return i.to_bytes(4, "big") + bytes(FRAME - 4)


async def send_forever(handle, sid: int, pace: float) -> None:  # type: ignore[no-untyped-def]
    say("sending", sid)
    i = 0
    while True:
        try:
            await handle.send_audio(sid, frame(i))
        except AviP2pError:
            return  # the stream ended; its close is reported as an event
        i += 1
        await trio.sleep(pace)


async def wait_stdin_closed() -> None:
    """Return when the parent closes our stdin (a blocking read, off the event loop)."""
    await trio.to_thread.run_sync(sys.stdin.buffer.read, abandon_on_cancel=True)


async def main(args: argparse.Namespace) -> None:
    cfg = AviP2pConfig.local_only(identity_path=Path(args.identity) if args.identity else None)
    async with AviP2p.start(cfg) as (node, events):
        h = node.handle()
        say(h.listen_addresses()[0])
        async with trio.open_nursery() as nursery:
            for topic in args.subscribe:
                await h.subscribe(topic)
            if args.dial:
                await h.dial(args.dial)
            if args.send_to:
                sid = await h.request_audio_stream(PeerId(args.send_to))
                nursery.start_soon(send_forever, h, sid, args.pace)

            async def stop_on_stdin_close() -> None:
                await wait_stdin_closed()
                nursery.cancel_scope.cancel()
            nursery.start_soon(stop_on_stdin_close)

            async for ev in events:
                match ev:
                    case PeerConnected(peer_id=p):
                        say("connected", p)
                    case AudioStreamRequested(stream_id=sid) if args.accept:
                        await h.accept_audio_stream(sid)
                        say("accepted", sid)
                        if args.reply:
                            nursery.start_soon(send_forever, h, sid, args.pace)
                    case AudioStreamAccepted(stream_id=sid):
                        say("accepted-by-peer", sid)
                    case AudioStreamClosed(stream_id=sid, reason=reason):
                        say("closed", sid, reason)
                    case Message(topic=topic, data=data):
                        say("message", topic, data.hex())


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dial")
    p.add_argument("--accept", action="store_true")
    p.add_argument("--reply", action="store_true")
    p.add_argument("--send-to")
    p.add_argument("--pace", type=float, default=0.02)
    p.add_argument("--subscribe", action="append", default=[])
    p.add_argument("--identity")
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    trio.run(main, p.parse_args())
