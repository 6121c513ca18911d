"""Build GPIO devices from ``hw.config.GpioConfig`` (used by ``hw.config.open_button/led``)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from hw.gpio.base import Button, Led
from hw.gpio.fake import FakeButton, FakeLed

if TYPE_CHECKING:
    from hw.config import GpioConfig

__all__ = ["make_button", "make_led"]


def make_button(cfg: "GpioConfig") -> Button:
    if cfg.backend == "rpi":
        from hw.gpio.rpi import RpiButton

        return RpiButton(cfg.button_pin, pull_up=cfg.pull_up, active_low=cfg.active_low,
                         debounce_s=cfg.debounce_ms / 1000, long_press_s=cfg.long_press_s)
    return FakeButton([(p.at_s, p.duration_s) for p in cfg.fake_presses],
                      debounce_s=cfg.debounce_ms / 1000, long_press_s=cfg.long_press_s,
                      bounce_s=cfg.fake_bounce_ms / 1000)


def make_led(cfg: "GpioConfig") -> Led:
    if cfg.backend == "rpi":
        from hw.gpio.rpi import RpiLed

        return RpiLed(cfg.led_pin, active_low=cfg.led_active_low)
    return FakeLed()
