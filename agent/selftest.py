"""``avi-agent selftest``: play a tone through the node's speaker and record it back.

With ``audio.backend = "alsa"`` it uses the configured devices: a loopback path must exist (a
microphone near the speaker, a loopback cable, or ALSA's ``snd-aloop``); with ``"fake"`` the
speaker and microphone are a simulated loopback (:class:`hw.audio.fake.Loopback`), so the whole
path (gains, pacing, analysis) runs end to end. It prints the level, the frequency found and the
latency (hand-off to the sink until the tone's onset in the capture), and exits 0 when the tone
came back, else 1 with the reason. The configured gains apply. Stop the agent first on a real
node: a sound card is opened by one program at a time.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from contextlib import AsyncExitStack
from dataclasses import dataclass
from typing import Any

import numpy as np
import trio

from agent.config import AgentConfig
from agent.levels import DBFS_FLOOR, apply_gain, dbfs
from hw.audio import AudioFormat, audio_format, monotonic_us, open_audio_sink, open_audio_source

__all__ = ["SelftestResult", "analyse", "run_selftest", "tone"]

LEAD_S = 0.3          # silence before the tone (the noise floor is measured there)
TAIL_S = 0.5          # recording after the tone ends
MIN_LEVEL_DBFS = -50.0
FREQ_TOLERANCE = 0.02


@dataclass(frozen=True, slots=True)
class SelftestResult:
    ok: bool
    reason: str
    level_dbfs: float
    peak_dbfs: float
    noise_dbfs: float
    frequency_hz: float | None
    latency_ms: float | None
    clipped: int


def tone(fmt: AudioFormat, frequency_hz: float, seconds: float, level: float = 0.5) -> list[bytes]:
    """Frames of a sine (5 ms fade in and out) in ``fmt``."""
    n = int(round(seconds * fmt.rate / fmt.frame_samples)) * fmt.frame_samples
    t = np.arange(n) / fmt.rate
    fade = np.minimum(1.0, np.minimum(t, t[-1] - t) / 0.005)
    x = np.rint(level * 32767 * fade * np.sin(2 * np.pi * frequency_hz * t)).astype("<i2")
    if fmt.channels > 1:
        x = np.repeat(x, fmt.channels)
    data = x.tobytes()
    fb = fmt.frame_bytes
    return [data[i:i + fb] for i in range(0, len(data), fb)]


def analyse(fmt: AudioFormat, recorded: list[tuple[int, bytes]], tone_start_us: int,
            frequency_hz: float) -> SelftestResult:
    """Judge a recording: ``recorded`` is [(capture timestamp µs, frame)], the tone was handed to
    the sink at ``tone_start_us`` (same clock)."""
    if not recorded:
        return SelftestResult(False, "nothing was recorded", DBFS_FLOOR, DBFS_FLOOR, DBFS_FLOOR, None, None, 0)
    x = np.frombuffer(b"".join(f for _, f in recorded), dtype="<i2")
    if fmt.channels > 1:
        x = x[::fmt.channels]
    x = x.astype(np.float64)
    t0 = recorded[0][0]
    clipped = int(np.count_nonzero(np.abs(x) >= 32767))
    # onset: the first 5 ms window whose RMS is 20 dB above the noise before the tone
    lead = x[: max(1, int((tone_start_us - t0) / 1e6 * fmt.rate))]
    noise = float(np.sqrt(np.mean(lead ** 2))) if lead.size else 0.0
    win = max(1, fmt.rate // 200)
    nwin = x.size // win
    rms = np.sqrt(np.mean(x[: nwin * win].reshape(nwin, win) ** 2, axis=1)) if nwin else np.zeros(0)
    threshold = max(noise * 10, 32767 * 10 ** (MIN_LEVEL_DBFS / 20))
    loud = np.nonzero(rms > threshold)[0]
    noise_db = round(dbfs(noise), 1)
    if loud.size == 0:
        return SelftestResult(False, f"the tone did not come back (nothing above {dbfs(threshold):.0f} dBFS "
                                     f"was recorded; noise floor {noise_db} dBFS)",
                              round(dbfs(float(np.sqrt(np.mean(x ** 2)))), 1), round(dbfs(float(np.abs(x).max())), 1),
                              noise_db, None, None, clipped)
    onset = int(loud[0]) * win
    end = (int(loud[-1]) + 1) * win
    seg = x[onset:end]
    core = seg[len(seg) // 10: len(seg) - len(seg) // 10] if len(seg) > 20 else seg
    level = round(dbfs(float(np.sqrt(np.mean(core ** 2)))), 1)
    peak = round(dbfs(float(np.abs(core).max())), 1)
    spec = np.abs(np.fft.rfft(core * np.hanning(core.size)))
    k = int(np.argmax(spec[1:])) + 1
    if 1 <= k < spec.size - 1:  # parabolic interpolation between bins
        a, b, c = np.log(spec[k - 1] + 1e-12), np.log(spec[k] + 1e-12), np.log(spec[k + 1] + 1e-12)
        k = k + 0.5 * (a - c) / (a - 2 * b + c)
    freq = round(float(k) * fmt.rate / core.size, 1)
    latency = round((t0 + onset / fmt.rate * 1e6 - tone_start_us) / 1000.0, 1)
    ok, reason = True, "the tone came back"
    if abs(freq - frequency_hz) > FREQ_TOLERANCE * frequency_hz:
        ok, reason = False, f"recorded {freq:.0f} Hz, played {frequency_hz:.0f} Hz (noise or another sound?)"
    elif clipped:
        reason = f"the tone came back, but {clipped} samples clipped (lower audio.capture_gain_db)"
    return SelftestResult(ok, reason, level, peak, noise_db, freq, latency, clipped)


async def record_playback(source: Any, sink: Any, frames: list[bytes], capture_gain_db: float,
                          playback_gain_db: float, lead_s: float = LEAD_S,
                          tail_s: float = TAIL_S) -> tuple[list[tuple[int, bytes]], int]:
    """Play silence, ``frames``, silence while recording everything; (recording, tone hand-off µs)."""
    fmt: AudioFormat = source.format
    lead = [bytes(fmt.frame_bytes)] * max(1, int(lead_s / fmt.frame_s))
    tail = [bytes(fmt.frame_bytes)] * max(1, int(tail_s / fmt.frame_s))
    recorded: list[tuple[int, bytes]] = []
    tone_start = [0]
    done = trio.Event()

    async def play() -> None:
        for f in lead:
            await sink.write(f)
        tone_start[0] = monotonic_us()
        for f in frames:
            await sink.write(apply_gain(f, playback_gain_db))
        for f in tail:
            await sink.write(f)
        done.set()

    async def capture(scope: trio.CancelScope) -> None:
        while True:
            fr = await source.read()
            recorded.append((fr.timestamp_us, apply_gain(fr.pcm, capture_gain_db)))
            if done.is_set():
                scope.cancel()

    async with trio.open_nursery() as n:
        n.start_soon(capture, n.cancel_scope)
        n.start_soon(play)
    return recorded, tone_start[0]


def _open_devices(cfg: AgentConfig) -> tuple[Any, Any, str]:
    if cfg.audio.backend == "fake":
        from hw.audio.fake import Loopback

        lb = Loopback(audio_format(cfg.audio), buffer_frames=cfg.audio.periods)
        return lb.source, lb.sink, "fake devices (a simulated speaker-to-microphone loopback)"
    return (open_audio_source(cfg.audio), open_audio_sink(cfg.audio),
            f"ALSA: playback {cfg.audio.playback_device!r}, capture {cfg.audio.capture_device!r}")


async def run_selftest(cfg: AgentConfig, seconds: float = 2.0, frequency_hz: float = 1000.0,
                       out: Callable[[str], None] = print) -> int:
    """Run the test and print the outcome; the exit status (0 = the tone came back)."""
    if not 0.1 <= seconds <= 30:
        out("selftest: --seconds must be within 0.1-30")
        return 2
    source, sink, what = _open_devices(cfg)
    fmt: AudioFormat = source.format
    if not 20 <= frequency_hz < fmt.rate / 2:
        out(f"selftest: --frequency must be within 20 Hz and {fmt.rate // 2} Hz (half the rate)")
        return 2
    out(f"selftest: {what}; {frequency_hz:g} Hz for {seconds:g} s, gains capture "
        f"{cfg.audio.capture_gain_db:+g} dB, playback {cfg.audio.playback_gain_db:+g} dB")
    async with AsyncExitStack() as stack:
        for dev, kind, name in ((source, "capture", cfg.audio.capture_device),
                                (sink, "playback", cfg.audio.playback_device)):
            try:
                await stack.enter_async_context(dev)
            except Exception as exc:  # device errors are many types (ALSA, OS)
                out(f"selftest: FAIL: cannot open the {kind} device {name!r}: {exc}")
                return 1
        recorded, start_us = await record_playback(source, sink, tone(fmt, frequency_hz, seconds),
                                                   cfg.audio.capture_gain_db, cfg.audio.playback_gain_db)
    r = analyse(fmt, recorded, start_us, frequency_hz)
    freq = f"{r.frequency_hz:g} Hz" if r.frequency_hz is not None else "-"
    lat = f"{r.latency_ms:g} ms" if r.latency_ms is not None else "-"
    out(f"  level {r.level_dbfs:g} dBFS rms, peak {r.peak_dbfs:g} dBFS, noise floor {r.noise_dbfs:g} dBFS, "
        f"{r.clipped} clipped")
    out(f"  frequency found {freq} (played {frequency_hz:g} Hz), latency {lat} (hand-off to the "
        "sink until the tone is heard in the capture)")
    out(f"selftest: {'PASS' if r.ok else 'FAIL'}: {r.reason}")
    if not r.ok and cfg.audio.backend == "alsa":
        out("  (a real sound card needs a path from speaker to microphone: hold them close, or use a "
            "loopback cable; stop the agent first: systemctl stop avi-agent)")
    sys.stdout.flush()
    return 0 if r.ok else 1
