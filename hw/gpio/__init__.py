"""GPIO edge: ``Button``/``Led`` Protocols, RPi.GPIO backend, simulating fakes, debounce."""

from __future__ import annotations

from hw.gpio.base import PATTERNS, Button, ButtonStats, GpioUnavailableError, Led, LedPattern
from hw.gpio.debounce import ButtonEvent, ButtonLogic, Debouncer, debounce
from hw.gpio.factory import open_button, open_led
from hw.gpio.fake import FakeButton, FakeLed, Press
from hw.gpio.rpi import RpiButton, RpiLed

__all__ = [
    "Button", "Led", "ButtonEvent", "ButtonStats", "LedPattern", "PATTERNS", "GpioUnavailableError",
    "Debouncer", "ButtonLogic", "debounce",
    "FakeButton", "FakeLed", "Press", "RpiButton", "RpiLed", "open_button", "open_led",
]
