"""Fake audio devices that behave like hardware: paced in real time by trio's clock.

Sources deliver one frame per frame period; a consumer that falls more than the
device buffer behind gets an overrun (frames lost, counted) exactly as ALSA would.
Sinks consume at playing speed: ``write`` waits while the simulated device buffer is
full, and a producer that is too slow shows up as underruns. ``XrunInjector`` adds
xruns on a schedule or at a rate so recovery paths run in tests.
"""

from __future__ import annotations

import logging
import math
import random
import sys
import wave
from array import array
from collections.abc import Iterable
from pathlib import Path

import trio

from hw.audio.base import (AudioFormat, AudioFrame, AudioStats, DeviceState, OpenCloseContext,
                           monotonic_us)
from hw.audio.errors import AudioDeviceError, DeviceClosedError, FormatNotSupportedError

__all__ = [
    "XrunInjector",
    "ToneSource",
    "WavSource",
    "SilenceSource",
    "WavSink",
    "NullSink",
    "Loopback",
]

log = logging.getLogger("hw.audio.fake")


class XrunInjector:
    """Decides which frame indices suffer a simulated xrun.

    ``at_frames``: explicit frame indices (0-based, counted per device);
    ``rate``: probability per frame, drawn from ``random.Random(seed)``.
    """

    def __init__(self, at_frames: Iterable[int] = (), rate: float = 0.0, seed: int | None = None) -> None:
        if not 0.0 <= rate <= 1.0:
            raise ValueError(f"xrun rate must be within [0, 1], got {rate}")
        self._at = frozenset(at_frames)
        self._rate = rate
        self._rng = random.Random(seed)

    def hit(self, index: int) -> bool:
        """True when frame ``index`` should suffer an xrun."""
        if index in self._at:
            return True
        return self._rate > 0.0 and self._rng.random() < self._rate


class _Counters:
    def __init__(self) -> None:
        self.frames = 0
        self.xruns = 0
        self.dropped = 0
        self.state: DeviceState = "closed"

    def snapshot(self) -> AudioStats:
        return AudioStats(frames=self.frames, xruns=self.xruns, dropped=self.dropped, state=self.state)


class _PacedSource(OpenCloseContext):
    """Real-time pacing, overrun simulation and injection shared by the fake sources."""

    kind = "fake"

    def __init__(
        self,
        fmt: AudioFormat | None = None,
        *,
        buffer_frames: int = 4,
        xruns: XrunInjector | None = None,
    ) -> None:
        if buffer_frames < 1:
            raise ValueError("buffer_frames must be >= 1")
        self._fmt = fmt or AudioFormat()
        self._buffer_frames = buffer_frames
        self._injector = xruns or XrunInjector()
        self._c = _Counters()
        self._origin = 0.0  # trio time of the start of frame 0 of the current run
        self._n = 0  # frames taken since _origin
        self._content = 0  # index of the next frame of content (advances over lost frames)
        self._t_open = 0.0
        self._mono_open = 0
        self._stopped = False  # stop() was called: the next read starts a new run

    @property
    def format(self) -> AudioFormat:
        return self._fmt

    async def open(self) -> None:
        await trio.lowlevel.checkpoint()  # even when there is nothing to load
        await self._load()
        self._t_open = self._origin = trio.current_time()
        self._mono_open = monotonic_us()
        self._n = 0
        self._content = 0
        self._stopped = False
        self._c.state = "open"

    async def stop(self) -> None:
        self._stopped = self._c.state == "open"
        await trio.lowlevel.checkpoint()

    async def aclose(self) -> None:
        self._c.state = "closed"
        await trio.lowlevel.checkpoint()  # (closed first: a cancelled close still closes)

    def stats(self) -> AudioStats:
        return self._c.snapshot()

    async def read(self) -> AudioFrame:
        if self._c.state != "open":
            raise DeviceClosedError(f"{type(self).__name__} is not open")
        fs = self._fmt.frame_s
        if self._stopped:
            # Stopped on purpose: the device starts again now (content goes on where it was).
            self._stopped = False
            self._origin, self._n = trio.current_time(), 0
        while True:
            start = self._origin + self._n * fs
            ready = start + fs
            now = trio.current_time()
            if now - ready > self._buffer_frames * fs:
                # The consumer fell behind the whole device buffer: overrun. ALSA stops the
                # stream; recovery (prepare) discards what was buffered and restarts now.
                lost = int((now - self._origin) / fs) - self._n
                self._c.xruns += 1
                self._c.dropped += lost
                self._content += lost
                self._origin, self._n = now, 0
                log.warning("%s: overrun (reader %.0f ms late), %d frames lost",
                            type(self).__name__, (now - ready) * 1000, lost,
                            extra={"_summary": "audio-timing"})  # (the agent's log: one line a minute at most)
                continue
            await trio.sleep_until(ready)
            index = self._content
            self._content += 1
            self._n += 1
            if self._injector.hit(index):
                self._c.xruns += 1
                self._c.dropped += 1
                log.warning("%s: injected overrun at frame %d, frame lost", type(self).__name__, index)
                continue
            self._c.frames += 1
            ts = self._mono_open + round((start - self._t_open) * 1_000_000)
            return AudioFrame(self._render(index), ts)

    async def _load(self) -> None:
        """Prepare content (override)."""

    def _render(self, index: int) -> bytes:  # pragma: no cover - overridden
        raise NotImplementedError


def _interleave(mono: array, channels: int) -> bytes:
    if channels == 1:
        out = mono
    else:
        out = array("h", bytes(len(mono) * 2 * channels))
        for ch in range(channels):
            out[ch::channels] = mono
    if sys.byteorder != "little":
        out = array("h", out)
        out.byteswap()
    return out.tobytes()


class ToneSource(_PacedSource):
    """A sine of ``frequency_hz`` at peak ``level`` (1.0 = full scale) on every channel."""

    def __init__(
        self,
        fmt: AudioFormat | None = None,
        *,
        frequency_hz: float = 440.0,
        level: float = 0.5,
        buffer_frames: int = 4,
        xruns: XrunInjector | None = None,
    ) -> None:
        super().__init__(fmt, buffer_frames=buffer_frames, xruns=xruns)
        if not 0.0 <= level <= 1.0:
            raise ValueError(f"level must be within [0, 1], got {level}")
        if frequency_hz <= 0:
            raise ValueError(f"frequency_hz must be > 0, got {frequency_hz}")
        self.frequency_hz = frequency_hz
        self.level = level

    def _render(self, index: int) -> bytes:
        n = self._fmt.frame_samples
        first = index * n
        w = 2.0 * math.pi * self.frequency_hz / self._fmt.rate
        amp = self.level * 32767.0
        mono = array("h", (int(round(amp * math.sin(w * (first + i)))) for i in range(n)))
        return _interleave(mono, self._fmt.channels)


class SilenceSource(_PacedSource):
    """Digital silence, paced like a microphone."""

    def _render(self, index: int) -> bytes:
        return bytes(self._fmt.frame_bytes)


class WavSource(_PacedSource):
    """Plays a 16-bit PCM WAV file whose rate and channels match ``fmt``.

    With ``loop`` the file repeats; without, silence follows its end (like a quiet
    microphone) and ``exhausted`` becomes true. A final partial frame is zero-padded.
    """

    def __init__(
        self,
        path: str | Path,
        fmt: AudioFormat | None = None,
        *,
        loop: bool = False,
        buffer_frames: int = 4,
        xruns: XrunInjector | None = None,
    ) -> None:
        super().__init__(fmt, buffer_frames=buffer_frames, xruns=xruns)
        self.path = Path(path)
        self.loop = loop
        self._pcm = b""
        self._nframes = 0

    @property
    def exhausted(self) -> bool:
        """True once a non-looping source has delivered the whole file."""
        return not self.loop and self._content >= self._nframes

    async def _load(self) -> None:
        self._pcm = await trio.to_thread.run_sync(self._read_file)
        fb = self._fmt.frame_bytes
        pad = (-len(self._pcm)) % fb
        self._pcm += bytes(pad)
        self._nframes = len(self._pcm) // fb

    def _read_file(self) -> bytes:
        try:
            w = wave.open(str(self.path), "rb")
        except (OSError, EOFError, wave.Error) as e:
            raise AudioDeviceError(f"cannot open WAV source {str(self.path)!r}: {e}") from e
        with w:
            got = (w.getsampwidth(), w.getframerate(), w.getnchannels())
            want = (2, self._fmt.rate, self._fmt.channels)
            if got != want:
                raise FormatNotSupportedError(
                    str(self.path),
                    asked=f"S16_LE {want[1]} Hz {want[2]} ch",
                    got=f"{8 * got[0]}-bit {got[1]} Hz {got[2]} ch",
                )
            data = w.readframes(w.getnframes())
        if not data:
            raise AudioDeviceError(f"WAV source {str(self.path)!r} holds no audio")
        return data

    def _render(self, index: int) -> bytes:
        if index >= self._nframes:
            if not self.loop:
                return bytes(self._fmt.frame_bytes)
            index %= self._nframes
        fb = self._fmt.frame_bytes
        return self._pcm[index * fb : (index + 1) * fb]


class _PacedSink(OpenCloseContext):
    """Real-time consumption, underrun simulation and injection shared by the fake sinks."""

    def __init__(
        self,
        fmt: AudioFormat | None = None,
        *,
        buffer_frames: int = 4,
        xruns: XrunInjector | None = None,
    ) -> None:
        if buffer_frames < 1:
            raise ValueError("buffer_frames must be >= 1")
        self._fmt = fmt or AudioFormat()
        self._buffer_s = buffer_frames * self._fmt.frame_s
        self._injector = xruns or XrunInjector()
        self._c = _Counters()
        self._played_until: float | None = None
        self._stopped_at: float | None = None  # stop() played out until then; silent since
        self._index = 0

    @property
    def format(self) -> AudioFormat:
        return self._fmt

    async def open(self) -> None:
        await trio.lowlevel.checkpoint()  # even when there is nothing to start
        await self._start()
        self._played_until = None
        self._stopped_at = None
        self._index = 0
        self._c.state = "open"

    async def stop(self) -> None:
        if self._c.state != "open" or self._stopped_at is not None:
            await trio.lowlevel.checkpoint()
            return
        now = trio.current_time()
        if self._played_until is not None and self._played_until > now:
            await trio.sleep_until(self._played_until)  # what is buffered plays out
        else:
            await trio.lowlevel.checkpoint()
        self._stopped_at = self._played_until if self._played_until is not None else now
        self._played_until = None

    async def _silent_since_stop(self) -> None:
        """A stopped speaker is silent: the time since ``stop`` is given to ``_gap``."""
        if self._stopped_at is not None:
            gap_s, self._stopped_at = trio.current_time() - self._stopped_at, None
            samples = round(gap_s * self._fmt.rate)
            if samples > 0:
                await self._gap(samples * self._fmt.bytes_per_sample_frame)

    async def aclose(self) -> None:
        if self._c.state == "closed":
            await trio.lowlevel.checkpoint()
            return
        self._c.state = "closed"
        try:
            # Like ALSA's close of a playback stream: let what is buffered play out.
            if self._played_until is not None and self._played_until > trio.current_time():
                await trio.sleep_until(self._played_until)
            await self._silent_since_stop()
        finally:
            with trio.CancelScope(shield=True):
                await self._finish()
        await trio.lowlevel.checkpoint()  # (closed first: a cancelled close still closes)

    def stats(self) -> AudioStats:
        return self._c.snapshot()

    async def write(self, pcm: bytes) -> None:
        if self._c.state != "open":
            raise DeviceClosedError(f"{type(self).__name__} is not open")
        if len(pcm) % self._fmt.bytes_per_sample_frame:
            raise ValueError(
                f"{len(pcm)} bytes is not a whole number of {self._fmt.channels}-channel S16_LE samples"
            )
        index = self._index
        self._index += 1
        if self._injector.hit(index):
            self._c.xruns += 1
            self._c.dropped += 1
            self._played_until = None  # the stream restarts after recovery
            log.warning("%s: injected underrun at frame %d, frame lost", type(self).__name__, index)
            await trio.lowlevel.checkpoint()
            return
        await self._silent_since_stop()
        now = trio.current_time()
        dur = self._fmt.duration_s(len(pcm))
        if self._played_until is None:
            self._played_until = now
        elif now > self._played_until:
            self._c.xruns += 1
            log.warning("%s: underrun (writer %.0f ms late)", type(self).__name__,
                        (now - self._played_until) * 1000, extra={"_summary": "audio-timing"})
            self._played_until = now
        room_at = self._played_until + dur - self._buffer_s
        if room_at > now:
            await trio.sleep_until(room_at)
        else:
            await trio.lowlevel.checkpoint()  # room in the buffer: no wait, still a checkpoint
        self._played_until += dur
        self._consume(pcm)
        self._c.frames += 1

    async def _start(self) -> None:
        """Acquire resources (override)."""

    async def _finish(self) -> None:
        """Release resources (override)."""

    def _consume(self, pcm: bytes) -> None:
        """Take the played PCM (override)."""

    async def _gap(self, nbytes: int) -> None:
        """``nbytes`` of silence the stopped device "played" (override)."""


class NullSink(_PacedSink):
    """Discards audio at playing speed."""


class WavSink(_PacedSink):
    """Records what it is given (not the underrun gaps) to a 16-bit WAV file, at playing speed,
    and silence for the time it was stopped (a stopped speaker is silent: the file keeps time)."""

    def __init__(
        self,
        path: str | Path,
        fmt: AudioFormat | None = None,
        *,
        buffer_frames: int = 4,
        xruns: XrunInjector | None = None,
    ) -> None:
        super().__init__(fmt, buffer_frames=buffer_frames, xruns=xruns)
        self.path = Path(path)
        self._wav: wave.Wave_write | None = None

    async def _start(self) -> None:
        self._wav = await trio.to_thread.run_sync(self._open_file)

    def _open_file(self) -> wave.Wave_write:
        try:
            w = wave.open(str(self.path), "wb")
        except OSError as e:
            raise AudioDeviceError(f"cannot create WAV sink {str(self.path)!r}: {e}") from e
        w.setsampwidth(2)
        w.setframerate(self._fmt.rate)
        w.setnchannels(self._fmt.channels)
        return w

    def _consume(self, pcm: bytes) -> None:
        assert self._wav is not None
        # wave buffers in the file object; a 640-byte append does not block meaningfully.
        self._wav.writeframesraw(pcm)

    async def _gap(self, nbytes: int) -> None:
        wav = self._wav
        if wav is not None:
            await trio.to_thread.run_sync(_write_silence, wav, nbytes)

    async def _finish(self) -> None:
        w, self._wav = self._wav, None
        if w is not None:
            await trio.to_thread.run_sync(w.close)


def _write_silence(wav: wave.Wave_write, nbytes: int, chunk: int = 1 << 20) -> None:
    while nbytes > 0:
        n = min(chunk, nbytes)
        wav.writeframesraw(bytes(n))
        nbytes -= n


class Loopback:
    """A simulated acoustic path: what ``sink`` plays comes back on ``source`` ``delay_s`` later
    (scaled by ``gain``), like a speaker next to a microphone. Both ends are paced like the other
    fakes; the path keeps the last ``history_s`` of played samples on an absolute sample clock
    (trio time × rate), so capture sees exactly what was playing at its own moment."""

    def __init__(self, fmt: AudioFormat | None = None, *, delay_s: float = 0.005, gain: float = 1.0,
                 history_s: float = 10.0, buffer_frames: int = 4) -> None:
        import numpy as np

        self.format = fmt or AudioFormat()
        self.delay_s = delay_s
        self.gain = gain
        n = int(history_s * self.format.rate) * self.format.channels
        self._ring = np.zeros(n, dtype=np.int16)
        self._stamp = np.full(n, -1, dtype=np.int64)  # which absolute sample each slot holds
        self.sink = _LoopbackSink(self, self.format, buffer_frames=buffer_frames)
        self.source = _LoopbackSource(self, self.format, buffer_frames=buffer_frames)

    def _put(self, t_start: float, pcm: bytes) -> None:
        import numpy as np

        x = np.frombuffer(pcm, dtype="<i2")
        first = round(t_start * self.format.rate) * self.format.channels
        idx = np.arange(first, first + x.size, dtype=np.int64)
        slots = idx % self._ring.size
        self._ring[slots] = x
        self._stamp[slots] = idx

    def _get(self, t_start: float, nbytes: int) -> bytes:
        import numpy as np

        n = nbytes // 2
        first = round((t_start - self.delay_s) * self.format.rate) * self.format.channels
        idx = np.arange(first, first + n, dtype=np.int64)
        slots = idx % self._ring.size
        x = np.where(self._stamp[slots] == idx, self._ring[slots], 0).astype(np.float64) * self.gain
        return np.clip(np.rint(x), -32768, 32767).astype("<i2").tobytes()


class _LoopbackSink(_PacedSink):
    def __init__(self, path: Loopback, fmt: AudioFormat, *, buffer_frames: int) -> None:
        super().__init__(fmt, buffer_frames=buffer_frames)
        self._path = path

    def _consume(self, pcm: bytes) -> None:
        assert self._played_until is not None
        self._path._put(self._played_until - self._fmt.duration_s(len(pcm)), pcm)


class _LoopbackSource(_PacedSource):
    def __init__(self, path: Loopback, fmt: AudioFormat, *, buffer_frames: int) -> None:
        super().__init__(fmt, buffer_frames=buffer_frames)
        self._path = path

    def _render(self, index: int) -> bytes:
        start = self._origin + (self._n - 1) * self._fmt.frame_s  # this frame's capture moment
        return self._path._get(start, self._fmt.frame_bytes)
