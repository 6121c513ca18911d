"""The GPIO edge as the agent sees it: ``Button`` and ``Led`` Protocols and LED patterns."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from types import TracebackType
from typing import Protocol, Self, runtime_checkable

from hw.gpio.debounce import ButtonEvent

__all__ = ["ButtonEvent", "ButtonStats", "Button", "Led", "LedPattern", "PATTERNS", "GpioUnavailableError"]


class GpioUnavailableError(RuntimeError):
    """The real GPIO backend cannot run here (not a Pi, library missing, pins busy)."""


@dataclass(frozen=True, slots=True)
class ButtonStats:
    """Counters: raw edges seen, events emitted, raw edges dropped (queue full)."""

    edges: int = 0
    events: int = 0
    dropped_edges: int = 0


@dataclass(frozen=True, slots=True)
class LedPattern:
    """A repeating sequence of (on, seconds) steps; a single step is a steady state."""

    name: str
    steps: tuple[tuple[bool, float], ...]

    def __post_init__(self) -> None:
        if not self.steps:
            raise ValueError("a pattern needs at least one step")
        if len(self.steps) > 1 and any(d <= 0 for _, d in self.steps):
            raise ValueError("blink steps need positive durations")

    @property
    def steady(self) -> bool:
        return len(self.steps) == 1


PATTERNS: dict[str, LedPattern] = {
    "off": LedPattern("off", ((False, 0.0),)),
    "on": LedPattern("on", ((True, 0.0),)),
    # A short blip every two seconds: alive, nothing happening.
    "idle": LedPattern("idle", ((True, 0.1), (False, 1.9))),
    # Steady on while our button is held and we are sending.
    "transmitting": LedPattern("transmitting", ((True, 0.0),)),
    # Even blink while someone else is talking to us.
    "receiving": LedPattern("receiving", ((True, 0.25), (False, 0.25))),
    # Fast blink: something needs attention.
    "error": LedPattern("error", ((True, 0.1), (False, 0.1))),
}


@runtime_checkable
class Button(Protocol):
    """The push-to-talk button: debounced press/release with timestamps, and long press."""

    @property
    def pressed(self) -> bool:
        """The current debounced state."""
        ...

    async def __aenter__(self) -> Self: ...

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None: ...

    def events(self) -> AsyncIterator[ButtonEvent]:
        """``async for ev in button.events()``: pressed / released / long_press, in order."""
        ...

    def stats(self) -> ButtonStats: ...


@runtime_checkable
class Led(Protocol):
    """The status LED: steady or blinking by named pattern."""

    @property
    def pattern(self) -> LedPattern: ...

    async def __aenter__(self) -> Self: ...

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None: ...

    def set_pattern(self, pattern: str | LedPattern) -> None:
        """Switch pattern now ('off', 'on', 'idle', 'transmitting', 'receiving', 'error')."""
        ...
