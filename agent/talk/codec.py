"""Audio codecs behind one small interface, looked up by the frame header's codec id.

A codec instance is per stream and per direction: decoders may keep state between frames
(a compressed codec's predictor, the concealment's memory of the last frame), so the
receiver makes one decoder per incoming stream and the sender one encoder per talk.

Adding a compressed codec (Opus is id 2 on the wire) means writing a class with this
shape and calling `register_codec`; the stream logic only sees `Codec`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol, runtime_checkable

import numpy as np

from hw.audio.base import AudioFormat

__all__ = ["Codec", "CodecError", "PcmS16le", "PCM_S16LE", "register_codec", "make_codec",
           "known_codecs"]

PCM_S16LE = 1  # the frame header's codec field for raw PCM S16_LE


class CodecError(ValueError):
    """A payload this codec cannot decode (wrong size, corrupt)."""


@runtime_checkable
class Codec(Protocol):
    """One direction of one stream: PCM frames (S16_LE, the stream's format) in and out."""

    @property
    def id(self) -> int:
        """The codec id carried in the frame header."""
        ...

    def encode(self, pcm: bytes) -> bytes:
        """One frame of PCM to one payload."""
        ...

    def decode(self, payload: bytes) -> bytes:
        """One payload to one frame of PCM; raises `CodecError` for a bad payload."""
        ...

    def conceal(self) -> bytes:
        """One frame of PCM standing in for a lost frame (called once per missing frame)."""
        ...


class PcmS16le:
    """Raw S16_LE PCM: the payload is the frame. Concealment repeats the last frame, faded:
    the first missing frame fades from full to half level, the second from half to nothing,
    and any further ones are silence (a repeated 20 ms buzz is worse than a short gap)."""

    id = PCM_S16LE
    FADE_FRAMES = 2

    def __init__(self, fmt: AudioFormat | None = None) -> None:
        self.format = fmt or AudioFormat()
        self._silence = bytes(self.format.frame_bytes)
        self._last: np.ndarray | None = None
        self._run = 0
        n = self.format.frame_samples
        # gain ramps per concealed frame, one gain per sample (repeated over channels)
        steps = np.linspace(1.0, 0.0, self.FADE_FRAMES * n + 1)
        self._ramps = [np.repeat(steps[i * n:(i + 1) * n], self.format.channels)
                       for i in range(self.FADE_FRAMES)]

    def encode(self, pcm: bytes) -> bytes:
        if len(pcm) != self.format.frame_bytes:
            raise CodecError(f"a frame is {self.format.frame_bytes} bytes, got {len(pcm)}")
        return bytes(pcm)

    def decode(self, payload: bytes) -> bytes:
        if len(payload) != self.format.frame_bytes:
            raise CodecError(f"PCM payload of {len(payload)} bytes, expected {self.format.frame_bytes}")
        self._last = np.frombuffer(payload, dtype="<i2")
        self._run = 0
        return bytes(payload)

    def conceal(self) -> bytes:
        run, self._run = self._run, self._run + 1
        if self._last is None or run >= self.FADE_FRAMES:
            return self._silence
        faded = self._last.astype(np.float32) * self._ramps[run]
        return np.rint(faded).astype("<i2").tobytes()


CodecFactory = Callable[[AudioFormat], Codec]
_REGISTRY: dict[int, CodecFactory] = {PCM_S16LE: PcmS16le}


def register_codec(codec_id: int, factory: CodecFactory) -> None:
    """Make `codec_id` decodable/encodable; `factory(format)` builds a fresh instance."""
    if not 0 <= codec_id <= 255:
        raise ValueError(f"codec id {codec_id} does not fit the header's u8")
    _REGISTRY[codec_id] = factory


def make_codec(codec_id: int, fmt: AudioFormat) -> Codec:
    """A new codec instance for `codec_id`; raises `CodecError` when none is registered."""
    try:
        factory = _REGISTRY[codec_id]
    except KeyError:
        raise CodecError(f"no codec registered for id {codec_id}") from None
    return factory(fmt)


def known_codecs() -> tuple[int, ...]:
    return tuple(sorted(_REGISTRY))
