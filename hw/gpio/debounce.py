"""Debounce and press logic, pure (no I/O, no clock): shared by the real and fake button.

A contact bounces for a few ms on press and release. ``Debouncer`` accepts a new level
only once the raw line has held it for ``debounce_s``; the accepted transition is
stamped with the time of the first edge of its burst (when the finger actually moved).
It works from edges alone: the caller sleeps until ``deadline()`` and calls ``settle``.

``ButtonLogic`` adds the long press on top: ``long_press`` fires once a press has
lasted ``long_press_s`` (stamped press time + long_press_s), before the release.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

__all__ = ["Debouncer", "debounce", "ButtonEvent", "ButtonLogic", "EventKind"]

EventKind = Literal["pressed", "released", "long_press"]


@dataclass(frozen=True, slots=True)
class ButtonEvent:
    """A debounced button event; ``at`` is in trio's clock (``trio.current_time()``)."""

    kind: EventKind
    at: float


class Debouncer:
    """Turns raw (pressed, time) edges into debounced level changes."""

    def __init__(self, debounce_s: float, initial: bool = False) -> None:
        if debounce_s < 0:
            raise ValueError("debounce_s must be >= 0")
        self.debounce_s = debounce_s
        self.stable = initial
        self._raw = initial
        self._last_edge = float("-inf")
        self._burst_start: float | None = None

    def edge(self, pressed: bool, at: float) -> list[tuple[bool, float]]:
        """Record the raw level seen at ``at``; returns changes that settled before it."""
        out = self.settle(at)
        if pressed == self._raw:
            return out  # a repeated level (missed edge in between): nothing new
        self._raw = pressed
        self._last_edge = at
        if self._burst_start is None:
            self._burst_start = at
        if self.debounce_s == 0:
            out += self.settle(at)
        return out

    def deadline(self) -> float | None:
        """When the current raw level will count as settled (None: nothing pending)."""
        if self._burst_start is None:
            return None
        return self._last_edge + self.debounce_s

    def settle(self, now: float) -> list[tuple[bool, float]]:
        """Accept the raw level if it has held for ``debounce_s`` by ``now``."""
        d = self.deadline()
        if d is None or now < d:
            return []
        start = self._burst_start
        assert start is not None
        self._burst_start = None
        if self._raw == self.stable:
            return []  # a glitch that came back: no change
        self.stable = self._raw
        return [(self.stable, start)]


def debounce(
    edges: Iterable[tuple[float, bool]], debounce_s: float, initial: bool = False
) -> list[tuple[float, bool]]:
    """Offline form: debounced ``(time, pressed)`` changes for time-ordered raw edges."""
    d = Debouncer(debounce_s, initial)
    out: list[tuple[bool, float]] = []
    for at, level in edges:
        out += d.edge(level, at)
    out += d.settle(float("inf"))
    return [(t, lvl) for lvl, t in out]


class ButtonLogic:
    """Debounce plus long press; feed edges and ``advance`` to deadlines."""

    def __init__(self, debounce_s: float, long_press_s: float, initial: bool = False) -> None:
        if long_press_s <= 0:
            raise ValueError("long_press_s must be > 0")
        self._d = Debouncer(debounce_s, initial)
        self.long_press_s = long_press_s
        self._long_at: float | None = None

    @property
    def pressed(self) -> bool:
        """The debounced state."""
        return self._d.stable

    def _convert(self, changes: list[tuple[bool, float]]) -> list[ButtonEvent]:
        out: list[ButtonEvent] = []
        for level, at in changes:
            if level:
                self._long_at = at + self.long_press_s
                out.append(ButtonEvent("pressed", at))
            else:
                if self._long_at is not None and self._long_at <= at:
                    out.append(ButtonEvent("long_press", self._long_at))
                self._long_at = None
                out.append(ButtonEvent("released", at))
        return out

    def _long(self, now: float) -> list[ButtonEvent]:
        if self._long_at is not None and now >= self._long_at and self._d.deadline() is None:
            at, self._long_at = self._long_at, None
            return [ButtonEvent("long_press", at)]
        return []

    def edge(self, pressed: bool, at: float) -> list[ButtonEvent]:
        out = self._long(at)
        out += self._convert(self._d.edge(pressed, at))
        return out

    def advance(self, now: float) -> list[ButtonEvent]:
        """Events due by ``now`` (settled edges, long press)."""
        out = self._convert(self._d.settle(now))
        out += self._long(now)
        return out

    def deadline(self) -> float | None:
        """Next time ``advance`` may have something to say."""
        ds = [d for d in (self._d.deadline(), self._long_at) if d is not None]
        return min(ds) if ds else None
