"""Audio edge: ``AudioSource``/``AudioSink`` Protocols, ALSA devices and simulating fakes.

``AlsaCapture``/``AlsaPlayback`` are imported lazily so that the fakes work without
pyalsaaudio installed.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from hw.audio.base import AudioFormat, AudioFrame, AudioSink, AudioSource, AudioStats, monotonic_us
from hw.audio.errors import AudioDeviceError, DeviceClosedError, DeviceNotFoundError, FormatNotSupportedError
from hw.audio.factory import audio_format, open_audio_sink, open_audio_source
from hw.audio.fake import NullSink, SilenceSource, ToneSource, WavSink, WavSource, XrunInjector

if TYPE_CHECKING:
    from hw.audio.alsa import AlsaCapture, AlsaPlayback

__all__ = [
    "AudioFormat", "AudioFrame", "AudioStats", "AudioSource", "AudioSink", "monotonic_us",
    "AudioDeviceError", "DeviceClosedError", "DeviceNotFoundError", "FormatNotSupportedError",
    "AlsaCapture", "AlsaPlayback",
    "ToneSource", "WavSource", "SilenceSource", "WavSink", "NullSink", "XrunInjector",
    "audio_format", "open_audio_source", "open_audio_sink",
]


def __getattr__(name: str) -> Any:
    if name in ("AlsaCapture", "AlsaPlayback"):
        from hw.audio import alsa

        return getattr(alsa, name)
    raise AttributeError(f"module 'hw.audio' has no attribute {name!r}")
