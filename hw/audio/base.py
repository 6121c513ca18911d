"""The audio edge as the agent sees it: frames, stats, and the two Protocols.

Frames are PCM S16_LE, interleaved, fixed size (default 16 kHz mono 20 ms = 320 samples
= 640 bytes). A captured frame carries the CLOCK_MONOTONIC time (microseconds, from
``time.monotonic_ns() // 1000``) of its first sample, so timestamps from different
processes on one machine compare directly.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from types import TracebackType
from typing import Literal, Protocol, Self, runtime_checkable

__all__ = [
    "AudioFormat",
    "AudioFrame",
    "AudioStats",
    "AudioSource",
    "AudioSink",
    "DeviceState",
    "monotonic_us",
]

DeviceState = Literal["closed", "open", "recovering"]


def monotonic_us() -> int:
    """CLOCK_MONOTONIC in microseconds (comparable across processes on one machine)."""
    return time.monotonic_ns() // 1000


@dataclass(frozen=True, slots=True)
class AudioFormat:
    """S16_LE interleaved PCM at ``rate`` Hz, ``channels`` channels, ``frame_ms`` per frame."""

    rate: int = 16000
    channels: int = 1
    frame_ms: int = 20

    def __post_init__(self) -> None:
        if self.rate <= 0 or self.channels <= 0 or self.frame_ms <= 0:
            raise ValueError(f"invalid audio format {self}")
        if (self.rate * self.frame_ms) % 1000:
            raise ValueError(f"frame_ms={self.frame_ms} at rate={self.rate} is not whole samples")

    @property
    def frame_samples(self) -> int:
        """Samples per channel in one frame (320 for the default)."""
        return self.rate * self.frame_ms // 1000

    @property
    def bytes_per_sample_frame(self) -> int:
        """Bytes for one sample of every channel."""
        return 2 * self.channels

    @property
    def frame_bytes(self) -> int:
        """Bytes in one frame (640 for the default)."""
        return self.frame_samples * self.bytes_per_sample_frame

    @property
    def frame_s(self) -> float:
        """Duration of one frame in seconds."""
        return self.frame_ms / 1000.0

    @property
    def frame_us(self) -> int:
        """Duration of one frame in microseconds."""
        return self.frame_ms * 1000

    def duration_s(self, nbytes: int) -> float:
        """Playing time of ``nbytes`` of PCM in this format."""
        return nbytes / (self.rate * self.bytes_per_sample_frame)


@dataclass(frozen=True, slots=True)
class AudioFrame:
    """One frame of S16_LE PCM and the monotonic time (µs) its first sample was captured."""

    pcm: bytes
    timestamp_us: int


@dataclass(frozen=True, slots=True)
class AudioStats:
    """Snapshot of a device's counters (trio ``statistics()`` habit).

    ``frames``: frames delivered (source) or accepted (sink).
    ``xruns``: overruns (capture) / underruns (playback) detected and recovered.
    ``dropped``: frames lost (to an xrun, a full buffer, or a device outage).
    ``device_errors``: run-time device failures (e.g. USB card unplugged).
    ``reopens``: successful re-opens after such a failure.
    """

    frames: int = 0
    xruns: int = 0
    dropped: int = 0
    device_errors: int = 0
    reopens: int = 0
    state: DeviceState = "closed"


class OpenCloseContext:
    """`async with device:` for the devices here, which define `open()` and `aclose()`."""

    async def __aenter__(self) -> Self:
        await self.open()  # type: ignore[attr-defined]
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()  # type: ignore[attr-defined]


@runtime_checkable
class AudioSource(Protocol):
    """Something that captures audio: a microphone, a WAV file, a tone."""

    @property
    def format(self) -> AudioFormat: ...

    async def open(self) -> None:
        """Acquire the device. Raises ``hw.audio.AudioDeviceError`` subclasses."""
        ...

    async def aclose(self) -> None:
        """Release the device; idempotent."""
        ...

    async def __aenter__(self) -> Self: ...

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None: ...

    async def read(self) -> AudioFrame:
        """Wait for and return the next frame (exactly ``format.frame_bytes`` bytes)."""
        ...

    async def stop(self) -> None:
        """Stop capturing until the next ``read`` (an idle node need not run its microphone 50
        times a second): what the device holds is discarded and the pause is not an overrun.
        The next ``read`` starts the device again; its first frame comes a frame period later."""
        ...

    def stats(self) -> AudioStats: ...


@runtime_checkable
class AudioSink(Protocol):
    """Something that plays audio: a speaker, a WAV file, nothing."""

    @property
    def format(self) -> AudioFormat: ...

    async def open(self) -> None: ...

    async def aclose(self) -> None: ...

    async def __aenter__(self) -> Self: ...

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None: ...

    async def write(self, pcm: bytes) -> None:
        """Queue ``pcm`` for playing; waits while the device buffer is full (real-time pace).

        ``len(pcm)`` must be a multiple of ``format.bytes_per_sample_frame``.
        """
        ...

    async def stop(self) -> None:
        """Let what is queued play out, then stop the device until the next ``write`` (an idle
        node need not feed it silence 50 times a second): the pause is not an underrun, and the
        speaker is silent meanwhile. The next ``write`` starts the device again."""
        ...

    def stats(self) -> AudioStats: ...
