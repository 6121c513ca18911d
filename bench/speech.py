"""Speech quality of push-to-talk through real agents over impaired links, with an offline anchor.

Two `avi-agent run` processes with fake hardware on the namespace rig (tests/netrig/): the
talker's microphone plays four Harvard sentences spoken by espeak-ng (16 kHz), its button is
held for the whole speech; the listener records what it plays. Per link condition and run: the
listener's recording scored against the speech with PESQ wideband (ITU-T P.862.2) and STOI,
frames concealed and mouth-to-ear p50/p95/p99 (the listener's status, read by `avi-agent
monitor`), and bytes per second on the wire for the stream: the talker's TCP connection with the
listener (`ss`: payload bytes including retransmissions, plus 66 B of Ethernet/IP/TCP headers
per segment) during the speech, minus its idle rate (the quieter of a window before the press
and one after the release: status and announcements ride the same connection); "back" is the
listener's side (ACKs).

Conditions: clean; 2, 5, 10, 20 % random loss on the listener's link, both directions
(nftables); 30 ± 10 and 50 ± 40 ms delay jitter each direction (the rig's TCP relay, which the
listener dials the talker through). In the same run, the offline anchor: the same speech
through Opus 32 kbit/s 20 ms with in-band FEC and independent random frame loss (no network),
and PCM with the fixed buffer's faded-repeat concealment.

Needs root (namespaces), espeak-ng and sox (apt; scripts/bootstrap.sh installs them), pesq and
pystoi (`pip install -e '.[bench]'`, in the test extra too).

    .venv/bin/python bench/speech.py [--runs 5] [--quick] [--only clean,loss10] [--set codec=pcm]
        [--variant NAME:KEY=VALUE,...] [--variant NAME:checkout=/path/to/other/checkout]

A variant runs interleaved with the baseline, run by run (alternating which goes first), so
both see the same machine load: [talk] settings on top of --set's, and/or ``checkout=PATH`` to run
the agents from another checkout of the project (its own .venv from scripts/bootstrap.sh; e.g.
`git worktree add /tmp/base <commit>` for the code before a change). Each run prints the load.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path
from statistics import median
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.speech import (Link, RunResult, make_speech_wav, read_wav, run_speech, score,  # noqa: E402
                          speech_tools_missing)

LINKS = [
    Link("clean"),
    Link("loss2", loss_percent=2),
    Link("loss5", loss_percent=5),
    Link("loss10", loss_percent=10),
    Link("loss20", loss_percent=20),
    Link("jitter30±10", delay_ms=30, jitter_ms=10),
    Link("jitter50±40", delay_ms=50, jitter_ms=40),
]
PESQ_GOALS = {"loss5": 4.0, "loss10": 3.5, "loss20": 3.0}
P95_GOAL_MS = 300.0      # under loss
P50_CLEAN_GOAL_MS = 80.0
WIRE_GOAL_BPS = 8000.0   # per stream


def anchor(speech: Path, losses: list[float], runs: int) -> list[str]:
    """Offline: Opus 32 kbit/s + FEC and PCM + faded repeat, independent random frame loss."""
    import numpy as np

    from agent.talk.codec import OpusCodec, OpusSettings, PcmS16le
    from hw.audio.base import AudioFormat

    fmt = AudioFormat()
    ref = read_wav(speech)
    frames = [ref[i * 320:(i + 1) * 320].tobytes() for i in range(len(ref) // 320)]
    lines = []
    for loss in losses:
        row: dict[str, list[float]] = {"opus+fec": [], "pcm": []}
        for r in range(runs):
            rng = np.random.default_rng(1000 + r)
            lost = rng.random(len(frames)) < loss / 100
            enc, dec = OpusCodec(fmt, OpusSettings(bitrate=32_000, frame_ms=20, fec=True, loss_percent=max(1, int(loss)))), OpusCodec(fmt)
            packets = [enc.encode(f) for f in frames]
            out = []
            for i, p in enumerate(packets):
                if lost[i]:
                    nxt = packets[i + 1] if i + 1 < len(packets) and not lost[i + 1] else None
                    out.append(dec.conceal(nxt))
                else:
                    out.append(dec.decode(p))  # type: ignore[arg-type]
            row["opus+fec"].append(score(ref, np.frombuffer(b"".join(out), "<i2")).pesq_wb)
            pcm = PcmS16le(fmt)
            out = [pcm.conceal() if lost[i] else pcm.decode(f) for i, f in enumerate(frames)]
            row["pcm"].append(score(ref, np.frombuffer(b"".join(out), "<i2")).pesq_wb)
        lines.append(f"| {loss:g} % | {median(row['opus+fec']):.2f} ({min(row['opus+fec']):.2f}–"
                     f"{max(row['opus+fec']):.2f}) | {median(row['pcm']):.2f} |")
    return lines


def fmt_range(xs: list[float], nd: int = 2) -> str:
    xs = [x for x in xs if x == x]  # drop NaN
    if not xs:
        return "–"
    if len(xs) == 1:
        return f"{xs[0]:.{nd}f}"
    return f"{median(xs):.{nd}f} ({min(xs):.{nd}f}–{max(xs):.{nd}f})"


def parse_settings(text: str) -> dict[str, object]:
    out: dict[str, object] = {}
    for kv in (x for x in text.split(",") if x):
        k, sep, v = kv.partition("=")
        if not sep or not k:
            raise SystemExit(f"bench/speech.py: expected KEY=VALUE, got {kv!r}")
        out[k] = int(v) if v.lstrip("-").isdigit() else (v.lower() == "true" if v.lower() in ("true", "false") else v)
    return out


def row(link: Link, results: list[RunResult], name: str | None = None) -> tuple[str, dict[str, Any]]:
    ok = [r for r in results if r.score is not None]
    pesq = [r.score.pesq_wb for r in ok]  # type: ignore[union-attr]
    stoi = [r.score.stoi for r in ok]  # type: ignore[union-attr]
    length = [r.score.length_ratio for r in ok]  # type: ignore[union-attr]
    conc = [int(r.status.get("frames_concealed", 0) or 0) for r in results]
    def lat(k: str) -> list[float]:
        return [float(v) for r in results if isinstance(v := r.status.get(k), (int, float))]
    p50, p95, p99 = lat("latency_p50_ms"), lat("latency_p95_ms"), lat("latency_p99_ms")
    stretched = [float(r.status.get("stretched_ms", 0) or 0) for r in results]
    tx = [r.tx_bytes_per_s for r in results]
    rx = [r.rx_bytes_per_s for r in results]
    errors = [r.error for r in results if r.error]
    text = (f"| {link.name}{' ' + name if name else ''} | {len(ok)}/{len(results)} | {fmt_range(pesq)} | {fmt_range(stoi, 3)} | "
            f"{fmt_range(length, 3)} | {min(conc) if conc else '–'}–{max(conc) if conc else '–'} | "
            f"{fmt_range(stretched, 0)} | {fmt_range(p50, 0)} / {fmt_range(p95, 0)} / {fmt_range(p99, 0)} | "
            f"{fmt_range(tx, 0)} / {fmt_range(rx, 0)} |")
    summary = {"pesq": median(pesq) if pesq else float("nan"), "p50": median(p50) if p50 else None,
               "p95": max(p95) if p95 else None, "tx": median(tx) if tx else None, "errors": errors}
    return text, summary


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=5, help="runs per link condition (default 5)")
    ap.add_argument("--quick", action="store_true", help="1 run per condition")
    ap.add_argument("--only", default="", help="comma-separated condition names (default: all)")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="a [talk] setting for both agents, e.g. codec=pcm, opus_frame_ms=20")
    ap.add_argument("--variant", action="append", default=[], metavar="NAME:KEY=VALUE,...",
                    help="also run this variant, interleaved run by run with the baseline: [talk] "
                         "settings on top of --set's; checkout=PATH runs another checkout's agents")
    ap.add_argument("--keep", action="store_true", help="keep the work directory (WAVs, logs)")
    args = ap.parse_args()
    why = speech_tools_missing()
    if why:
        print(f"bench/speech.py: {why}", file=sys.stderr)
        return 2
    from tests.netrig import Rig, netns_unavailable_reason

    why = netns_unavailable_reason()
    if why:
        print(f"bench/speech.py: network namespaces unavailable: {why}", file=sys.stderr)
        return 2
    runs = 1 if args.quick else args.runs
    links = [lk for lk in LINKS if not args.only or lk.name in args.only.split(",")]
    talk = parse_settings(",".join(args.set))
    variants: list[tuple[str, dict[str, object], Path | None]] = [("base" if args.variant else "", talk, None)]
    for spec in args.variant:
        name, sep, rest = spec.partition(":")
        if not sep or not name:
            raise SystemExit(f"bench/speech.py: --variant NAME:KEY=VALUE,..., got {spec!r}")
        settings = parse_settings(rest)
        checkout = settings.pop("checkout", None)
        if checkout is not None and not (Path(str(checkout)) / ".venv" / "bin" / "python").exists():
            raise SystemExit(f"bench/speech.py: {checkout}/.venv/bin/python not found (run scripts/bootstrap.sh there)")
        variants.append((name, {**talk, **settings}, None if checkout is None else Path(str(checkout)).resolve()))
    work = Path(tempfile.mkdtemp(prefix="avi-speech-"))
    speech = make_speech_wav(work / "speech.wav")
    print(f"speech: {len(read_wav(speech)) / 16000:.1f} s of espeak-ng (4 Harvard sentences); "
          f"{runs} run(s) per condition; talk settings: {talk or 'defaults'}; "
          + "".join(f"variant {n}: {t or 'defaults'}{' from ' + str(c) if c else ''}; " for n, t, c in variants[1:])
          + "load at start "
          f"{' '.join(f'{x:.1f}' for x in os.getloadavg())}; work dir {work}", flush=True)
    table = ["| link | scored | PESQ-WB | STOI | length | concealed | stretched ms | mouth-to-ear p50 / p95 / p99 ms "
             "| bytes/s on the wire, stream / back |",
             "|---|---|---|---|---|---|---|---|---|"]
    summaries: dict[tuple[str, str], dict[str, Any]] = {}
    t_start = time.monotonic()
    with Rig(2, "10.79.0.0/24") as rig:
        for link in links:
            results: dict[str, list[RunResult]] = {name: [] for name, _, _ in variants}
            for r in range(runs):
                for name, settings, checkout in (variants if r % 2 == 0 else variants[::-1]):
                    label = f"{link.name}{' ' + name if name else ''}"
                    d = work / f"{link.name}-{name or 'base'}-{r}"
                    d.mkdir()
                    res = run_speech(rig, speech, link, d, talk=settings, checkout=checkout)
                    for retry in range(2):  # a talker that missed its press (start-up under load) is no figure
                        if res.error is None or "not talking through the speech" not in res.error:
                            break
                        print(f"  {label} run {r + 1}: again ({res.error})", flush=True)
                        d = work / f"{link.name}-{name or 'base'}-{r}-again{retry}"
                        d.mkdir()
                        res = run_speech(rig, speech, link, d, talk=settings, checkout=checkout)
                    results[name].append(res)
                    s = res.score
                    print(f"  {label} run {r + 1}: " + (f"PESQ {s.pesq_wb:.2f} STOI {s.stoi:.3f} len {s.length_ratio:.3f}"
                          if s else f"no score ({res.error})") +
                          f", concealed {res.status.get('frames_concealed')}, stretched {res.status.get('stretched_ms')} ms, "
                          f"p50/p95/p99 {res.status.get('latency_p50_ms')}/{res.status.get('latency_p95_ms')}/"
                          f"{res.status.get('latency_p99_ms')} ms, {res.tx_bytes_per_s:.0f} B/s in "
                          f"{res.tx_segments_per_s:.1f} segments > 100 B/s, "
                          + (f"retransmitted {res.tcp['bytes_retrans'] / max(1, res.tcp['bytes_sent']):.0%} of "
                             f"the bytes, {res.tcp['retrans'] / max(1, res.tcp['data_segs_out']):.0%} of the "
                             f"segments ({res.tcp['dsack_dups'] / max(1, res.tcp['data_segs_out']):.0%} spurious), "
                             if res.tcp else "") +
                          f"load {res.load[0]:.1f}", flush=True)
            for name, _, _ in variants:
                text, summaries[(link.name, name)] = row(link, results[name], name)
                table.append(text)
    print()
    print("\n".join(table))
    print()
    print("Offline anchor (no network; independent random frame loss, same speech):")
    print("| frame loss | Opus 32k 20 ms + FEC, PESQ-WB | PCM + faded repeat |\n|---|---|---|")
    print("\n".join(anchor(speech, [2, 5, 10, 20], max(runs, 3))))
    print()
    for vname, _, _ in variants:
        print(f"Goals ({'variant ' + vname if vname and vname != 'base' else 'default settings' if not talk else 'these settings'}):")
        mine = {link: v for (link, n), v in summaries.items() if n == vname}
        for name, goal in PESQ_GOALS.items():
            if name in mine:
                got = mine[name]["pesq"]
                print(f"  PESQ-WB at {name}: {got:.2f} (goal >= {goal}) {'met' if got >= goal else 'NOT met'}")
        lossy = [v["p95"] for n, v in mine.items() if n.startswith("loss") and v["p95"] is not None]
        if lossy:
            print(f"  mouth-to-ear p95 under loss, worst run: {max(lossy):.0f} ms (goal <= {P95_GOAL_MS:.0f}) "
                  f"{'met' if max(lossy) <= P95_GOAL_MS else 'NOT met'}")
        if "clean" in mine and mine["clean"]["p50"] is not None:
            p = mine["clean"]["p50"]
            print(f"  mouth-to-ear p50 clean: {p:.0f} ms (goal <= {P50_CLEAN_GOAL_MS:.0f}) "
                  f"{'met' if p <= P50_CLEAN_GOAL_MS else 'NOT met'}")
        txs = [v["tx"] for v in mine.values() if v["tx"] is not None]
        if txs:
            print(f"  bytes/s per stream on the wire, median per condition: {min(txs):.0f}–{max(txs):.0f} "
                  f"(goal <= {WIRE_GOAL_BPS:.0f}) {'met' if max(txs) <= WIRE_GOAL_BPS else 'NOT met'}")
    print(f"took {time.monotonic() - t_start:.0f} s; load at end {' '.join(f'{x:.1f}' for x in os.getloadavg())}")
    if not args.keep:
        import shutil

        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
