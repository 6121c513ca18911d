"""Async machinery shared by the real and fake GPIO backends.

``ButtonCore`` owns a bounded channel of raw edges (fed from any thread through
``trio.from_thread``), a task that runs ``ButtonLogic`` (sleeping until its deadlines,
never polling) and a bounded channel of events for ``events()``. ``PatternLed`` runs a
pattern with trio sleeps and hands each level to ``_apply``.
"""

from __future__ import annotations

import logging
import math
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from types import TracebackType
from typing import Self

import trio

from hw.gpio.base import ButtonEvent, ButtonStats, LedPattern, PATTERNS
from hw.gpio.debounce import ButtonLogic

__all__ = ["ButtonCore", "PatternLed"]

log = logging.getLogger("hw.gpio")


class _TaskOwner:
    """``async with`` for a device that runs background tasks: ``_enter(stack)`` acquires the
    hardware and starts the tasks, pushing each release onto an ``AsyncExitStack`` as it goes,
    so a failure half-way releases exactly what was acquired, and leaving unwinds it in reverse
    (stop the tasks, wait for them, then release the hardware)."""

    _stack: AsyncExitStack | None = None

    async def __aenter__(self) -> Self:
        await trio.lowlevel.checkpoint()  # public async API: a checkpoint (tests/test_checkpoints.py)
        async with AsyncExitStack() as stack:
            await self._enter(stack)
            self._stack = stack.pop_all()  # entered: __aexit__ unwinds it
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool:
        stack, self._stack = self._stack, None
        if stack is None:
            await trio.lowlevel.checkpoint()
            return False
        return await stack.__aexit__(exc_type, exc, tb)  # leaving a nursery is a checkpoint

    async def _enter(self, stack: AsyncExitStack) -> None:  # pragma: no cover - overridden
        raise NotImplementedError

    @staticmethod
    async def _open_nursery(stack: AsyncExitStack) -> trio.Nursery:
        """A nursery for the tasks, cancelled when the stack unwinds to it."""
        nursery = await stack.enter_async_context(trio.open_nursery())
        stack.callback(nursery.cancel_scope.cancel)
        return nursery


class ButtonCore(_TaskOwner):
    """Debounced button from raw edges. Subclasses call ``_raw_edge`` (trio thread) or
    ``_raw_edge_from_thread`` (any other thread), and implement ``_setup``/``_teardown``."""

    def __init__(
        self,
        *,
        debounce_s: float = 0.02,
        long_press_s: float = 1.0,
        edge_buffer: int = 256,
        event_buffer: int = 64,
    ) -> None:
        self._logic = ButtonLogic(debounce_s, long_press_s)
        self._edge_send, self._edge_recv = trio.open_memory_channel[tuple[bool, float]](edge_buffer)
        self._ev_send, self._ev_recv = trio.open_memory_channel[ButtonEvent](event_buffer)
        self._edges = 0
        self._events = 0
        self._dropped = 0
        self._token: trio.lowlevel.TrioToken | None = None

    @property
    def pressed(self) -> bool:
        return self._logic.pressed

    def stats(self) -> ButtonStats:
        return ButtonStats(edges=self._edges, events=self._events, dropped_edges=self._dropped)

    async def _enter(self, stack: AsyncExitStack) -> None:
        self._token = trio.lowlevel.current_trio_token()
        initial = await self._setup()
        stack.push_async_callback(self._release)
        self._logic = ButtonLogic(self._logic._d.debounce_s, self._logic.long_press_s, initial)
        nursery = await self._open_nursery(stack)
        nursery.start_soon(self._run)
        await self._started(nursery)

    async def _release(self) -> None:
        with trio.CancelScope(shield=True):
            await self._teardown()
        self._ev_send.close()

    async def events(self) -> AsyncIterator[ButtonEvent]:
        async for ev in self._ev_recv:
            yield ev

    # -- edge intake ------------------------------------------------------------------
    def _raw_edge(self, pressed: bool) -> None:
        """Record a raw edge now (call in the trio thread)."""
        self._edges += 1
        try:
            self._edge_send.send_nowait((pressed, trio.current_time()))
        except trio.WouldBlock:
            self._dropped += 1
        except (trio.ClosedResourceError, trio.BrokenResourceError):
            pass

    def _raw_edge_from_thread(self, pressed: bool) -> None:
        """Record a raw edge from a foreign thread (e.g. RPi.GPIO's callback thread)."""
        if self._token is None:
            return
        try:
            trio.from_thread.run_sync(self._raw_edge, pressed, trio_token=self._token)
        except trio.RunFinishedError:
            pass

    # -- the logic task ---------------------------------------------------------------
    async def _run(self) -> None:
        while True:
            deadline = self._logic.deadline()
            item: tuple[bool, float] | None = None
            with trio.move_on_at(deadline if deadline is not None else math.inf):
                item = await self._edge_recv.receive()
            if item is not None:
                evs = self._logic.edge(item[0], item[1])
            else:
                evs = self._logic.advance(trio.current_time())
            for ev in evs:
                self._events += 1
                log.debug("button %s at %.3f", ev.kind, ev.at)
                await self._ev_send.send(ev)  # backpressure: a slow consumer delays, never loses

    # -- backend hooks ------------------------------------------------------------------
    async def _setup(self) -> bool:
        """Acquire the hardware; return the initial pressed state."""
        return False

    async def _started(self, nursery: trio.Nursery) -> None:
        """Called once the logic task runs (fakes start their script here)."""

    async def _teardown(self) -> None:
        """Release the hardware."""


class PatternLed(_TaskOwner):
    """Runs LED patterns; subclasses implement ``_apply(on)`` and ``_setup``/``_teardown``."""

    def __init__(self, initial: str | LedPattern = "off") -> None:
        self._pattern = self._resolve(initial)
        self._changed = trio.Event()
        self._on: bool | None = None

    @staticmethod
    def _resolve(pattern: str | LedPattern) -> LedPattern:
        if isinstance(pattern, LedPattern):
            return pattern
        try:
            return PATTERNS[pattern]
        except KeyError:
            raise ValueError(f"unknown LED pattern {pattern!r}; known: {', '.join(PATTERNS)}") from None

    @property
    def pattern(self) -> LedPattern:
        return self._pattern

    @property
    def is_on(self) -> bool:
        return bool(self._on)

    def set_pattern(self, pattern: str | LedPattern) -> None:
        self._pattern = self._resolve(pattern)
        self._changed.set()

    async def _enter(self, stack: AsyncExitStack) -> None:
        await self._setup()
        stack.push_async_callback(self._release)
        nursery = await self._open_nursery(stack)
        nursery.start_soon(self._run)

    async def _release(self) -> None:
        self._set(False)
        await self._teardown()

    def _set(self, on: bool) -> None:
        if on != self._on:
            self._on = on
            self._apply(on)

    async def _run(self) -> None:
        while True:
            self._changed = trio.Event()
            pattern = self._pattern
            if pattern.steady:
                self._set(pattern.steps[0][0])
                await self._changed.wait()
                continue
            # Blink until set_pattern() fires _changed, then start over with the new one.
            async with trio.open_nursery() as n:
                n.start_soon(self._cancel_on_change, n.cancel_scope)
                while True:
                    for on, dur in pattern.steps:
                        self._set(on)
                        await trio.sleep(dur)

    async def _cancel_on_change(self, scope: trio.CancelScope) -> None:
        await self._changed.wait()
        scope.cancel()

    async def _setup(self) -> None:
        """Acquire the hardware."""

    async def _teardown(self) -> None:
        """Release the hardware."""

    def _apply(self, on: bool) -> None:  # pragma: no cover - overridden
        raise NotImplementedError
