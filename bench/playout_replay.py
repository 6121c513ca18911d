"""Replay measured TCP arrival delays through the adaptive playout, offline: speech quality and
mouth-to-ear delay of playout variants on *the same* arrivals, so the figures carry no machine
load of their own (the traces carry the load they were measured under).

Input: ``--traces FILE`` written by ``bench/tcp_thin.py --dump FILE``: one-way delays of a thin
TCP stream (one message per 40 ms) between two namespace-rig hosts with random loss, the
kernel's real retransmissions. Each trace is cut into windows of one talk (``--lead-s`` of
silence after the press, then the speech WAV of bench/speech.py); each window plays the speech
(Opus 32 kbit/s, 40 ms packets: the defaults) through a fresh `AdaptivePlayout`, pulled every
20 ms as the engine does, and what comes out is scored against the speech (PESQ-WB, STOI).
Mouth-to-ear = pull time - capture time of the pulled audio + one frame (the sink's queue);
the 40 ms of packetisation are in it (a packet leaves when its last frame is captured).

    .venv/bin/python bench/tcp_thin.py --loss 5 --loss 20 --seconds 120 --dump /tmp/thin.json \\
        --only "sockopt-rto-min 20ms"
    .venv/bin/python bench/playout_replay.py --traces /tmp/thin.json \\
        --variant deeper:min_delay_us=80000

A variant sets `AdaptivePlayout` keyword arguments (``NAME:key=value,...``); "base" is the
engine's defaults (config/agent.toml's jitter_target_ms / jitter_max_ms). ``memory=1``: each
talk starts from the delay estimate the previous talk on the same trace learnt (what the
engine does for the next stream from the same peer); the first talk of a trace starts fresh.
``dtx=1``: the talker leaves silent packets out as the engine does for a listener that plays
gaps (agent/talk/dtx.py: hangover, gap marker); each packet sent keeps its slot's delay.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
from pathlib import Path
from statistics import median
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from agent.measure import percentile  # noqa: E402
from tests.speech import RATE, make_speech_wav, read_wav, score, speech_tools_missing  # noqa: E402

FRAME_US = 20_000


def playout_kwargs() -> dict[str, Any]:
    """The engine's construction of a stream's playout, from the default config."""
    from agent.config import TalkConfig

    tc = TalkConfig()
    return {"min_delay_us": tc.jitter_target_ms * 1000, "max_delay_us": tc.jitter_max_ms * 1000}


def encode(speech: np.ndarray, bitrate: int, frame_ms: int) -> list[tuple[int, bytes, bool]]:
    """(capture time µs of the packet's first sample, Opus packet, silent) for the speech."""
    from agent.talk.dtx import DTX_SILENCE_RMS
    from agent.talk.stretch import rms
    from agent.talk.codec import OpusCodec, OpusSettings
    from hw.audio.base import AudioFormat

    fmt = AudioFormat()
    enc = OpusCodec(fmt, OpusSettings(bitrate=bitrate, frame_ms=frame_ms, fec=False))
    out = []
    fs = fmt.frame_samples
    per_packet = frame_ms * 1000 // FRAME_US
    loud = False
    for i in range(len(speech) // fs):
        frame = speech[i * fs:(i + 1) * fs]
        loud = loud or rms(frame) >= DTX_SILENCE_RMS
        p = enc.encode(frame.tobytes())
        if p is not None:
            out.append(((i + 1 - per_packet) * FRAME_US, p, not loud))
            loud = False
    return out


def dtx_packets(packets: list[tuple[int, bytes, bool]], frame_ms: int) -> list[tuple[int, int, bytes]]:
    """(slot, capture time, payload) of the packets a DTX talker sends (markers: empty payload)."""
    from agent.talk.dtx import Dtx, DtxGate, hangover_packets

    gate = DtxGate(hangover_packets(frame_ms))
    out = []
    for slot, (ts, payload, silent) in enumerate(packets):
        d = gate.decide(silent)
        if d is not Dtx.SKIP:
            out.append((slot, ts, payload if d is Dtx.SEND else b""))
    return out


def replay(packets: list[tuple[int, int, bytes]], delays_ms: list[float], kwargs: dict[str, Any],
           phase_us: int = 7_000) -> tuple[np.ndarray, list[float], dict[str, Any]]:
    """Play ``packets`` arriving after ``delays_ms`` (one per packet, from its send time) through
    a playout; (output samples, mouth-to-ear ms of each pulled frame with audio, stats; stats'
    "estimator" is the playout's, for the next talk's ``prior``). ``packets``: (slot, capture
    time, payload); a packet sent in slot k arrives after ``delays_ms[k]``."""
    from agent.talk.codec import make_codec
    from agent.talk.playout import AdaptivePlayout
    from hw.audio.base import AudioFormat

    fmt = AudioFormat()
    po = AdaptivePlayout(fmt, lambda c: make_codec(c, fmt), **kwargs)
    packet_us = packets[1][1] - packets[0][1]
    arrivals = []
    last = 0
    for seq, (slot, ts, payload) in enumerate(packets):
        sent = ts + packet_us  # a packet leaves once its last frame is captured
        last = max(last, sent + int(delays_ms[slot] * 1000))  # TCP delivers in order
        arrivals.append((last, seq, ts, payload))
    close_at = arrivals[-1][0] + 1
    out: list[bytes] = []
    lat: list[float] = []
    silence = bytes(fmt.frame_bytes)
    t = arrivals[0][0] - arrivals[0][0] % FRAME_US + phase_us
    i = 0
    while True:
        while i < len(arrivals) and arrivals[i][0] <= t:
            at, seq, ts, payload = arrivals[i]
            po.push(seq, ts, payload, at, codec=2)
            i += 1
        if i == len(arrivals) and t >= close_at and not po.closed:
            po.close()
        got = po.pull(t)
        if got is None:
            out.append(silence)
            if po.drained:
                break
        else:
            out.append(got.pcm)
            if got.timestamp_us is not None:
                lat.append((t - got.timestamp_us + FRAME_US) / 1000)
        t += FRAME_US
        if t > close_at + 5_000_000:
            break
    st = po.stats()
    return (np.frombuffer(b"".join(out), dtype="<i2"), lat,
            {"concealed": st.concealed, "stretched_ms": st.stretched_ms, "late": st.late, "sent": len(packets),
             "estimator": po.estimator})


def fmt_range(xs: list[float], nd: int = 2) -> str:
    xs = [x for x in xs if x == x]
    if not xs:
        return "–"
    return f"{median(xs):.{nd}f} ({min(xs):.{nd}f}–{max(xs):.{nd}f})"


def parse_value(v: str) -> object:
    try:
        return int(v)
    except ValueError:
        try:
            return float(v)
        except ValueError:
            return v


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--traces", type=Path, required=True, help="JSON from bench/tcp_thin.py --dump")
    ap.add_argument("--variant", action="append", default=[], metavar="NAME:KEY=VALUE,...")
    ap.add_argument("--setting", default="", help="only traces of this tcp_thin setting (default: all)")
    ap.add_argument("--lead-s", type=float, default=1.0, help="silence between the press and the speech")
    ap.add_argument("--windows", type=int, default=0, help="at most this many talks per trace (0: all that fit)")
    ap.add_argument("--bitrate", type=int, default=32_000)
    ap.add_argument("--frame-ms", type=int, default=40)
    args = ap.parse_args()
    why = speech_tools_missing()
    if why:
        print(f"bench/playout_replay.py: {why}", file=sys.stderr)
        return 2
    data = json.loads(args.traces.read_text())
    variants: list[tuple[str, dict[str, Any]]] = [("base", playout_kwargs())]
    for spec in args.variant:
        name, sep, rest = spec.partition(":")
        if not sep:
            raise SystemExit(f"--variant NAME:KEY=VALUE,..., got {spec!r}")
        kw = dict(playout_kwargs())
        for kv in (x for x in rest.split(",") if x):
            k, _, v = kv.partition("=")
            kw[k] = parse_value(v)
        variants.append((name, kw))
    with tempfile.TemporaryDirectory() as tmp:
        ref = read_wav(make_speech_wav(Path(tmp) / "speech.wav"))
    talk = np.concatenate([np.zeros(int(args.lead_s * RATE), dtype=np.int16), ref])
    packets = encode(talk, args.bitrate, args.frame_ms)
    n = len(packets)
    print(f"{len(ref) / RATE:.1f} s of speech after {args.lead_s:g} s of silence: {n} packets of "
          f"{args.frame_ms} ms; traces from kernel {data.get('kernel')}; variants: "
          + "; ".join(f"{nm} {kw}" for nm, kw in variants))
    print("| loss | trace setting | variant | talks | PESQ-WB | STOI | concealed | stretched ms "
          "| mouth-to-ear p50 / p95 / p99 ms (median of talks) | worst talk's p95 |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for tr in data["traces"]:
        if args.setting and tr["setting"] != args.setting:
            continue
        d = tr["delays_ms"]
        if tr.get("period_ms", 40) != args.frame_ms:
            print(f"skipping a trace of {tr.get('period_ms')} ms messages", file=sys.stderr)
            continue
        starts = list(range(0, len(d) - n + 1, n))
        if args.windows:
            starts = starts[:args.windows]
        for name, kw0 in variants:
            kw = dict(kw0)
            pesq, stoi, conc, stretch, p50, p95, p99 = [], [], [], [], [], [], []
            memory = bool(kw.pop("memory", 0))
            sent = dtx_packets(packets, args.frame_ms) if kw.pop("dtx", 0) else \
                [(k, ts, p) for k, (ts, p, _) in enumerate(packets)]
            prior = None
            for s0 in starts:
                if memory:
                    kw["prior"] = prior
                out, lat, st = replay(sent, d[s0:s0 + n], kw)
                prior = st["estimator"]
                sc = score(ref, out)
                pesq.append(sc.pesq_wb)
                stoi.append(sc.stoi)
                conc.append(st["concealed"])
                stretch.append(st["stretched_ms"])
                p50.append(percentile(lat, 50, math.nan))
                p95.append(percentile(lat, 95, math.nan))
                p99.append(percentile(lat, 99, math.nan))
            print(f"| {tr['loss']:g} % | {tr['setting']} | {name} ({len(sent)} packets) | {len(starts)} | {fmt_range(pesq)} | "
                  f"{fmt_range(stoi, 3)} | {fmt_range(conc, 0)} | {fmt_range(stretch, 0)} | "
                  f"{median(p50):.0f} / {median(p95):.0f} / {median(p99):.0f} | {max(p95):.0f} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
