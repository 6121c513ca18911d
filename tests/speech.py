"""Speech for measuring push-to-talk quality: a WAV of spoken sentences, and scoring what a
listener played against it (PESQ wideband, ITU-T P.862.2, and STOI).

Used by bench/speech.py and the lossy-link speech test. Needs `espeak-ng` and `sox` (apt;
scripts/bootstrap.sh installs them) to make the WAV, and `pesq` / `pystoi` (PyPI; the `test`
and `bench` extras) to score.
"""

from __future__ import annotations

import shutil
import subprocess
import wave
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from agent import measure

__all__ = ["HARVARD", "RATE", "make_speech_wav", "read_wav", "write_wav", "align", "offset_of", "score",
           "Score", "sound_span_s", "speech_tools_missing"]

RATE = 16_000
# Four Harvard sentences (IEEE 1969, list 1): the usual material for speech-quality tests.
HARVARD = ("The birch canoe slid on the smooth planks. Glue the sheet to the dark blue background. "
           "It's easy to tell the depth of a well. These days a chicken leg is a rare dish.")


def speech_tools_missing() -> str | None:
    """Why speech cannot be made or scored here, or None."""
    for tool in ("espeak-ng", "sox"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed (apt-get install espeak-ng sox; scripts/bootstrap.sh does)"
    try:
        import pesq  # noqa: F401
        import pystoi  # noqa: F401
    except ImportError as exc:
        return f"{exc.name} is not installed (pip install -e '.[bench]')"
    return None


def make_speech_wav(path: Path, text: str = HARVARD, *, lead_s: float = 0.3, tail_s: float = 0.3) -> Path:
    """Speak ``text`` with espeak-ng and write it as 16 kHz mono S16LE with ``lead_s`` / ``tail_s``
    of silence around it (deterministic: same text, same samples; sox -R: its dither seeded, whose
    random noise had made every WAV, and so every score, a little different)."""
    raw = path.with_suffix(".espeak.wav")
    subprocess.run(["espeak-ng", "-v", "en-us", "-s", "150", "-w", str(raw), text], check=True,
                   capture_output=True, timeout=60)
    subprocess.run(["sox", "-R", str(raw), "-r", str(RATE), "-c", "1", "-b", "16", "-e", "signed-integer",
                    str(path), "pad", str(lead_s), str(tail_s)], check=True, capture_output=True, timeout=60)
    raw.unlink(missing_ok=True)
    return path


def read_wav(path: Path) -> np.ndarray:
    """The samples of a mono S16LE WAV file as int16 (what PESQ and STOI take)."""
    return measure.read_wav(path)[0].astype(np.int16)


def write_wav(path: Path, x: np.ndarray, rate: int = RATE) -> None:
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(np.asarray(x, dtype="<i2").tobytes())


def sound_span_s(x: np.ndarray, rate: int = RATE, threshold: float = 300.0) -> float:
    """Seconds from the first to the last 20 ms block louder than ``threshold`` RMS."""
    block = rate // 50
    n = len(x) // block
    if n == 0:
        return 0.0
    blocks = x[: n * block].astype(np.float64).reshape(n, block)
    loud = np.flatnonzero(np.sqrt((blocks ** 2).mean(axis=1)) > threshold)
    return 0.0 if loud.size == 0 else (loud[-1] - loud[0] + 1) * block / rate


def offset_of(ref: np.ndarray, deg: np.ndarray, rate: int = RATE) -> int:
    """Where ``ref`` starts in ``deg`` (a recording that contains it somewhere, possibly a little
    stretched), in samples: the best cross-correlation of the envelopes, refined on the
    samples."""
    hop = rate // 100
    def env(x: np.ndarray) -> np.ndarray:
        n = len(x) // hop
        return np.abs(x[: n * hop].astype(np.float64)).reshape(n, hop).mean(axis=1)
    er, ed = env(ref), env(deg)
    if len(ed) < 2 or len(er) < 2:
        raise ValueError("recording too short to align")
    c = np.correlate(ed - ed.mean(), er - er.mean(), mode="full")
    lag = int(np.argmax(c)) - (len(er) - 1)
    # refine to the sample around the coarse lag
    start = max(0, lag * hop)
    lo, hi = max(0, start - hop), min(len(deg) - 1, start + hop)
    best, best_c = start, -np.inf
    seg = ref[: min(len(ref), rate)].astype(np.float64)
    for s in range(lo, hi + 1, 4):
        d = deg[s:s + len(seg)].astype(np.float64)
        if len(d) < len(seg):
            break
        cc = float(np.dot(d, seg))
        if cc > best_c:
            best, best_c = s, cc
    return best


def align(ref: np.ndarray, deg: np.ndarray, rate: int = RATE) -> np.ndarray:
    """The part of ``deg`` (a recording that contains ``ref`` somewhere, possibly a little
    stretched) that lines up with ``ref`` (see `offset_of`), zero-padded at the end."""
    best = offset_of(ref, deg, rate)
    out = deg[best:best + len(ref)]
    if len(out) < len(ref):
        out = np.concatenate([out, np.zeros(len(ref) - len(out), dtype=out.dtype)])
    return out


@dataclass(frozen=True)
class Score:
    pesq_wb: float
    stoi: float
    length_ratio: float  # received speech span / sent speech span


def score(ref: np.ndarray, received: np.ndarray, rate: int = RATE) -> Score:
    """PESQ-WB and STOI of ``received`` (the listener's whole recording) against ``ref``."""
    from pesq import pesq
    from pystoi import stoi

    deg = align(ref, received, rate)
    r, d = ref.astype(np.float64) / 32768, deg.astype(np.float64) / 32768
    span_ref = sound_span_s(ref, rate)
    ratio = sound_span_s(received, rate) / span_ref if span_ref else 0.0
    try:
        p = float(pesq(rate, r, d, "wb"))
    except Exception:  # pesq raises on a recording with no utterance in it
        p = float("nan")
    return Score(p, float(stoi(r, d, rate, extended=False)), ratio)


# --- two real agents on the namespace rig, the talker's microphone playing speech ---------------

AGENT_PORT = 4001
RELAY_PORT = 4002
PRESS_AT_S = 7.0      # after the agents start: the mesh and the group announcements, under loss
LEAD_S = 1.0          # the speech starts this long after the press (the source plays from its open)
TAIL_S = 3.0          # listened to after the release
HOLD_SLACK_S = 0.5    # held this much longer than the speech needs
DRAIN_ALLOWANCE_S = 3.0  # the talker's microphone drained before push-to-talk starts, at most
START_SLACK_S = 15.0  # an agent under load starts this much later than spawned, at most


@dataclass(frozen=True)
class Link:
    """How the listener's link is impaired: random loss (%, both directions, nftables) or a
    delay relay (ms ± ms, uniform, each direction) that the listener dials the talker through."""

    name: str
    loss_percent: float = 0.0
    delay_ms: float = 0.0
    jitter_ms: float = 0.0


@dataclass
class RunResult:
    link: str
    score: Score | None
    status: dict[str, object]   # the listener's last status message (from avi-agent monitor)
    talker_status: dict[str, object]
    tx_bytes_per_s: float       # talker -> listener on the wire during the talk, idle rate taken off
    rx_bytes_per_s: float       # listener -> talker (ACKs) during the talk, idle rate taken off
    tx_segments_per_s: float    # TCP segments > 100 B talker -> listener, idle rate taken off
    load: tuple[float, float, float]
    wav: Path
    error: str | None = None
    # the talker's TCP connections with the listener over their life (mostly the talk), from
    # the kernel (ss): bytes_sent, bytes_retrans, data_segs_out, retrans (segments), dsack_dups
    # (retransmissions the listener had already: spurious)
    tcp: dict[str, int] | None = None


ETHERNET_HEADER = 14  # bytes per packet below IP, counted on the wire too
ACCT_TABLE = "speech_acct"


def _count_script(peer_ip: str) -> str:
    """nftables counters in a host's namespace: every IPv4 TCP packet it sends to ``peer_ip``
    (retransmissions included: counted as they leave), and those longer than 100 B (segments
    carrying audio; pure ACKs, even with SACK blocks, are shorter)."""
    return (f"add table inet {ACCT_TABLE}\n"
            f"add chain inet {ACCT_TABLE} out {{ type filter hook output priority 0; policy accept; }}\n"
            f"flush chain inet {ACCT_TABLE} out\n"
            f"add rule inet {ACCT_TABLE} out ip daddr {peer_ip} meta l4proto tcp counter\n"
            f"add rule inet {ACCT_TABLE} out ip daddr {peer_ip} meta l4proto tcp ip length > 100 counter\n")


def _counted(host: object) -> tuple[int, int]:
    """(bytes on the wire, segments > 100 B) sent so far, from the counters of `_count_script`."""
    import json

    out = host.run(["nft", "-j", "list", "chain", "inet", ACCT_TABLE, "out"]).stdout  # type: ignore[attr-defined]
    every, big = [e["rule"]["expr"][-1]["counter"] for e in json.loads(out)["nftables"] if "rule" in e]
    return every["bytes"] + ETHERNET_HEADER * every["packets"], big["packets"]


def _wire(talker: object, listener: object) -> tuple[int, int, int]:
    """(listener -> talker bytes, talker -> listener bytes, talker -> listener segments > 100 B)."""
    tx, segs = _counted(talker)
    rx, _ = _counted(listener)
    return rx, tx, segs


def _logged_at(log: Path, text: str) -> float | None:
    """When an agent first logged a line containing ``text``, as time.time() seconds."""
    from datetime import datetime

    try:
        lines = log.read_text(errors="replace").splitlines()
    except FileNotFoundError:
        return None
    for line in lines:
        if text in line:
            return datetime.strptime(line[:23], "%Y-%m-%d %H:%M:%S.%f").timestamp()
    return None


def _pressed_at(log: Path) -> float | None:
    """The talker's press (its log line), as time.time() seconds, or None before it."""
    return _logged_at(log, "talk: talking to group")


def _rates(samples: list[tuple[float, tuple[int, int, int]]], t_from: float, t_to: float,
           pressed: float) -> tuple[float, ...]:
    """Per-second rates of the sampled byte counters between two times."""
    inside = [(t, c) for t, c in samples if t_from <= t <= t_to]
    if len(inside) < 2 or inside[-1][0] - inside[0][0] < 0.5 * (t_to - t_from):
        raise RuntimeError(f"too few byte samples between {t_from - pressed:+.1f} and "
                           f"{t_to - pressed:+.1f} s of the press")
    (ta, ca), (tb, cb) = inside[0], inside[-1]
    return tuple((cb[k] - ca[k]) / (tb - ta) for k in range(3))


def _tcp_counts(host: object, peer_ip: str) -> dict[str, int]:
    """Retransmission counters of the host's TCP connections with ``peer_ip`` (``ss -ti``)."""
    out = host.run(["ss", "-tinH", "state", "established", "dst", peer_ip]).stdout  # type: ignore[attr-defined]
    total = {"bytes_sent": 0, "bytes_retrans": 0, "data_segs_out": 0, "retrans": 0, "dsack_dups": 0}
    for word in out.split():
        key, sep, value = word.partition(":")
        if not sep or key not in total:
            continue
        if key == "retrans":  # "retrans:<in flight>/<total>"
            value = value.partition("/")[2]
        if value.isdigit():
            total[key] += int(value)
    return total


def _stream_open_s(log: Path) -> float | None:
    """Seconds from the press to the listener accepting the stream, from the talker's log."""
    from datetime import datetime

    pressed = accepted = None
    for line in log.read_text(errors="replace").splitlines():
        stamp = line[:23]
        if pressed is None and "talk: talking to group" in line:
            pressed = datetime.strptime(stamp, "%Y-%m-%d %H:%M:%S.%f")
        elif pressed is not None and "accepted our stream" in line:
            accepted = datetime.strptime(stamp, "%Y-%m-%d %H:%M:%S.%f")
            break
    if pressed is None or accepted is None:
        return None
    return round((accepted - pressed).total_seconds(), 2)


def run_speech(rig: object, speech: Path, link: Link, workdir: Path, *, talk: dict[str, object] | None = None,
               python: str | None = None, checkout: Path | None = None) -> RunResult:
    """One talk of ``speech`` from agent a (rig host 0) to agent b (host 1) over ``link``;
    b's recording scored against the speech. ``talk`` overrides [talk] settings of both.
    ``checkout``: run the agents and the monitor from another checkout of the project (its
    ``.venv``, made by scripts/bootstrap.sh), e.g. a baseline commit in the same bench run."""
    import os
    import subprocess
    import sys
    import time

    from agent.config import AgentConfig, to_toml
    from agent.mesh import new_identity, peer_id_of, write_identity
    from agent.simulate import SimNode, start, stop

    if checkout is not None and python is None:
        python = str(checkout / ".venv" / "bin" / "python")
    python = python or sys.executable
    workdir.mkdir(parents=True, exist_ok=True)
    ha, hb = rig[0], rig[1]  # type: ignore[index]
    ref = read_wav(speech)
    clip_s = len(ref) / RATE
    # The talker's microphone plays its WAV as it is read. Before the press the service drains
    # it until push-to-talk starts (0.2-3 s, longer under load), then an idle talker reads one
    # level window and stops it until the press (agent/talk/engine.py); the WAV goes on where it
    # was. So the press finds the WAV 1 to 1 + DRAIN_ALLOWANCE_S s in: after that much silence
    # and LEAD_S more comes the speech, which therefore begins LEAD_S to LEAD_S +
    # DRAIN_ALLOWANCE_S after the press; the button is held until it has surely ended, and where
    # it really was is found afterwards in the listener's recording.
    from agent.levels import LevelMeter
    from hw.audio.base import AudioFormat

    idle_read_s = LevelMeter().window_frames * AudioFormat().frame_s
    mic = workdir / "mic.wav"
    write_wav(mic, np.concatenate([np.zeros(int((idle_read_s + DRAIN_ALLOWANCE_S + LEAD_S) * RATE), dtype=np.int16),
                                   ref]))
    hold_s = LEAD_S + DRAIN_ALLOWANCE_S + clip_s + 0.3 + HOLD_SLACK_S
    a = SimNode("a", 0.0, [(PRESS_AT_S, hold_s)], port=AGENT_PORT, host=ha.ip)
    b = SimNode("b", 0.0, [], port=AGENT_PORT, host=hb.ip)
    for n in (a, b):
        n.dir = workdir / n.name
        n.dir.mkdir(parents=True, exist_ok=True)
        key = n.dir / "identity.key"
        ident = new_identity()
        write_identity(key, ident)
        n.peer_id = peer_id_of(ident)
        n.wav.unlink(missing_ok=True)
    relay = None
    target = a.addr
    if link.delay_ms or link.jitter_ms:
        relay = ha.start_relay((ha, AGENT_PORT), port=RELAY_PORT, delay_ms=link.delay_ms,
                               jitter_ms=link.jitter_ms, seed=int(time.time()))
        target = f"/ip4/{relay.address[0]}/tcp/{relay.address[1]}/p2p/{a.peer_id}"
    for n, boot, src in ((a, [], {"kind": "wav", "path": str(mic)}), (b, [target], {"kind": "silence"})):
        data = {
            "node": {"name": n.name},
            "mesh": {"listen_host": n.host, "listen_port": n.port, "bootstrap_peers": boot,
                     "enable_mdns": False, "enable_kad": False, "identity_path": str(n.dir / "identity.key")},
            "audio": {"backend": "fake", "fake_source": src, "fake_sink": {"kind": "wav", "path": str(n.wav)}},
            "gpio": {"backend": "fake",
                     "fake_presses": [{"at_s": at, "duration_s": dur} for at, dur in n.presses]},
            "talk": dict(talk or {}),
            "status": {"interval_s": 1.0, "stale_after_s": 5.0},
            "logging": {"level": "INFO", "journal": "never"},
        }
        AgentConfig.model_validate(data)
        (n.dir / "agent.toml").write_text(to_toml(data))
    watch_s = PRESS_AT_S + hold_s + TAIL_S
    monitor_out = workdir / "monitor.jsonl"
    monitor = None
    error = None
    if link.loss_percent:
        hb.set_loss(link.loss_percent)
    from tests.netrig._sh import nft

    nft(ha.ns, _count_script(hb.ip))
    nft(hb.ns, _count_script(ha.ip))
    repo = checkout or Path(__file__).resolve().parent.parent

    def on(host: Any) -> Any:  # start an agent there with our interpreter, from ``repo``
        return lambda argv, **kw: host.exec([python, *argv[1:]], cwd=str(repo), **kw)

    tx = rx = segs = 0.0
    tcp: dict[str, int] | None = None
    samples: list[tuple[float, tuple[int, int, int]]] = []
    pressed: float | None = None
    try:
        start(a, on(ha))
        start(b, on(hb))
        t0 = time.monotonic()
        with monitor_out.open("w") as out, (workdir / "monitor.log").open("w") as err:
            monitor = hb.exec([python, "-m", "agent", "monitor", "--config", str(b.dir / "agent.toml"),
                               "--dial", b.addr, "--json", "--duration", str(watch_s + START_SLACK_S)],
                              cwd=repo, stdout=out, stderr=err)
        # Bytes on the talker's link, sampled through the run; afterwards the windows are placed
        # by the talker's own press (logged): under load an agent starts seconds after its spawn,
        # and its press and microphone count from its own start.
        while monitor.poll() is None and time.monotonic() - t0 < watch_s + START_SLACK_S + 20:
            for n in (a, b):
                if n.proc is None or n.proc.poll() is not None:
                    raise RuntimeError(f"agent {n.name} exited: {n.log.read_text()[-2000:]}")
            samples.append((time.time(), _wire(ha, hb)))
            if pressed is None:
                pressed = _pressed_at(a.log)
            elif time.time() > pressed + hold_s + TAIL_S:
                break
            time.sleep(0.2)
        if pressed is None:
            raise RuntimeError("the talker never pressed (no 'talking to group' in its log)")
        tcp = _tcp_counts(ha, hb.ip)
    except Exception as exc:  # reported in the table, not raised: one bad run is a figure too
        error = f"{type(exc).__name__}: {exc}"
    finally:
        for n in (a, b):
            stop(n)
        if monitor is not None:
            hb.kill(monitor)
        if relay is not None:
            relay.close()
        if link.loss_percent:
            hb.set_loss(0)
    from tests.test_netns_mesh import last_status

    status = last_status(monitor_out)
    sent = int(status.get("a", {}).get("frames_sent", 0) or 0)  # type: ignore[call-overload]
    opened = _stream_open_s(a.log)
    if error is None and (sent < 0.9 * clip_s * 50 or opened is None or opened > LEAD_S):
        error = (f"the talker sent {sent} frames for {clip_s * 50:.0f} of speech, its stream was open "
                 f"{opened} s after the press: it was not talking through the speech (agents slow to "
                 f"start or to learn each other's groups; load {os.getloadavg()[0]:.1f})")
    sc = None
    if error is None:
        try:
            heard = read_wav(b.wav)
            sc = score(ref, heard)
        except Exception as exc:
            error = f"scoring: {type(exc).__name__}: {exc}"
    if error is None and pressed is not None:
        try:
            # The speech's own time at the talker: where it is in the listener's recording (which
            # keeps time from the sink's open, logged), less the mouth-to-ear delay.
            opened_b = _logged_at(b.log, "service: devices open")
            if opened_b is None:
                raise RuntimeError("the listener's 'devices open' line is missing")
            p50 = float(status.get("b", {}).get("latency_p50_ms") or 0) / 1000  # type: ignore[union-attr,arg-type]
            spoken = opened_b + offset_of(ref, heard) / RATE - p50
            talking = _rates(samples, spoken + 0.3, spoken + clip_s - 0.5, pressed)
            before = _rates(samples, pressed - 2.5, pressed - 0.2, pressed)
            after = _rates(samples, pressed + hold_s + 0.5, pressed + hold_s + TAIL_S - 0.2, pressed)
            # the quieter of the windows before the press and after the release (start-up traffic
            # or a stream's tail in the other would make the stream look cheaper than it is)
            idle = [min(x, y) for x, y in zip(before, after)]
            rx, tx, segs = (talking[k] - idle[k] for k in range(3))
        except Exception as exc:
            error = f"bytes: {type(exc).__name__}: {exc}"
    return RunResult(link.name, sc, status.get("b", {}), status.get("a", {}), tx, rx, segs, os.getloadavg(),
                     b.wav, error, tcp)
