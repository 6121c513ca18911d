"""The button's long press (after a tap) cycles the talk group; the other node sees the new group;
the LED shows the group's number, then gives the LED back. Identify chimes and blinks."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import trio

from agent.config import AgentConfig
from agent.talk import Talk
from agent.talk.engine import GROUP_LED_S, IDENTIFY_PATTERN, TAP_GAP_S, chime_frames, group_pattern
from hw.audio import NullSink, ToneSource
from hw.gpio import FakeButton, FakeLed, LedPattern, Press

from tests.poll import wait_until

from .rig import agent, know_each_other

LONG_PRESS_S = 1.0  # gpio.long_press_s default, what FakeButton() uses


async def tap_then_hold(a, hold_s: float = LONG_PRESS_S + 0.4) -> None:
    await a.hold(0.15)
    await trio.sleep(TAP_GAP_S / 3)
    await a.hold(hold_s)


async def test_tap_then_long_press_cycles_groups_and_peers_see_it(tmp_path: Path) -> None:
    async with agent("a", tmp_path, groups=("house", "yard")) as a, \
            agent("b", tmp_path, groups=("house", "yard"), record=False) as b:
        await a.node.handle().dial(b.addr)
        await know_each_other(a, b)
        assert a.talk.stats().group == "house"

        # a long press on its own is just a long talk
        await a.hold(LONG_PRESS_S + 0.4)
        assert a.talk.stats().group == "house" and a.talk.group_changes == 0
        sent = a.talk.stats().frames_sent
        assert sent > 20
        await trio.sleep(2 * TAP_GAP_S)  # (a press right after a release is a bounce to debounce)

        # a tap, then a long press: the next group, announced at once; the second press is silent
        await a.hold(0.15)
        await trio.sleep(TAP_GAP_S / 3)
        await a.button.press()
        await wait_until(lambda: a.talk.stats().group == "yard", 5, "a to move to yard")
        assert a.led.pattern.name == "group-2" and a.led.pattern == group_pattern(1)
        assert not a.talk.stats().transmitting
        await a.button.release()
        await wait_until(lambda: (ann := b.talk._dir.get(a.peer_id)) is not None and ann.current == "yard",
                         5, "b to hear a's new group")
        # the group number shows for GROUP_LED_S, then the LED is idle again
        await wait_until(lambda: a.led.pattern.name == "idle", GROUP_LED_S + 3, "the LED to go back to idle")
        await trio.sleep(2 * TAP_GAP_S)

        # and round to the first group again: one blink
        await tap_then_hold(a)
        await wait_until(lambda: a.talk.stats().group == "house", 5, "a back in house")
        await wait_until(lambda: (ann := b.talk._dir.get(a.peer_id)) is not None and ann.current == "house",
                         5, "b to hear it")
        assert a.talk.group_changes == 2
        assert group_pattern(0).steps[0] == (True, 0.15) and len(group_pattern(0).steps) == 2
        assert len(group_pattern(2).steps) == 6


async def test_identify_chimes_and_blinks(tmp_path: Path) -> None:
    async with agent("a", tmp_path) as a:
        assert a.led.pattern.name == "idle"
        a.talk.identify(seconds=1.0)
        assert a.led.pattern == IDENTIFY_PATTERN
        n = len(chime_frames(a.talk.format))
        await wait_until(lambda: not a.talk._local_sound, 5, "the chime to play")
        # what the sink played: the chime, loud enough to hear
        await wait_until(lambda: a.talk.stats().playback_levels.peak_dbfs > -10, 3, "a loud playback")
        await wait_until(lambda: a.led.pattern.name == "idle", 4, "the LED back to idle")
        assert n >= 25  # 0.6 s of 20 ms frames


class _LoneHandle:
    """A node with no peers (the gesture and the LED need none), so talk runs on trio's MockClock:
    a real node's sockets cannot. Each call is a checkpoint, as the mesh's are."""

    local_peer_id = "12D3KooWlone"

    def __init__(self) -> None:
        self.published: list[str] = []

    async def subscribe(self, topic: str) -> None:
        await trio.lowlevel.checkpoint()

    async def unsubscribe(self, topic: str) -> None:
        await trio.lowlevel.checkpoint()

    async def publish(self, topic: str, data: bytes) -> None:
        self.published.append(topic)
        await trio.lowlevel.checkpoint()

    def connected_peers(self) -> list[str]:
        return []


class _PatternLog(FakeLed):
    """Records (trio time, pattern name) at every pattern change."""

    def __init__(self, initial: str) -> None:
        super().__init__(initial)
        self.patterns: list[tuple[float, str]] = []

    def set_pattern(self, pattern: str | LedPattern) -> None:
        super().set_pattern(pattern)
        self.patterns.append((trio.current_time(), self.pattern.name))


@asynccontextmanager
async def lone_talk(presses: list[Press]) -> AsyncIterator[tuple[Talk, _PatternLog]]:
    """A running Talk with no peers, fake devices, and the button pressed by ``presses``."""
    cfg = AgentConfig(node={"name": "a"}, talk={"groups": ["house", "yard"]})
    async with ToneSource() as source, NullSink() as sink, FakeButton(presses, bounce_s=0.0) as button, \
            _PatternLog("idle") as led:
        talk = Talk(cfg, _LoneHandle(), source, sink, button, led)  # type: ignore[arg-type]
        async with trio.open_nursery() as n:
            await n.start(talk.run)
            yield talk, led
            n.cancel_scope.cancel()


async def test_tap_then_long_press_led_timeline_on_mock_clock(autojump_clock, hang_guard) -> None:
    """The gesture's LED, exactly: a tap transmits (LED steady) until it is released; a long press
    0.2 s later changes the group at the long-press time, shows group 2 for GROUP_LED_S, then idle.
    Without contact bounce (tests/hw cover it) an event comes one debounce (20 ms) after its contact."""
    t0 = trio.current_time()
    tap, hold = Press(0.10, 0.15), Press(0.45, LONG_PRESS_S + 0.4)  # released at 0.25, pressed again at 0.45
    async with lone_talk([tap, hold]) as (talk, led):
        await trio.sleep(hold.at_s + LONG_PRESS_S + GROUP_LED_S + 1.0)
    assert talk.stats().group == "yard" and talk.group_changes == 1
    assert [(round(t - t0, 6), name) for t, name in led.patterns] == [
        (0.12, "transmitting"),                         # the tap: talking
        (0.27, "idle"),                                 # released: the LED given back
        (1.45, "group-2"),                              # the long press (0.45 + 1.0): next group
        (1.45 + GROUP_LED_S, "idle"),                   # the group number shown for GROUP_LED_S
    ]


async def test_identify_led_timeline_on_mock_clock(autojump_clock, hang_guard) -> None:
    """Identify blinks for exactly its time, then gives the LED back; talking meanwhile does not
    take the LED from it, and the LED shows transmitting once identify ends if still talking."""
    t0 = trio.current_time()
    async with lone_talk([Press(1.0, 1.0)]) as (talk, led):
        await trio.sleep(0.5)
        talk.identify(seconds=1.0)
        await trio.sleep(3.0)
    assert [(round(t - t0, 6), name) for t, name in led.patterns] == [
        (0.5, "identify"),
        (1.5, "transmitting"),  # pressed at 1.0 (event at 1.02) while identify showed
        (2.02, "idle"),         # released at 2.0
    ]
