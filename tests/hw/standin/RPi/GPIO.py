"""A stand-in for ``RPi.GPIO`` that behaves like the real module where we depend on it.

Like RPi.GPIO: setmode must come before setup, event detection needs an input pin,
a pin can only have one edge detection, callbacks run on a separate thread owned by
the module (one thread, in order), ``input`` reads the line. The test side drives the
line with ``_drive(pin, level)`` (as the physical contact would) and inspects
``_state``. Pull-ups set the idle level of an input.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from typing import Any

BCM = 11
BOARD = 10
IN = 1
OUT = 0
HIGH = 1
LOW = 0
PUD_OFF = 20
PUD_DOWN = 21
PUD_UP = 22
RISING = 31
FALLING = 32
BOTH = 33
VERSION = "0.7.1-standin"

_lock = threading.RLock()
_mode: int | None = None
_pins: dict[int, dict[str, Any]] = {}
_callbacks: dict[int, tuple[int, Callable[[int], None]]] = {}
_events: "queue.Queue[tuple[int, Callable[[int], None]] | None]" = queue.Queue()
_thread: threading.Thread | None = None
callback_threads: set[str] = set()
cleaned: list[Any] = []


def _callback_loop() -> None:
    while True:
        item = _events.get()
        if item is None:
            return
        pin, cb = item
        callback_threads.add(threading.current_thread().name)
        cb(pin)


def setwarnings(flag: bool) -> None:
    pass


def setmode(mode: int) -> None:
    global _mode
    if mode not in (BCM, BOARD):
        raise ValueError("An invalid mode was passed to setmode()")
    if _mode is not None and _mode != mode:
        raise ValueError("A different mode has already been set!")
    _mode = mode


def getmode() -> int | None:
    return _mode


def setup(channel: int, direction: int, pull_up_down: int = PUD_OFF, initial: int = -1) -> None:
    if _mode is None:
        raise RuntimeError("Please set pin numbering mode using GPIO.setmode(GPIO.BOARD) or GPIO.setmode(GPIO.BCM)")
    if not 0 <= channel <= 27:
        raise ValueError("The channel sent is invalid on a Raspberry Pi")
    with _lock:
        if direction == IN:
            level = HIGH if pull_up_down == PUD_UP else LOW
            _pins[channel] = {"dir": IN, "pud": pull_up_down, "level": level}
        else:
            _pins[channel] = {"dir": OUT, "level": LOW if initial == -1 else initial, "history": []}


def input(channel: int) -> int:
    with _lock:
        if channel not in _pins:
            raise RuntimeError("You must setup() the GPIO channel first")
        return _pins[channel]["level"]


def output(channel: int, value: int) -> None:
    with _lock:
        p = _pins.get(channel)
        if p is None or p["dir"] != OUT:
            raise RuntimeError("The GPIO channel has not been set up as an OUTPUT")
        p["level"] = int(bool(value))
        p["history"].append(int(bool(value)))


def add_event_detect(channel: int, edge: int, callback: Callable[[int], None] | None = None,
                     bouncetime: int = -1) -> None:
    global _thread
    with _lock:
        p = _pins.get(channel)
        if p is None or p["dir"] != IN:
            raise RuntimeError("You must setup() the GPIO channel as an input first")
        if channel in _callbacks:
            raise RuntimeError("Conflicting edge detection already enabled for this GPIO channel")
        if edge not in (RISING, FALLING, BOTH):
            raise ValueError("The edge must be set to RISING, FALLING or BOTH")
        _callbacks[channel] = (edge, callback or (lambda ch: None))
        if _thread is None or not _thread.is_alive():
            _thread = threading.Thread(target=_callback_loop, name="RPi.GPIO-events", daemon=True)
            _thread.start()


def remove_event_detect(channel: int) -> None:
    with _lock:
        _callbacks.pop(channel, None)


def cleanup(channel: int | list[int] | None = None) -> None:
    global _mode
    with _lock:
        chans = list(_pins) if channel is None else ([channel] if isinstance(channel, int) else list(channel))
        for ch in chans:
            _pins.pop(ch, None)
            _callbacks.pop(ch, None)
        cleaned.append(channel)
        if not _pins:
            _mode = None


# -- test side ------------------------------------------------------------------------
def _drive(channel: int, level: int) -> None:
    """Set the physical line level; fires edge callbacks on the module's thread."""
    with _lock:
        p = _pins[channel]
        old, p["level"] = p["level"], int(bool(level))
        if old == p["level"] or channel not in _callbacks:
            return
        edge, cb = _callbacks[channel]
        rising = p["level"] == HIGH
        if edge == BOTH or (edge == RISING) == rising:
            _events.put((channel, cb))


def _state(channel: int) -> dict[str, Any] | None:
    with _lock:
        p = _pins.get(channel)
        return None if p is None else dict(p)


def _reset() -> None:
    global _mode
    with _lock:
        _pins.clear()
        _callbacks.clear()
        cleaned.clear()
        callback_threads.clear()
        _mode = None
