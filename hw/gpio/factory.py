"""Build the button and LED an ``hw.config.GpioConfig`` names (the models know nothing of this).

``RPi.GPIO`` is imported only when a ``rpi`` device is opened, so the fakes work anywhere.
"""

from __future__ import annotations

from hw.config import GpioConfig
from hw.gpio.base import Button, Led
from hw.gpio.fake import FakeButton, FakeLed

__all__ = ["open_button", "open_led"]


def open_button(cfg: GpioConfig) -> Button:
    """Build (not yet open) the push-to-talk button named by ``cfg``; use it with ``async with``."""
    if cfg.backend == "rpi":
        from hw.gpio.rpi import RpiButton

        return RpiButton(cfg.button_pin, pull_up=cfg.pull_up, active_low=cfg.active_low,
                         debounce_s=cfg.debounce_ms / 1000, long_press_s=cfg.long_press_s)
    return FakeButton([(p.at_s, p.duration_s) for p in cfg.fake_presses],
                      debounce_s=cfg.debounce_ms / 1000, long_press_s=cfg.long_press_s,
                      bounce_s=cfg.fake_bounce_ms / 1000)


def open_led(cfg: GpioConfig) -> Led:
    """Build (not yet open) the status LED named by ``cfg``; use it with ``async with``."""
    if cfg.backend == "rpi":
        from hw.gpio.rpi import RpiLed

        return RpiLed(cfg.led_pin, active_low=cfg.led_active_low)
    return FakeLed()
