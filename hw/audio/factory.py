"""Build the audio devices an ``hw.config.AudioConfig`` names (the models know nothing of this).

The ALSA classes are imported only when the config asks for them, so the fake backend works
without pyalsaaudio installed.
"""

from __future__ import annotations

from hw.audio.base import AudioFormat, AudioSink, AudioSource
from hw.audio.fake import NullSink, SilenceSource, ToneSource, WavSink, WavSource, XrunInjector
from hw.config import AudioConfig

__all__ = ["audio_format", "open_audio_source", "open_audio_sink"]


def audio_format(cfg: AudioConfig) -> AudioFormat:
    """The frame format a config asks for."""
    return AudioFormat(rate=cfg.rate, channels=cfg.channels, frame_ms=cfg.frame_ms)


def _injector(cfg: AudioConfig) -> XrunInjector:
    x = cfg.xrun_injection
    return XrunInjector(at_frames=x.at_frames, rate=x.rate, seed=x.seed)


def open_audio_source(cfg: AudioConfig) -> AudioSource:
    """Build (not yet open) the capture side named by ``cfg``; use it with ``async with``."""
    fmt = audio_format(cfg)
    if cfg.backend == "alsa":
        from hw.audio.alsa import AlsaCapture

        return AlsaCapture(cfg.capture_device, fmt, periods=cfg.periods,
                           reopen_interval_s=cfg.reopen_interval_s)
    src = cfg.fake_source
    if src.kind == "tone":
        return ToneSource(fmt, frequency_hz=src.frequency_hz, level=src.level,
                          buffer_frames=cfg.periods, xruns=_injector(cfg))
    if src.kind == "wav":
        assert src.path is not None  # enforced by the model
        return WavSource(src.path, fmt, loop=src.loop, buffer_frames=cfg.periods, xruns=_injector(cfg))
    return SilenceSource(fmt, buffer_frames=cfg.periods, xruns=_injector(cfg))


def open_audio_sink(cfg: AudioConfig) -> AudioSink:
    """Build (not yet open) the playback side named by ``cfg``; use it with ``async with``."""
    fmt = audio_format(cfg)
    if cfg.backend == "alsa":
        from hw.audio.alsa import AlsaPlayback

        return AlsaPlayback(cfg.playback_device, fmt, periods=cfg.periods,
                            reopen_interval_s=cfg.reopen_interval_s)
    sink = cfg.fake_sink
    if sink.kind == "wav":
        assert sink.path is not None  # enforced by the model
        return WavSink(sink.path, fmt, buffer_frames=cfg.periods, xruns=_injector(cfg))
    return NullSink(fmt, buffer_frames=cfg.periods, xruns=_injector(cfg))
