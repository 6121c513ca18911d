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

import numpy as np

__all__ = ["HARVARD", "RATE", "make_speech_wav", "read_wav", "write_wav", "align", "score",
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
    of silence around it (deterministic: same text, same samples)."""
    raw = path.with_suffix(".espeak.wav")
    subprocess.run(["espeak-ng", "-v", "en-us", "-s", "150", "-w", str(raw), text], check=True,
                   capture_output=True, timeout=60)
    subprocess.run(["sox", str(raw), "-r", str(RATE), "-c", "1", "-b", "16", "-e", "signed-integer",
                    str(path), "pad", str(lead_s), str(tail_s)], check=True, capture_output=True, timeout=60)
    raw.unlink(missing_ok=True)
    return path


def read_wav(path: Path) -> np.ndarray:
    with wave.open(str(path)) as w:
        if w.getsampwidth() != 2 or w.getnchannels() != 1:
            raise ValueError(f"{path}: expected mono S16LE, got {w.getnchannels()} ch x {w.getsampwidth()} B")
        return np.frombuffer(w.readframes(w.getnframes()), dtype="<i2").copy()


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


def align(ref: np.ndarray, deg: np.ndarray, rate: int = RATE) -> np.ndarray:
    """The part of ``deg`` (a recording that contains ``ref`` somewhere, possibly a little
    stretched) that lines up with ``ref``: the offset of best cross-correlation of the envelopes,
    then ``len(ref)`` samples from there (zero-padded at the end)."""
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
