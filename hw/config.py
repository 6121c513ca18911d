"""Pydantic models that select and configure the device backends.

The agent's config embeds these as ``audio: AudioConfig`` and ``gpio: GpioConfig``.
Every model forbids unknown fields so a typo is a validation error naming the field.
Models only: the factories that build what a model names are ``hw.audio.factory``
(``open_audio_source``/``open_audio_sink``) and ``hw.gpio.factory`` (``open_button``/``open_led``),
also exported from ``hw.audio`` and ``hw.gpio``. They import the models, never the other way round.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

__all__ = [
    "AudioConfig",
    "FakeSourceConfig",
    "FakeSinkConfig",
    "XrunInjectionConfig",
    "GpioConfig",
    "PressConfig",
]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class XrunInjectionConfig(_Strict):
    """Simulated overruns/underruns for the fake backend (so recovery paths run in tests).

    ``at_frames`` injects an xrun at those frame indices; ``rate`` injects one with that
    probability per frame (seeded by ``seed`` for reproducible runs).
    """

    at_frames: list[Annotated[int, Field(ge=0)]] = Field(default_factory=list)
    rate: float = Field(default=0.0, ge=0.0, le=1.0)
    seed: int | None = None


class FakeSourceConfig(_Strict):
    """What the fake capture device produces."""

    kind: Literal["tone", "wav", "silence"] = "tone"
    frequency_hz: float = Field(default=440.0, gt=0.0, le=20000.0)
    level: float = Field(default=0.5, ge=0.0, le=1.0, description="peak amplitude, 1.0 = full scale")
    path: Path | None = None
    loop: bool = False

    @model_validator(mode="after")
    def _wav_needs_path(self) -> "FakeSourceConfig":
        if self.kind == "wav" and self.path is None:
            raise ValueError("path is required when kind is 'wav'")
        return self


class FakeSinkConfig(_Strict):
    """Where the fake playback device puts what it is given."""

    kind: Literal["wav", "null"] = "null"
    path: Path | None = None

    @model_validator(mode="after")
    def _wav_needs_path(self) -> "FakeSinkConfig":
        if self.kind == "wav" and self.path is None:
            raise ValueError("path is required when kind is 'wav'")
        return self


class AudioConfig(_Strict):
    """Audio backend: ``alsa`` (pyalsaaudio) or ``fake`` (simulated, paced in real time)."""

    backend: Literal["alsa", "fake"] = "fake"
    capture_device: str = Field(default="default", min_length=1)
    playback_device: str = Field(default="default", min_length=1)
    rate: int = Field(default=16000, ge=8000, le=192000)
    channels: int = Field(default=1, ge=1, le=8)
    frame_ms: int = Field(default=20, ge=5, le=200, description="frame (and ALSA period) length")
    periods: int = Field(default=4, ge=2, le=32, description="ALSA buffer size in periods")
    reopen_interval_s: float = Field(default=1.0, gt=0.0, le=60.0,
                                     description="retry interval when a device vanishes")
    capture_gain_db: float = Field(default=0.0, ge=-60.0, le=30.0,
                                   description="applied to the microphone, saturating; SIGHUP reloads it")
    playback_gain_db: float = Field(default=0.0, ge=-60.0, le=30.0,
                                    description="applied to what is played, saturating; SIGHUP reloads it")
    fake_source: FakeSourceConfig = Field(default_factory=FakeSourceConfig)
    fake_sink: FakeSinkConfig = Field(default_factory=FakeSinkConfig)
    xrun_injection: XrunInjectionConfig = Field(default_factory=XrunInjectionConfig)

    @model_validator(mode="after")
    def _whole_samples(self) -> "AudioConfig":
        if (self.rate * self.frame_ms) % 1000:
            raise ValueError(
                f"frame_ms={self.frame_ms} at rate={self.rate} is not a whole number of samples"
            )
        return self

    @property
    def frame_samples(self) -> int:
        """Samples per channel in one frame."""
        return self.rate * self.frame_ms // 1000

    @property
    def frame_bytes(self) -> int:
        """Bytes in one S16_LE frame."""
        return self.frame_samples * self.channels * 2


class PressConfig(_Strict):
    """One scripted press of the fake button: ``at_s`` after start, held ``duration_s``."""

    at_s: float = Field(ge=0.0, le=3600.0)
    duration_s: float = Field(gt=0.0, le=3600.0)


class GpioConfig(_Strict):
    """GPIO backend: ``rpi`` (RPi.GPIO or rpi-lgpio) or ``fake`` (scripted presses)."""

    backend: Literal["rpi", "fake"] = "fake"
    button_pin: int = Field(default=17, ge=0, le=27, description="BCM numbering")
    led_pin: int = Field(default=27, ge=0, le=27, description="BCM numbering")
    pull_up: bool = True
    active_low: bool = True
    led_active_low: bool = False
    debounce_ms: float = Field(default=20.0, ge=0.0, le=1000.0)
    long_press_s: float = Field(default=1.0, gt=0.0, le=60.0)
    fake_presses: list[PressConfig] = Field(default_factory=list)
    fake_bounce_ms: float = Field(default=3.0, ge=0.0, le=100.0,
                                  description="length of simulated contact bounce")

    @model_validator(mode="after")
    def _distinct_pins(self) -> "GpioConfig":
        if self.button_pin == self.led_pin:
            raise ValueError(f"button_pin and led_pin are both {self.button_pin}")
        return self
