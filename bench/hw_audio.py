"""CPU cost per second of audio for capture and playback: real ALSA path vs. fakes.

The ALSA path runs AlsaCapture/AlsaPlayback through alsa-lib's ``file`` plugin over
``null`` (a config this script writes; capture reads a file, playback writes /dev/null).
The null plugin does not run in real time, so the ALSA rows measure pure per-frame cost
(pyalsaaudio + worker-thread hand-off + our bookkeeping) as fast as it goes. The fakes
are paced in real time, so their rows take wall time equal to the audio length.

    /work/main/.venv/bin/python bench/hw_audio.py [--alsa-seconds 60] [--fake-seconds 3]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import trio  # noqa: E402

from hw.audio import AudioFormat, NullSink, ToneSource  # noqa: E402

FMT = AudioFormat()


def write_alsa_conf(tmp: Path, audio_s: float) -> None:
    infile = tmp / "in.raw"
    infile.write_bytes(os.urandom(int(audio_s * FMT.rate) * FMT.bytes_per_sample_frame))
    conf = tmp / "asound.conf"
    conf.write_text(
        "</usr/share/alsa/alsa.conf>\n"
        f'pcm.bench_mic {{ type file; slave.pcm "null"; file "/dev/null"; infile "{infile}"; format "raw" }}\n'
        'pcm.bench_spk { type file; slave.pcm "null"; file "/dev/null"; format "raw" }\n'
    )
    os.environ["ALSA_CONFIG_PATH"] = str(conf)


async def run_capture(src: object, frames: int) -> None:
    async with src:  # type: ignore[attr-defined]
        for _ in range(frames):
            await src.read()  # type: ignore[attr-defined]


async def run_playback(sink: object, frames: int) -> None:
    buf = bytes(FMT.frame_bytes)
    async with sink:  # type: ignore[attr-defined]
        for _ in range(frames):
            await sink.write(buf)  # type: ignore[attr-defined]


def measure(fn, *args: object) -> tuple[float, float]:
    c0, w0 = time.process_time(), time.monotonic()
    trio.run(fn, *args)
    return time.process_time() - c0, time.monotonic() - w0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--alsa-seconds", type=float, default=60.0)
    ap.add_argument("--fake-seconds", type=float, default=3.0)
    args = ap.parse_args()
    rows: list[tuple[str, str, float, float, float]] = []
    with tempfile.TemporaryDirectory() as d:
        write_alsa_conf(Path(d), args.alsa_seconds)
        from hw.audio.alsa import AlsaCapture, AlsaPlayback

        n = int(args.alsa_seconds / FMT.frame_s)
        cpu, wall = measure(run_capture, AlsaCapture("bench_mic", FMT), n)
        rows.append(("capture", "alsa file/null", args.alsa_seconds, cpu, wall))
        cpu, wall = measure(run_playback, AlsaPlayback("bench_spk", FMT), n)
        rows.append(("playback", "alsa file/null", args.alsa_seconds, cpu, wall))
    n = int(args.fake_seconds / FMT.frame_s)
    cpu, wall = measure(run_capture, ToneSource(FMT, frequency_hz=440), n)
    rows.append(("capture", "fake ToneSource", args.fake_seconds, cpu, wall))
    cpu, wall = measure(run_playback, NullSink(FMT), n)
    rows.append(("playback", "fake NullSink", args.fake_seconds, cpu, wall))

    print(f"format: S16_LE {FMT.rate} Hz {FMT.channels} ch, {FMT.frame_ms} ms frames ({FMT.frame_bytes} bytes)")
    print(f"{'direction':<10} {'path':<16} {'audio s':>8} {'wall s':>8} {'CPU s':>8} {'CPU s / audio s':>16}")
    for direction, path, audio, cpu, wall in rows:
        print(f"{direction:<10} {path:<16} {audio:>8.1f} {wall:>8.2f} {cpu:>8.3f} {cpu / audio:>16.5f}")


if __name__ == "__main__":
    main()
