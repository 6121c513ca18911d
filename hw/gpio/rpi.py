"""Real GPIO over ``RPi.GPIO`` (or ``rpi-lgpio``, which provides the same module on a Pi 5).

BCM numbering. The button input uses the configured pull (up by default) and is
active-low by default (button to ground). RPi.GPIO calls our edge callback on its own
thread; the callback reads the level and hands it to trio with ``trio.from_thread``.
Debounce is ours (``hw.gpio.debounce``), not RPi.GPIO's ``bouncetime``. Pins are
cleaned up on exit. Off a Pi the import fails: we say so and point at the fake backend.
"""

from __future__ import annotations

import importlib
import logging
from typing import Any


from hw.gpio.base import GpioUnavailableError, LedPattern
from hw.gpio.core import ButtonCore, PatternLed

__all__ = ["RpiButton", "RpiLed", "load_gpio"]

log = logging.getLogger("hw.gpio.rpi")

_FAKE_HINT = "use the fake GPIO backend (gpio.backend = 'fake') when not on a Raspberry Pi"


def load_gpio() -> Any:
    """Import ``RPi.GPIO`` or raise GpioUnavailableError with advice."""
    try:
        return importlib.import_module("RPi.GPIO")
    except ImportError as e:
        raise GpioUnavailableError(
            f"RPi.GPIO is not installed ({e}); on a Pi install RPi.GPIO, or rpi-lgpio on a Pi 5; "
            + _FAKE_HINT
        ) from e
    except RuntimeError as e:  # "This module can only be run on a Raspberry Pi!"
        raise GpioUnavailableError(f"RPi.GPIO cannot run here: {e}; {_FAKE_HINT}") from e


def _setup_pin(gpio: Any, pin: int, *args: Any, **kw: Any) -> None:
    try:
        mode = gpio.getmode()
        if mode is None:
            gpio.setwarnings(False)
            gpio.setmode(gpio.BCM)
        elif mode != gpio.BCM:
            raise GpioUnavailableError(f"GPIO numbering is already set to {mode}, not BCM")
        gpio.setup(pin, *args, **kw)
    except GpioUnavailableError:
        raise
    except (RuntimeError, ValueError, OSError) as e:  # rpi-lgpio: "can not open gpiochip"
        raise GpioUnavailableError(f"cannot set up GPIO pin {pin} (BCM): {e}; {_FAKE_HINT}") from e


class RpiButton(ButtonCore):
    """Push button on BCM ``pin``; ``active_low``: pressed reads 0 (button to ground)."""

    def __init__(
        self,
        pin: int,
        *,
        pull_up: bool = True,
        active_low: bool = True,
        debounce_s: float = 0.02,
        long_press_s: float = 1.0,
    ) -> None:
        super().__init__(debounce_s=debounce_s, long_press_s=long_press_s)
        self.pin = pin
        self.pull_up = pull_up
        self.active_low = active_low
        self._gpio: Any = None

    def _is_pressed(self, level: int) -> bool:
        return (not level) if self.active_low else bool(level)

    async def _setup(self) -> bool:
        gpio = load_gpio()
        pud = gpio.PUD_UP if self.pull_up else gpio.PUD_DOWN
        _setup_pin(gpio, self.pin, gpio.IN, pull_up_down=pud)
        self._gpio = gpio
        try:
            gpio.add_event_detect(self.pin, gpio.BOTH, callback=self._on_edge)
        except (RuntimeError, ValueError) as e:
            gpio.cleanup(self.pin)
            raise GpioUnavailableError(f"cannot watch edges on GPIO pin {self.pin} (BCM): {e}") from e
        return self._is_pressed(gpio.input(self.pin))

    def _on_edge(self, channel: int) -> None:
        """RPi.GPIO's thread: read the level now and pass it to trio."""
        gpio = self._gpio
        if gpio is None:
            return
        self._raw_edge_from_thread(self._is_pressed(gpio.input(channel)))

    async def _teardown(self) -> None:
        gpio, self._gpio = self._gpio, None
        if gpio is None:
            return
        try:
            gpio.remove_event_detect(self.pin)
        finally:
            gpio.cleanup(self.pin)


class RpiLed(PatternLed):
    """LED on BCM ``pin``; ``active_low``: lit when the pin is driven low."""

    def __init__(self, pin: int, *, active_low: bool = False, initial: str | LedPattern = "off") -> None:
        super().__init__(initial)
        self.pin = pin
        self.active_low = active_low
        self._gpio: Any = None

    def _level(self, on: bool) -> int:
        return int(on != self.active_low)

    async def _setup(self) -> None:
        gpio = load_gpio()
        _setup_pin(gpio, self.pin, gpio.OUT, initial=self._level(False))
        self._gpio = gpio

    def _apply(self, on: bool) -> None:
        if self._gpio is not None:
            self._gpio.output(self.pin, self._level(on))  # a register write: does not block

    async def _teardown(self) -> None:
        gpio, self._gpio = self._gpio, None
        if gpio is not None:
            gpio.cleanup(self.pin)


