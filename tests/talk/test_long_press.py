"""The button's long press (after a tap) cycles the talk group; the other node sees the new group;
the LED shows the group's number, then gives the LED back. Identify chimes and blinks."""

from __future__ import annotations

from pathlib import Path

import trio

from agent.talk.engine import GROUP_LED_S, IDENTIFY_PATTERN, TAP_GAP_S, chime_frames, group_pattern

from .rig import agent, know_each_other, wait_until

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
