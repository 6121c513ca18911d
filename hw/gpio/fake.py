"""Fake GPIO that behaves like the hardware.

``FakeButton`` plays a script of presses (start time, duration) in real time, turning
each press and release into a burst of contact bounce (a few edges within
``bounce_s``) that goes through the same debounce as the real button. ``FakeLed``
records every level change with its time so tests can check a pattern.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Iterable, Sequence

import trio

from hw.gpio.base import LedPattern
from hw.gpio.core import ButtonCore, PatternLed

__all__ = ["Press", "FakeButton", "FakeLed"]

log = logging.getLogger("hw.gpio.fake")


class Press(tuple[float, float]):
    """(at_s, duration_s): press ``at_s`` after the button opens, hold ``duration_s``."""

    def __new__(cls, at_s: float, duration_s: float) -> "Press":
        if at_s < 0 or duration_s <= 0:
            raise ValueError(f"bad press at={at_s} duration={duration_s}")
        return super().__new__(cls, (at_s, duration_s))

    @property
    def at_s(self) -> float:
        return self[0]

    @property
    def duration_s(self) -> float:
        return self[1]


def bounce_offsets(bounce_s: float, rng: random.Random, max_edges: int = 6) -> list[float]:
    """Times (relative to the first contact) of the extra edges of one bounce burst.

    An even number of extra edges, so the burst ends on the new level."""
    if bounce_s <= 0:
        return []
    n = 2 * rng.randint(1, max_edges // 2)
    return sorted(rng.uniform(0.0, bounce_s) for _ in range(n))


class FakeButton(ButtonCore):
    """A push button pressed by a script, with simulated contact bounce.

    ``press()`` / ``release()`` also work by hand (tests, a REPL). The script starts
    when the button is entered (``async with``)."""

    def __init__(
        self,
        presses: Iterable[tuple[float, float]] = (),
        *,
        debounce_s: float = 0.02,
        long_press_s: float = 1.0,
        bounce_s: float = 0.003,
        seed: int | None = 0,
    ) -> None:
        super().__init__(debounce_s=debounce_s, long_press_s=long_press_s)
        self._script: Sequence[Press] = sorted(Press(a, d) for a, d in presses)
        for a, b in zip(self._script, self._script[1:]):
            if b.at_s < a.at_s + a.duration_s:
                raise ValueError(f"scripted presses overlap: {a} and {b}")
        self.bounce_s = bounce_s
        self._rng = random.Random(seed)
        self._level = False
        self.script_done = trio.Event()

    async def _started(self, nursery: trio.Nursery) -> None:
        nursery.start_soon(self._play_script, trio.current_time())

    async def _play_script(self, t0: float) -> None:
        for p in self._script:
            await trio.sleep_until(t0 + p.at_s)
            await self._contact(True)
            await trio.sleep_until(t0 + p.at_s + p.duration_s)
            await self._contact(False)
        self.script_done.set()

    async def _contact(self, pressed: bool) -> None:
        """One contact change: the edge, then a bounce burst that ends on ``pressed``."""
        t0 = trio.current_time()
        self._level = pressed
        self._raw_edge(pressed)
        level = pressed
        offsets = bounce_offsets(self.bounce_s, self._rng)
        for off in offsets:
            await trio.sleep_until(t0 + off)
            level = not level
            self._raw_edge(level)
        assert level == pressed
        if not offsets:
            await trio.lowlevel.checkpoint()  # no bounce to wait through: still a checkpoint

    async def press(self) -> None:
        """Press (with bounce) now."""
        await self._contact(True)

    async def release(self) -> None:
        """Release (with bounce) now."""
        await self._contact(False)


class FakeLed(PatternLed):
    """Records ``(time, on)`` for every level change in ``timeline`` (trio clock)."""

    def __init__(self, initial: str | LedPattern = "off") -> None:
        super().__init__(initial)
        self.timeline: list[tuple[float, bool]] = []

    def _apply(self, on: bool) -> None:
        self.timeline.append((trio.current_time(), on))
