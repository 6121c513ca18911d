"""Audio streams, the short way (avi-p2p's audio_chat): one side listens, the other dials it,
requests a stream, sends a second of audio and closes the stream; the listener accepts every
stream and counts what arrives.

    python -m agent.mesh.examples.audio_chat --port 4001                                   # listen
    python -m agent.mesh.examples.audio_chat --dial /ip4/127.0.0.1/tcp/4001/p2p/12D3KooW...  # dial

Audio is 20 ms frames of 16 kHz mono S16LE silence (640 bytes), as the agent sends speech. To
send a tone and measure loss and latency, or record what arrives: bench/stream_tone.py.
"""

from __future__ import annotations

import argparse
from collections import Counter

import trio

from agent.mesh import (AudioData, AudioStreamAccepted, AudioStreamClosed, AudioStreamRequested,
                        AviP2p, AviP2pError, AviP2pHandle, PeerConnected, PeerId, StreamId)

from ._common import (base_parser, listen_line, main_wrapper, make_config, out, run_until_signalled,
                      setup_logging, short)

FRAME = bytes(640)  # 20 ms of 16 kHz mono S16LE silence


async def send(handle: AviP2pHandle, stream_id: StreamId, frames: int) -> None:
    """The dialling side, once the peer accepted: `frames` frames at real-time pace, then close."""
    for _ in range(frames):
        await handle.send_audio(stream_id, FRAME)
        await trio.sleep(0.020)
    await trio.sleep(0.2)  # closing does not wait for queued frames: let the last ones leave
    await handle.close_audio_stream(stream_id)
    out(f"sent {frames} frames on stream {stream_id:x} and closed it")


async def chat(args: argparse.Namespace) -> int:
    config = make_config(args)
    target = PeerId(args.dial[0].rsplit("/p2p/", 1)[1]) if args.dial else None
    accepted: list[StreamId] = []
    received: Counter[StreamId] = Counter()

    async def body() -> None:
        async with AviP2p.start(config) as (node, events), trio.open_nursery() as nursery:
            handle = node.handle()
            out(listen_line(handle.listen_addresses()))
            async for event in events:
                match event:
                    case PeerConnected(peer_id=peer) if peer == target:
                        stream_id = await handle.request_audio_stream(peer)
                        out(f"requested stream {stream_id:x} from {short(peer)}")
                    case AudioStreamAccepted(peer_id=peer, stream_id=stream_id):
                        out(f"{short(peer)} accepted stream {stream_id:x}")
                        nursery.start_soon(send, handle, stream_id, args.frames)
                    case AudioStreamRequested(peer_id=peer, stream_id=stream_id):
                        await handle.accept_audio_stream(stream_id)
                        accepted.append(stream_id)
                        out(f"accepted stream {stream_id:x} from {short(peer)}")
                    case AudioData(stream_id=stream_id):
                        received[stream_id] += 1
                    case AudioStreamClosed(peer_id=peer, stream_id=stream_id, reason=reason):
                        count = f": {received[stream_id]} frames received" if stream_id in accepted else ""
                        out(f"stream {stream_id:x} with {short(peer)} ended ({reason}){count}")
                        if target is not None:
                            return  # the dialling side is done once its stream ended

    try:
        stopped_by = await run_until_signalled(body)
    except AviP2pError as exc:
        out(f"error: {exc}")
        return 1
    out(f"summary: stopped by {stopped_by}; {len(accepted)} streams accepted, "
        f"{sum(received.values())} frames received")
    return 0


def main(argv: list[str] | None = None) -> None:
    p = base_parser("audio_chat", "Listen and count incoming audio, or dial a peer and send it some.")
    p.add_argument("--frames", type=int, default=50, help="frames to send when dialling (default 50 = 1 s)")
    args = p.parse_args(argv)
    if args.dial and "/p2p/" not in args.dial[0]:
        p.error("--dial needs a multiaddr ending in /p2p/<peer id>")
    setup_logging(args.verbose)
    main_wrapper(lambda: trio.run(chat, args))


if __name__ == "__main__":
    main()
