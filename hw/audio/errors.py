"""Errors raised by the audio edge. Open-time errors are fatal; run-time ones are retried."""

from __future__ import annotations

__all__ = ["AudioDeviceError", "DeviceNotFoundError", "FormatNotSupportedError", "DeviceClosedError"]


class AudioDeviceError(Exception):
    """Base class for audio device failures."""


class DeviceNotFoundError(AudioDeviceError):
    """The named device does not exist or is busy; the message lists the PCMs that exist."""

    def __init__(self, device: str, reason: str, available: list[str]) -> None:
        self.device = device
        self.reason = reason
        self.available = available
        listing = ", ".join(available) if available else "(none)"
        super().__init__(f"cannot open ALSA device {device!r}: {reason}. Available PCMs: {listing}")


class FormatNotSupportedError(AudioDeviceError):
    """The device would not take the asked format; the message names asked vs. got."""

    def __init__(self, device: str, asked: str, got: str, offered: str = "") -> None:
        self.device = device
        self.asked = asked
        self.got = got
        self.offered = offered
        msg = f"ALSA device {device!r} refused the format: asked {asked}, device gave {got}"
        if offered:
            msg += f"; device offers {offered}"
        super().__init__(msg)


class DeviceClosedError(AudioDeviceError):
    """read()/write() on a device that is not open."""
