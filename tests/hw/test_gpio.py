"""Debounce (pure), FakeButton/FakeLed in real time, RpiButton/RpiLed against a stand-in
RPi.GPIO that calls back from its own thread, and the off-Pi error."""

from __future__ import annotations

import sys
import threading
from pathlib import Path
from typing import Any

import pytest
import trio
from hypothesis import given, settings
from hypothesis import strategies as st

from hw.gpio import (
    Button,
    ButtonEvent,
    ButtonLogic,
    Debouncer,
    FakeButton,
    FakeLed,
    GpioUnavailableError,
    Led,
    RpiButton,
    RpiLed,
    debounce,
)
from hw.gpio.fake import bounce_offsets

HERE = Path(__file__).parent


# -- pure debounce ----------------------------------------------------------------------
def test_bounce_burst_collapses_to_one_press_and_one_release() -> None:
    edges = [(0.000, True), (0.001, False), (0.0015, True), (0.002, False), (0.003, True),
             (0.400, False), (0.401, True), (0.402, False)]
    assert debounce(edges, 0.02) == [(0.000, True), (0.400, False)]


def test_glitch_shorter_than_debounce_is_ignored() -> None:
    assert debounce([(1.0, True), (1.005, False)], 0.02) == []


def test_zero_debounce_passes_every_edge() -> None:
    edges = [(0.0, True), (0.001, False), (0.002, True)]
    assert debounce(edges, 0.0) == edges


def test_debouncer_deadline_tracks_last_edge() -> None:
    d = Debouncer(0.02)
    assert d.deadline() is None
    assert d.edge(True, 1.0) == []
    assert d.edge(False, 1.004) == []
    assert d.edge(True, 1.006) == []
    assert d.deadline() == pytest.approx(1.026)
    assert d.settle(1.02) == []
    assert d.settle(1.03) == [(True, 1.0)]
    assert d.deadline() is None and d.stable


@st.composite
def bouncy_presses(draw: Any) -> tuple[list[tuple[float, bool]], int]:
    """Presses at least 50 ms apart/long with bursts shorter than 5 ms at each contact change."""
    n = draw(st.integers(0, 6))
    t = 0.0
    edges: list[tuple[float, bool]] = []
    for _ in range(n):
        for level in (True, False):
            t += draw(st.floats(0.05, 0.5))
            k = 2 * draw(st.integers(0, 3))
            offs = sorted(draw(st.lists(st.floats(0.0001, 0.005), min_size=k, max_size=k, unique=True)))
            edges.append((t, level))
            lvl = level
            for o in offs:
                lvl = not lvl
                edges.append((t + o, lvl))
            t += 0.005
    return edges, n


@settings(max_examples=150, deadline=None)
@given(bouncy_presses())
def test_property_each_bouncy_press_counts_once(case: tuple[list[tuple[float, bool]], int]) -> None:
    edges, n = case
    out = debounce(edges, 0.02)
    assert [lvl for _, lvl in out] == [True, False] * n
    starts = [t for t, lvl in edges]
    assert all(t in starts for t, _ in out)  # stamped at a real edge (the burst's first)


@settings(max_examples=150, deadline=None)
@given(st.lists(st.tuples(st.floats(0, 10), st.booleans()), max_size=40), st.floats(0, 0.1))
def test_property_output_alternates_and_is_ordered(raw: list[tuple[float, bool]], db: float) -> None:
    edges = sorted(raw)
    out = debounce(edges, db)
    levels = [lvl for _, lvl in out]
    assert all(a != b for a, b in zip([False] + levels, levels))  # strictly alternating from released
    times = [t for t, _ in out]
    assert times == sorted(times)


def test_long_press_fires_once_before_release() -> None:
    b = ButtonLogic(0.02, 1.0)
    assert b.edge(True, 10.0) == []
    assert b.advance(10.03) == [ButtonEvent("pressed", 10.0)]
    assert b.deadline() == pytest.approx(11.0)
    assert b.advance(10.5) == []
    assert b.advance(11.0) == [ButtonEvent("long_press", 11.0)]
    assert b.advance(11.5) == []
    b.edge(False, 12.0)
    assert b.advance(12.05) == [ButtonEvent("released", 12.0)]


def test_short_press_has_no_long_press() -> None:
    b = ButtonLogic(0.02, 1.0)
    evs = b.edge(True, 0.0)
    evs += b.edge(False, 0.5)  # the press settled before this edge: reported now
    evs += b.advance(0.6)
    assert evs == [ButtonEvent("pressed", 0.0), ButtonEvent("released", 0.5)]
    assert b.advance(5.0) == []


def test_bounce_generator_ends_on_new_level() -> None:
    import random

    rng = random.Random(1)
    for _ in range(50):
        offs = bounce_offsets(0.004, rng)
        assert len(offs) % 2 == 0 and len(offs) >= 2
        assert all(0 <= o <= 0.004 for o in offs)


# -- fakes on trio's MockClock: exact times however busy the machine is ------------------------
async def collect(button: Any, n: int, t0: float) -> list[tuple[str, float]]:
    out: list[tuple[str, float]] = []
    async for ev in button.events():
        out.append((ev.kind, ev.at - t0))
        if len(out) == n:
            break
    return out


async def test_fake_button_script_bounce_and_long_press(autojump_clock, hang_guard) -> None:
    t0 = trio.current_time()
    async with FakeButton([(0.05, 0.15), (0.3, 0.7)], long_press_s=0.5,
                          debounce_s=0.02, bounce_s=0.004, seed=3) as b:
        assert isinstance(b, Button)
        evs = await collect(b, 5, t0)
        assert b.script_done.is_set()
        stats = b.stats()
    assert [k for k, _ in evs] == ["pressed", "released", "pressed", "long_press", "released"]
    # Each event carries the time of the contact's first edge (long press: press + 0.5 s).
    expect = [0.05, 0.20, 0.30, 0.80, 1.00]
    assert [at for _, at in evs] == pytest.approx(expect, abs=1e-9)
    assert stats.edges > 4 * 2  # bounce was really generated ...
    assert stats.events == 5  # ... and collapsed


async def test_fake_button_by_hand_and_pressed_state(autojump_clock, hang_guard) -> None:
    async with FakeButton(debounce_s=0.01, long_press_s=5) as b:
        assert not b.pressed
        await b.press()
        with trio.fail_after(2):
            async for ev in b.events():
                assert ev.kind == "pressed"
                break
        assert b.pressed
        await b.release()
        with trio.fail_after(2):
            async for ev in b.events():
                assert ev.kind == "released"
                break
        assert not b.pressed


def test_fake_button_rejects_overlapping_script() -> None:
    with pytest.raises(ValueError, match="overlap"):
        FakeButton([(0.0, 1.0), (0.5, 1.0)])


async def test_led_pattern_timeline(autojump_clock, hang_guard) -> None:
    t0 = trio.current_time()
    async with FakeLed("error") as led:
        assert isinstance(led, Led)
        # Pattern changes fall between blink steps (a change at the very instant of a step
        # may come before or after it: both are right, but not exact).
        await trio.sleep(0.55)
        led.set_pattern("transmitting")
        await trio.sleep(0.2)
        led.set_pattern("receiving")
        await trio.sleep(0.6)
        led.set_pattern("off")
        await trio.sleep(0.1)
        assert not led.is_on
    tl = [(t - t0, on) for t, on in led.timeline]
    states = [on for _, on in tl]
    assert all(a != b for a, b in zip(states, states[1:]))  # only real changes are recorded
    err = [t for t, on in tl if t < 0.55]
    assert len(err) == 6  # 100 ms on / 100 ms off for 0.55 s: on 0, 0.2, 0.4; off 0.1, 0.3, 0.5
    on_at = [t for t, on in tl if on]
    tx = [t for t in on_at if 0.55 <= t < 0.75]
    assert len(tx) == 1  # steady while transmitting
    rx = [(t, on) for t, on in tl if 0.75 <= t < 1.35]
    assert len(rx) == 2  # 250 ms blink for 0.6 s, starting lit (already on): off 1.0, on 1.25
    assert tl[-1][1] is False
    assert tl == [(pytest.approx(t, abs=1e-9), on) for t, on in [
        (0.0, True), (0.1, False), (0.2, True), (0.3, False), (0.4, True), (0.5, False),
        (0.55, True), (1.0, False), (1.25, True), (1.35, False)]]


def test_unknown_led_pattern_is_an_error() -> None:
    with pytest.raises(ValueError, match="unknown LED pattern 'disco'"):
        FakeLed("disco")


# -- the real backend against a stand-in RPi.GPIO ----------------------------------------
async def test_rpi_button_edges_from_gpio_thread(standin_gpio: Any, hang_guard) -> None:
    gpio = standin_gpio
    pin = 17

    def bounce(level: int) -> None:
        # The contact: a burst of edges within ~2 ms, ending on ``level``.
        for lv in (level, 1 - level, level, 1 - level, level):
            gpio._drive(pin, lv)

    t0 = trio.current_time()
    async with RpiButton(pin, pull_up=True, active_low=True, debounce_s=0.02,
                         long_press_s=0.3) as b:
        assert gpio._state(pin)["pud"] == gpio.PUD_UP
        assert not b.pressed  # pulled up, active low: idle reads high
        async with trio.open_nursery() as n:
            async def physical() -> None:
                await trio.sleep(0.05)
                await trio.to_thread.run_sync(bounce, 0)  # press (to ground)
                await trio.sleep(0.5)
                await trio.to_thread.run_sync(bounce, 1)  # release

            n.start_soon(physical)
            evs = await collect(b, 3, t0)
        stats = b.stats()
    assert [k for k, _ in evs] == ["pressed", "long_press", "released"]
    assert stats.edges == 10 and stats.events == 3
    assert gpio.callback_threads == {"RPi.GPIO-events"}
    assert threading.current_thread().name not in gpio.callback_threads
    assert gpio._state(pin) is None and pin in gpio.cleaned  # cleaned up on exit


async def test_rpi_button_active_high_pull_down(standin_gpio: Any, hang_guard) -> None:
    gpio = standin_gpio
    async with RpiButton(5, pull_up=False, active_low=False, debounce_s=0.01) as b:
        assert gpio._state(5)["pud"] == gpio.PUD_DOWN
        await trio.to_thread.run_sync(gpio._drive, 5, 1)
        with trio.fail_after(5):
            async for ev in b.events():
                break
    assert ev.kind == "pressed"


async def test_rpi_led_drives_pin_and_cleans_up(standin_gpio: Any, autojump_clock, hang_guard) -> None:
    gpio = standin_gpio  # the LED writes pins from trio: exact on MockClock
    async with RpiLed(27, initial="off") as led:
        led.set_pattern("on")
        await trio.sleep(0.05)
        assert gpio._state(27)["level"] == 1
        led.set_pattern("error")
        await trio.sleep(0.35)
        hist = list(gpio._state(27)["history"])
    assert hist[0] == 1 and hist.count(1) >= 2 and 0 in hist  # on, then blinking
    assert hist == [1, 0, 1, 0]  # on at 0; error from 0.05: off 0.15, on 0.25, off 0.35; read at 0.40
    assert gpio._state(27) is None and 27 in gpio.cleaned


async def test_rpi_led_active_low(standin_gpio: Any, autojump_clock, hang_guard) -> None:
    gpio = standin_gpio
    async with RpiLed(22, active_low=True) as led:
        assert gpio._state(22)["level"] == 1  # off = high
        led.set_pattern("on")
        await trio.sleep(0.05)
        assert gpio._state(22)["level"] == 0


async def test_off_pi_error_says_use_fake(monkeypatch: pytest.MonkeyPatch, hang_guard) -> None:
    for m in [m for m in sys.modules if m == "RPi" or m.startswith("RPi.")]:
        monkeypatch.delitem(sys.modules, m)
    monkeypatch.syspath_prepend(str(HERE / "offpi"))
    with pytest.raises(GpioUnavailableError) as ei:
        async with RpiButton(17):
            pass
    msg = str(ei.value)
    assert "only be run on a Raspberry Pi" in msg and "fake" in msg
    for m in [m for m in sys.modules if m == "RPi" or m.startswith("RPi.")]:
        del sys.modules[m]


async def test_missing_library_error_says_use_fake(monkeypatch: pytest.MonkeyPatch, hang_guard) -> None:
    for m in [m for m in sys.modules if m == "RPi" or m.startswith("RPi.")]:
        monkeypatch.delitem(sys.modules, m)
    monkeypatch.setitem(sys.modules, "RPi", None)  # as if not installed
    with pytest.raises(GpioUnavailableError, match="rpi-lgpio.*fake"):
        async with RpiLed(27):
            pass


async def test_a_device_that_fails_while_entering_releases_what_it_took(autojump_clock, hang_guard) -> None:
    """Entering acquires the hardware, then starts the tasks; when a step after the hardware fails,
    what was taken is given back in reverse (tasks stopped, hardware released), and the error
    reaches the caller (in trio's ExceptionGroup, as it came out of the tasks' nursery). Before the
    AsyncExitStack, such a failure left the nursery entered and the hardware taken."""
    log: list[str] = []

    class Failing(FakeButton):
        async def _setup(self) -> bool:
            log.append("setup")
            return False

        async def _started(self, nursery: trio.Nursery) -> None:
            nursery.start_soon(self._watch)
            await trio.sleep(0.1)
            raise RuntimeError("script failed")

        async def _watch(self) -> None:
            try:
                await trio.sleep_forever()
            finally:
                log.append("task stopped")

        async def _teardown(self) -> None:
            log.append("teardown")

    with pytest.raises(BaseExceptionGroup) as ei:
        async with Failing():
            pass
    assert ei.group_contains(RuntimeError, match="script failed")
    assert log == ["setup", "task stopped", "teardown"]
