"""CPU cost of mixing talkers into one playback frame (`agent.talk.mixer.Mixer`), per 20 ms frame.

Baseline, measured in the same run: the floor of the same arithmetic in plain numpy (stack the
frames as int32, sum, clip, back to int16 bytes) with nothing else around it. CPU time of this
process (``time.process_time``), so other processes' load does not count. Goal: mixing 8
talkers takes under 2 ms of CPU per frame (a tenth of the frame's 20 ms; it was asserted in
tests/talk/test_units.py until speed checks moved here; ~0.013 ms measured there).

    /work/main/.venv/bin/python bench/mixer.py [--frames 2000]
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402

from agent.talk.mixer import Mixer  # noqa: E402
from hw.audio import AudioFormat  # noqa: E402

FMT = AudioFormat()
GOAL_MS = 2.0  # CPU per 20 ms frame with 8 talkers


def tone(freq: float, level: float = 0.5) -> bytes:
    t = np.arange(FMT.frame_samples) / FMT.rate
    return np.rint(level * 32767 * np.sin(2 * np.pi * freq * t)).astype("<i2").tobytes()


def floor(frames: Sequence[bytes]) -> bytes:
    acc = np.stack([np.frombuffer(f, dtype="<i2") for f in frames]).astype(np.int32).sum(axis=0)
    return np.clip(acc, -32768, 32767).astype("<i2").tobytes()


def cpu_ms_per_frame(fn: Callable[[Sequence[bytes]], bytes], frames: Sequence[bytes], n: int) -> float:
    fn(frames)  # warm up
    t = time.process_time()
    for _ in range(n):
        fn(frames)
    return (time.process_time() - t) / n * 1000


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--frames", type=int, default=2000, help="frames mixed per row (default 2000)")
    args = ap.parse_args()
    mixer = Mixer(FMT.frame_bytes)
    print(f"mixing {FMT.frame_ms} ms frames ({FMT.frame_bytes} B), CPU ms per frame, {args.frames} frames a row")
    print(f"{'talkers':>7}  {'Mixer.mix':>10}  {'numpy floor':>11}  {'ratio':>6}  goal")
    ok = True
    for talkers in (2, 4, 8):
        frames = [tone(100.0 * (i + 1)) for i in range(talkers)]
        assert mixer.mix(frames) == floor(frames)  # same result: the floor does the same work
        ours = cpu_ms_per_frame(mixer.mix, frames, args.frames)
        base = cpu_ms_per_frame(floor, frames, args.frames)
        goal = ""
        if talkers == 8:
            met = ours < GOAL_MS
            ok &= met
            goal = f"< {GOAL_MS:g} ms: {'met' if met else 'NOT MET'}"
        print(f"{talkers:>7}  {ours:>10.4f}  {base:>11.4f}  {ours / base if base else float('nan'):>6.2f}  {goal}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
