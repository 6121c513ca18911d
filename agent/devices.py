"""Device supervision: the two device groups (audio: source + sink, gpio: button + LED) opened,
held open, and reopened with back-off while missing; the capture drained until push-to-talk
takes it; the audio devices' health; the LED pattern the service shows.

Faults go to a :class:`agent.faults.FaultReporter` (the service): the supervisor reports, the service decides
what a person sees.
"""

from __future__ import annotations

import logging
from contextlib import AsyncExitStack
from dataclasses import dataclass
import trio

from agent.config import AgentConfig
from agent.faults import DEVICE_AREAS, FaultReporter, describe
from hw.audio import open_audio_sink, open_audio_source
from hw.audio.base import AudioSink, AudioSource
from hw.gpio import open_button, open_led
from hw.gpio.base import Button, Led, LedPattern

__all__ = ["DEVICE_RETRY_MAX_S", "Devices", "DeviceSupervisor"]

log = logging.getLogger("agent.service")

DEVICE_RETRY_MAX_S = 30.0


@dataclass(frozen=True, slots=True)
class Devices:
    source: AudioSource
    sink: AudioSink
    button: Button
    led: Led


class DeviceSupervisor:
    """``await supervisor.run()`` opens both groups and holds them until cancelled.

    ``devices`` is set while both groups are open (push-to-talk needs all four), ``opened`` is
    set then (a fresh event replaces it whenever they close). With ``drain_capture`` the capture
    is read and discarded until :meth:`take_capture` (someone will read it: until then its
    overruns are not real drops)."""

    def __init__(self, config: AgentConfig, reporter: FaultReporter, *, drain_capture: bool) -> None:
        self.config = config
        self.reporter = reporter
        self.drain_capture = drain_capture
        self.devices: Devices | None = None
        self.opened = trio.Event()
        self.audio: tuple[AudioSource, AudioSink] | None = None  # while open
        self.gpio: tuple[Button, Led] | None = None  # while open
        self._tried: dict[str, trio.Event] = {a: trio.Event() for a in DEVICE_AREAS}
        self._drain_stop: trio.Event | None = None
        self._drain_done: trio.Event | None = None
        self._led_pattern: str | None = None

    @property
    def led(self) -> Led | None:
        """The LED while the gpio group is open."""
        return self.gpio[1] if self.gpio is not None else None

    async def run(self) -> None:
        async with trio.open_nursery() as n:
            n.start_soon(self._group, "audio")
            n.start_soon(self._group, "gpio")

    async def _group(self, area: str) -> None:
        """Open one device group (``audio``: source + sink, ``gpio``: button + LED) and hold it
        open; while it cannot open, the fault is shown and it is retried with back-off."""
        cfg = self.config
        delay = first = cfg.audio.reopen_interval_s
        while True:
            async with AsyncExitStack() as stack:
                try:
                    if area == "audio":
                        source = await stack.enter_async_context(open_audio_source(cfg.audio))
                        sink = await stack.enter_async_context(open_audio_sink(cfg.audio))
                    else:
                        led = await stack.enter_async_context(open_led(cfg.gpio))
                        button = await stack.enter_async_context(open_button(cfg.gpio))
                except Exception as exc:  # device errors are many types (ALSA, GPIO, OS)
                    # (the text stays the same from one retry to the next: logged once)
                    self.reporter.fault(area, f"{DEVICE_AREAS[area]} ({describe(exc)}); retrying with back-off")
                    self._tried[area].set()
                else:
                    delay = first
                    self.reporter.clear_fault(area)
                    if area == "audio":
                        self.audio = (source, sink)
                        log.debug("audio open: %s (capture %s, playback %s)", cfg.audio.backend,
                                  cfg.audio.capture_device, cfg.audio.playback_device)
                    else:
                        self.gpio = (button, led)
                        self._led_pattern = None
                        log.debug("gpio open: %s (button %d, LED %d)", cfg.gpio.backend,
                                  cfg.gpio.button_pin, cfg.gpio.led_pin)
                    self._tried[area].set()
                    self._changed()
                    try:
                        if area == "audio":
                            await self._keep_capture_drained(source)
                        await trio.sleep_forever()
                    finally:
                        if area == "audio":
                            self.audio = None
                        else:
                            self.gpio = None
                        self._changed()
            await trio.sleep(delay)
            delay = min(delay * 2, DEVICE_RETRY_MAX_S)

    def _changed(self) -> None:
        """Both groups open -> ``devices`` for talk; either closed -> None (and a new event)."""
        if self.audio is not None and self.gpio is not None:
            if self.devices is None:
                self.devices = Devices(self.audio[0], self.audio[1], self.gpio[0], self.gpio[1])
                log.info("devices open: audio %s, gpio %s", self.config.audio.backend, self.config.gpio.backend)
                self.opened.set()
        elif self.devices is not None:
            self.devices = None
            self.opened = trio.Event()
        self.reporter.changed()

    async def tried(self) -> None:
        """Until every device group has been tried once (open, or faulted)."""
        for ev in self._tried.values():
            await ev.wait()

    async def _keep_capture_drained(self, source: AudioSource) -> None:
        """Read (and discard) captured audio until push-to-talk takes the source over, so the
        capture device does not overrun while the mesh starts (those would count as drops)."""
        if not self.drain_capture:
            return  # nobody will read it: its overruns are real and counted
        self._drain_stop, self._drain_done = trio.Event(), trio.Event()
        try:
            while not self._drain_stop.is_set():
                await source.read()
        except Exception as exc:  # the device's own fault path reports it
            log.debug("capture drain ended: %s", exc)
        finally:
            self._drain_done.set()

    async def take_capture(self) -> None:
        """Stop the drain before push-to-talk reads the source (one reader at a time)."""
        if self._drain_stop is not None and self._drain_done is not None:
            self._drain_stop.set()
            await self._drain_done.wait()

    def check_health(self) -> None:
        """A lost or failing audio device is an ``audio`` fault until it works again."""
        a = self.audio
        if a is None:
            return
        problems = []
        for name, dev in (("capture", a[0]), ("playback", a[1])):
            try:
                st = dev.stats()
            except Exception as exc:
                problems.append(f"{name} stats failed: {exc}")
                continue
            if st.state == "recovering":
                problems.append(f"{name} device lost, reopening")
        if problems:
            self.reporter.fault("audio", "; ".join(problems))
        else:
            self.reporter.clear_fault("audio")

    # --- the LED ------------------------------------------------------------------------------
    def show(self, want: str) -> None:
        """Show the service's pattern (``idle`` or ``error``) on the LED, when it is open and
        not blinking for identify. Talk drives the LED while it transmits/receives; the service
        only switches between idle and error, and only when its own choice changes."""
        led = self.led
        if led is None or self._led_pattern == "identify":
            return  # identify blinks for a few seconds, then the normal pattern comes back
        if want != self._led_pattern:
            try:
                led.set_pattern(want)
                self._led_pattern = want
            except Exception as exc:
                log.debug("LED pattern %s failed: %s", want, exc)

    def hold(self, pattern: LedPattern) -> bool:
        """Show ``pattern`` (identify without push-to-talk) until :meth:`release`; False when
        the LED is not open."""
        led = self.led
        if led is None:
            return False
        try:
            led.set_pattern(pattern)
            self._led_pattern = "identify"  # the service's show() puts idle/error back
        except Exception as exc:
            log.debug("identify LED failed: %s", exc)
        return True

    def release(self) -> None:
        """End :meth:`hold`: the next :meth:`show` sets the service's pattern again."""
        self._led_pattern = None
