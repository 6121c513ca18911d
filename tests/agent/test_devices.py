"""Device supervision (agent/devices.py) with the simulating fake devices, in-process and without
the rest of the service: both groups open, the capture is drained until push-to-talk takes it, a
missing device is a fault retried with back-off, the LED shows the service's pattern."""

from __future__ import annotations

import wave
from pathlib import Path

import trio

from agent.config import AgentConfig
from agent.devices import DeviceSupervisor
from agent.talk.engine import IDENTIFY_PATTERN
from hw.audio.base import AudioSink, AudioSource
from hw.gpio.base import Button, Led
from tests.poll import wait_until

# Hang guards, not speed checks: the fake devices open in milliseconds; a busy machine (2 cores,
# several suites at once) was seen ~10x slower than idle.
HANG_S = 20.0


class Reporter:
    def __init__(self) -> None:
        self.faults: list[tuple[str, str]] = []
        self.cleared: list[str] = []
        self.changes = 0

    def fault(self, area: str, text: str) -> None:
        self.faults.append((area, text))

    def clear_fault(self, area: str) -> None:
        self.cleared.append(area)

    def changed(self) -> None:
        self.changes += 1


def _config(**audio: object) -> AgentConfig:
    return AgentConfig(node={"name": "pi-a"}, audio={"backend": "fake", **audio}, gpio={"backend": "fake"})


async def _frames_after(source: AudioSource, seconds: float) -> int:
    before = source.stats().frames
    await trio.sleep(seconds)
    return source.stats().frames - before


async def test_groups_open_the_capture_is_drained_until_taken_and_the_led_follows() -> None:
    rep = Reporter()
    sup = DeviceSupervisor(_config(), rep, drain_capture=True)
    async with trio.open_nursery() as n:
        n.start_soon(sup.run)
        with trio.fail_after(HANG_S):
            await sup.opened.wait()
            await sup.tried()
        d = sup.devices
        assert d is not None and rep.faults == [] and rep.changes >= 2
        assert isinstance(d.source, AudioSource) and isinstance(d.sink, AudioSink)
        assert isinstance(d.button, Button) and isinstance(d.led, Led) and sup.led is d.led
        # Drained: the source delivers frames (20 ms each) with nobody else reading it.
        assert await _frames_after(d.source, 0.3) > 0
        with trio.fail_after(HANG_S):
            await sup.take_capture()
        assert await _frames_after(d.source, 0.3) == 0  # one reader at a time: now push-to-talk's
        sup.check_health()
        assert rep.faults == [] and rep.cleared.count("audio") >= 2  # opened, then healthy

        sup.show("error")
        assert d.led.pattern.name == "error"
        assert sup.hold(IDENTIFY_PATTERN) and d.led.pattern.name == "identify"
        sup.show("idle")  # identify blinks on until released
        assert d.led.pattern.name == "identify"
        sup.release()
        sup.show("idle")
        assert d.led.pattern.name == "idle"
        n.cancel_scope.cancel()
    assert sup.devices is None and sup.audio is None and sup.gpio is None and sup.led is None


async def test_a_missing_device_is_a_fault_retried_until_it_appears(tmp_path: Path) -> None:
    wav = tmp_path / "mic.wav"
    rep = Reporter()
    sup = DeviceSupervisor(_config(reopen_interval_s=0.05, fake_source={"kind": "wav", "path": str(wav)}),
                           rep, drain_capture=False)
    async with trio.open_nursery() as n:
        n.start_soon(sup.run)
        with trio.fail_after(HANG_S):
            await sup.tried()
            await wait_until(lambda: sup.led is not None, HANG_S, "the LED", step=0.01)
        assert sup.devices is None and sup.audio is None
        [(area, text)] = rep.faults[:1]
        assert area == "audio" and text.startswith("no sound card (") and "mic.wav" in text
        assert text.endswith("; retrying with back-off")
        assert sup.hold(IDENTIFY_PATTERN) and sup.led.pattern.name == "identify"  # no audio, LED works
        sup.release()
        with wave.open(str(wav), "wb") as w:
            w.setnchannels(1)
            w.setsampwidth(2)
            w.setframerate(16000)
            w.writeframes(bytes(16000))
        with trio.fail_after(HANG_S):
            await sup.opened.wait()
        assert sup.devices is not None and "audio" in rep.cleared
        # Without drain_capture nobody reads the source until push-to-talk does.
        assert await _frames_after(sup.devices.source, 0.3) == 0
        n.cancel_scope.cancel()
