"""The service's faults by area, and short readable texts for exceptions and exception groups.

A fault is what an operator must see (``systemctl status``, the status message, the LED): it is
set by the part that noticed it and cleared when that part recovers. Pure: no I/O, no trio.
"""

from __future__ import annotations

import time
from typing import Protocol

from agent.mesh import AviP2pError

__all__ = ["DEVICE_AREAS", "Faults", "FaultReporter", "describe", "leaves"]

# Fault texts of the device groups (the status line and message show them as they are).
DEVICE_AREAS = {"audio": "no sound card", "gpio": "no GPIO"}


class Faults:
    """Current faults by area (``devices``, ``audio``, ``mesh``, ``status``, ``talk``, ``config``)
    and the most recent error text (kept after the fault clears, for the status message)."""

    def __init__(self) -> None:
        self.active: dict[str, str] = {}
        self.last_error: str | None = None
        self.last_error_at: float | None = None
        self.count = 0

    def set(self, area: str, text: str) -> bool:
        """Record a fault; True when it is new or its text changed."""
        self.last_error = f"{area}: {text}"
        self.last_error_at = time.time()
        if self.active.get(area) == text:
            return False
        self.count += 1
        self.active[area] = text
        return True

    def clear(self, area: str) -> bool:
        return self.active.pop(area, None) is not None

    def summary(self) -> str:
        """``no sound card (...); mesh: ...``: device texts say what they are, others get their area."""
        return "; ".join(t if a in DEVICE_AREAS else f"{a}: {t}" for a, t in sorted(self.active.items()))


class FaultReporter(Protocol):
    """Where a supervised part reports its faults (the service: log, STATUS=, status message, LED)."""

    def fault(self, area: str, text: str) -> None: ...

    def clear_fault(self, area: str) -> None: ...

    def changed(self) -> None: ...


def leaves(exc: BaseException) -> list[BaseException]:
    """The leaf exceptions of a (possibly nested) exception group."""
    if isinstance(exc, BaseExceptionGroup):
        return [leaf for sub in exc.exceptions for leaf in leaves(sub)]
    return [exc]


def describe(exc: BaseException) -> str:
    """A short, readable text for an exception or group (``TimeoutError: ...; OSError: ...``)."""
    texts = []
    for leaf in leaves(exc):
        text = str(leaf) or type(leaf).__name__
        if not isinstance(leaf, (AviP2pError,)) and type(leaf).__name__ not in text:
            text = f"{type(leaf).__name__}: {text}"
        if text not in texts:
            texts.append(text)
    return "; ".join(texts)
