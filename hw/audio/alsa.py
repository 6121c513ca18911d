"""Real ALSA capture and playback over pyalsaaudio.

Blocking ``PCM.read``/``PCM.write`` (pyalsaaudio drops the GIL inside them) run in trio
worker threads via ``trio.to_thread.run_sync``; nothing polls. The device's own ring
buffer (``periods`` periods of one frame each) is the bounded queue: a reader or writer
that falls behind gets an xrun, which pyalsaaudio recovers (``snd_pcm_prepare``) and
reports as ``-EPIPE``; we count it, log it (rate-limited) and carry on.

A device that fails at run time (USB card unplugged: ``ENODEV``/``EIO``) is closed,
reported, and re-opened every ``reopen_interval_s``: capture ``read`` waits for it,
playback ``write`` keeps real-time pace and counts what it could not play as dropped.

Tests may pass ``pcm_factory`` (defaults to ``alsaaudio.PCM``) to inject faults.
"""

from __future__ import annotations

import errno
import logging
import time
from collections.abc import Callable
from typing import Any

import trio

from hw.audio.base import (AudioFormat, AudioFrame, AudioStats, DeviceState, OpenCloseContext,
                           monotonic_us)
from hw.audio.errors import (
    AudioDeviceError,
    DeviceClosedError,
    DeviceNotFoundError,
    FormatNotSupportedError,
)

__all__ = ["AlsaCapture", "AlsaPlayback", "list_pcms"]

log = logging.getLogger("hw.audio.alsa")

_MISSING_HINTS = ("No such file", "No such device", "busy", "Permission denied")
_MAX_EMPTY_READS = 100


def _alsaaudio() -> Any:
    try:
        import alsaaudio
    except ImportError as e:  # pragma: no cover - depends on the install
        raise AudioDeviceError(
            "pyalsaaudio is not installed (pip install pyalsaaudio; needs libasound2-dev); "
            "or use the fake audio backend (audio.backend = 'fake')"
        ) from e
    from hw.audio.alsalib import capture_alsa_errors

    capture_alsa_errors()  # alsa-lib's own stderr lines -> our log, at DEBUG
    return alsaaudio


def list_pcms(capture: bool) -> list[str]:
    """Names of the ALSA PCMs that exist for capture or playback (``alsaaudio.pcms``)."""
    aa = _alsaaudio()
    try:
        return list(aa.pcms(aa.PCM_CAPTURE if capture else aa.PCM_PLAYBACK))
    except aa.ALSAAudioError:
        return []


class _RateLimitedLog:
    """Log a recurring condition at most once per ``interval_s`` (with the running count)."""

    def __init__(self, interval_s: float = 5.0) -> None:
        self._interval = interval_s
        self._last = -1e18

    def __call__(self, level: int, msg: str, *args: object) -> None:
        now = time.monotonic()
        if now - self._last >= self._interval:
            self._last = now
            log.log(level, msg, *args)


def _stop_blocking(pcm: Any, drain: bool) -> None:
    """Stop a PCM (drain: after playing what it holds); a device that refuses (gone) is noticed
    by the next read or write, which reports and reopens it."""
    try:
        if drain:
            pcm.drain()
        else:
            pcm.drop()
    except Exception as e:  # noqa: BLE001 - ALSAAudioError of a vanished device
        log.debug("stopping the PCM failed: %s", e)


class _AlsaDevice(OpenCloseContext):
    _capture: bool = False

    def __init__(
        self,
        device: str = "default",
        fmt: AudioFormat | None = None,
        *,
        periods: int = 4,
        reopen_interval_s: float = 1.0,
        pcm_factory: Callable[..., Any] | None = None,
    ) -> None:
        if periods < 2:
            raise ValueError("periods must be >= 2")
        if reopen_interval_s <= 0:
            raise ValueError("reopen_interval_s must be > 0")
        self.device = device
        self._fmt = fmt or AudioFormat()
        self._periods = periods
        self._reopen_interval = reopen_interval_s
        self._factory = pcm_factory
        self._pcm: Any = None
        self._state: DeviceState = "closed"
        self._frames = 0
        self._xruns = 0
        self._dropped = 0
        self._errors = 0
        self._reopens = 0
        self._next_retry = 0.0
        self._lock = trio.Lock()
        self._wait_scope: trio.CancelScope | None = None
        self._xrun_log = _RateLimitedLog()
        self._retry_log = _RateLimitedLog(30.0)
        self.actual: dict[str, Any] = {}

    # -- public surface -------------------------------------------------------------
    @property
    def format(self) -> AudioFormat:
        return self._fmt

    def stats(self) -> AudioStats:
        return AudioStats(
            frames=self._frames,
            xruns=self._xruns,
            dropped=self._dropped,
            device_errors=self._errors,
            reopens=self._reopens,
            state=self._state,
        )

    async def open(self) -> None:
        """Open and configure the PCM; raises DeviceNotFoundError / FormatNotSupportedError."""
        if self._state != "closed":
            await trio.lowlevel.checkpoint()  # already open: a checkpoint all the same
            return
        self._pcm = await trio.to_thread.run_sync(self._open_blocking)
        self._state = "open"

    async def aclose(self) -> None:
        self._state = "closed"
        if self._wait_scope is not None:
            self._wait_scope.cancel()  # a reader waiting for a vanished device gives up
        async with self._lock:
            pcm, self._pcm = self._pcm, None
            if pcm is not None:
                with trio.CancelScope(shield=True):
                    await trio.to_thread.run_sync(self._close_blocking, pcm, not self._capture)

    # -- blocking helpers (worker thread) ---------------------------------------------
    def _open_blocking(self) -> Any:
        aa = _alsaaudio()
        factory = self._factory or aa.PCM
        kind = "capture" if self._capture else "playback"
        try:
            pcm = factory(
                aa.PCM_CAPTURE if self._capture else aa.PCM_PLAYBACK,
                aa.PCM_NORMAL,
                device=self.device,
                rate=self._fmt.rate,
                channels=self._fmt.channels,
                format=aa.PCM_FORMAT_S16_LE,
                periodsize=self._fmt.frame_samples,
                periods=self._periods,
            )
        except aa.ALSAAudioError as e:
            text = str(e)
            if any(h in text for h in _MISSING_HINTS):
                raise DeviceNotFoundError(self.device, f"{kind}: {text}", list_pcms(self._capture)) from e
            raise FormatNotSupportedError(
                self.device,
                asked=self._asked(),
                got=f"configuration rejected ({text})",
            ) from e
        info = pcm.info()
        self.actual = {k: info.get(k) for k in ("format_name", "rate", "channels", "period_size", "periods")}
        got = (info.get("format_name"), info.get("rate"), info.get("channels"))
        if got != ("S16_LE", self._fmt.rate, self._fmt.channels):
            offered = self._offered(pcm)
            self._close_blocking(pcm, False)
            raise FormatNotSupportedError(
                self.device,
                asked=self._asked(),
                got=f"{got[0]} {got[1]} Hz {got[2]} ch",
                offered=offered,
            )
        if info.get("period_size") != self._fmt.frame_samples:
            log.info("%s: period is %s samples (asked %d); frames are re-chunked",
                     self.device, info.get("period_size"), self._fmt.frame_samples)
        return pcm

    def _asked(self) -> str:
        return f"S16_LE {self._fmt.rate} Hz {self._fmt.channels} ch"

    @staticmethod
    def _offered(pcm: Any) -> str:
        # Only cheap probes: getchannels() can allocate without bound on plugin PCMs.
        parts = []
        try:
            parts.append("formats " + "/".join(pcm.getformats()))
        except Exception:  # noqa: BLE001 - purely informative
            pass
        try:
            lo, hi = pcm.getratebounds()
            parts.append(f"rates {lo}-{hi} Hz")
        except Exception:  # noqa: BLE001
            pass
        return ", ".join(parts)

    @staticmethod
    def _close_blocking(pcm: Any, drain: bool) -> None:
        try:
            if not drain:
                pcm.drop()  # otherwise close() drains a playback stream
        except Exception:  # noqa: BLE001 - a dead device may refuse; close anyway
            pass
        try:
            pcm.close()
        except Exception as e:  # noqa: BLE001
            log.debug("close failed: %s", e)

    # -- run-time failure and recovery ------------------------------------------------
    async def _device_failed(self, err: BaseException) -> None:
        self._errors += 1
        self._state = "recovering"
        self._next_retry = trio.current_time() + self._reopen_interval
        log.error("ALSA %s device %r failed: %s; re-opening every %.1f s",
                  "capture" if self._capture else "playback", self.device, err, self._reopen_interval)
        pcm, self._pcm = self._pcm, None
        if pcm is not None:
            with trio.CancelScope(shield=True):
                await trio.to_thread.run_sync(self._close_blocking, pcm, False)

    async def _try_reopen(self) -> bool:
        """One re-open attempt (caller holds the lock); True when the device is back."""
        self._next_retry = trio.current_time() + self._reopen_interval
        try:
            pcm = await trio.to_thread.run_sync(self._open_blocking)
        except AudioDeviceError as e:
            self._retry_log(logging.WARNING, "ALSA device %r still unavailable: %s", self.device, e)
            return False
        if self._state == "closed":  # closed while we were re-opening
            await trio.to_thread.run_sync(self._close_blocking, pcm, False)
            return False
        self._pcm = pcm
        self._state = "open"
        self._reopens += 1
        self._retry_log._last = -1e18
        log.warning("ALSA device %r re-opened after a failure", self.device)
        return True

    def _check_open(self) -> None:
        if self._state == "closed":
            raise DeviceClosedError(f"ALSA device {self.device!r} is not open")


class AlsaCapture(_AlsaDevice):
    """Microphone via ALSA. ``read()`` returns exactly one frame with its capture time."""

    _capture = True

    def __init__(self, device: str = "default", fmt: AudioFormat | None = None, **kw: Any) -> None:
        super().__init__(device, fmt, **kw)
        self._buf = bytearray()
        self._buf_start_us = 0
        # A capture PCM cannot deliver faster than real time, except one that is not a sound card
        # (ALSA's file/null plugins return at once): those are paced to the clock here, or the
        # reader would spin (``paced`` says whether that happened).
        self._pace_t0_us: int | None = None
        self._pace_k = 0
        self.paced = False

    async def read(self) -> AudioFrame:
        self._check_open()
        fb = self._fmt.frame_bytes
        async with self._lock:
            empty_reads = 0
            while len(self._buf) < fb:
                self._check_open()
                if self._pcm is None:
                    with trio.CancelScope() as self._wait_scope:
                        await trio.sleep_until(self._next_retry)
                    self._wait_scope = None
                    self._check_open()
                    await self._try_reopen()
                    continue
                try:
                    n, data, t_us = await trio.to_thread.run_sync(self._read_blocking, self._pcm)
                except Exception as e:  # ALSAAudioError: the device went away
                    if self._pcm is None or self._state == "closed":
                        raise DeviceClosedError(f"ALSA device {self.device!r} was closed") from e
                    self._buf.clear()
                    await self._device_failed(e)
                    continue
                if n == -errno.EPIPE:
                    self._xruns += 1
                    if self._buf:
                        self._dropped += 1  # a partial frame straddles the gap
                        self._buf.clear()
                    self._xrun_log(logging.WARNING, "ALSA capture %r: overrun (total %d), recovered",
                                   self.device, self._xruns)
                    continue
                if n <= 0 or not data:
                    empty_reads += 1
                    if empty_reads >= _MAX_EMPTY_READS:
                        await self._device_failed(AudioDeviceError(f"{empty_reads} empty reads"))
                    continue
                empty_reads = 0
                if not self._buf:
                    self._buf_start_us = t_us - round(n * 1_000_000 / self._fmt.rate)
                self._buf += data
            pcm = bytes(self._buf[:fb])
            del self._buf[:fb]
            ts = self._buf_start_us
            self._buf_start_us += self._fmt.frame_us
            self._frames += 1
            ts = await self._pace(ts)
            return AudioFrame(pcm, ts)

    async def _pace(self, ts: int) -> int:
        """Hold a frame that arrives further ahead of real time than the device buffer allows
        (a file/null PCM); returns its timestamp (the paced time when it was held)."""
        frame_us = self._fmt.frame_us
        now = monotonic_us()
        if self._pace_t0_us is None:
            self._pace_t0_us, self._pace_k = now, 0
        self._pace_k += 1
        due = self._pace_t0_us + self._pace_k * frame_us
        ahead = due - now
        if ahead < -self._periods * frame_us:  # behind (an overrun, a reopen): start over from now
            self._pace_t0_us, self._pace_k = now - frame_us, 1
        elif ahead > self._periods * frame_us:
            if not self.paced:
                self.paced = True
                log.info("ALSA capture %r delivers faster than real time (not a sound card: a file or "
                         "null PCM?): pacing it to the clock", self.device)
            await trio.sleep((ahead - frame_us) / 1_000_000)
        return due - frame_us if self.paced else ts  # a paced device's frames are on the clock

    async def stop(self) -> None:
        """Stop the PCM (``snd_pcm_drop``: what it captured is discarded); the next ``read``
        starts it again (pyalsaaudio prepares a stopped PCM on read)."""
        async with self._lock:
            if self._pcm is not None and self._state == "open":
                await trio.to_thread.run_sync(_stop_blocking, self._pcm, False)
                self._buf.clear()
                self._pace_t0_us = None  # a paced (file/null) PCM starts its clock again too
            else:
                await trio.lowlevel.checkpoint()

    @staticmethod
    def _read_blocking(pcm: Any) -> tuple[int, bytes, int]:
        n, data = pcm.read()
        return n, data, monotonic_us()


class AlsaPlayback(_AlsaDevice):
    """Speaker via ALSA. ``write()`` blocks (in a worker thread) while the ring buffer is full."""

    _capture = False

    async def write(self, pcm: bytes) -> None:
        self._check_open()
        bpf = self._fmt.bytes_per_sample_frame
        if len(pcm) % bpf:
            raise ValueError(
                f"{len(pcm)} bytes is not a whole number of {self._fmt.channels}-channel S16_LE samples"
            )
        if not pcm:
            await trio.lowlevel.checkpoint()  # nothing to play: a checkpoint all the same
            return
        async with self._lock:
            self._check_open()
            if self._pcm is None and trio.current_time() >= self._next_retry:
                await self._try_reopen()
            if self._pcm is None:
                # Outage: keep the producer at real-time pace and count what was not played.
                self._dropped += 1
                await trio.sleep(self._fmt.duration_s(len(pcm)))
                return
            try:
                underruns = await trio.to_thread.run_sync(self._write_blocking, self._pcm, pcm, bpf)
            except Exception as e:  # ALSAAudioError: the device went away
                if self._state == "closed":
                    raise DeviceClosedError(f"ALSA device {self.device!r} was closed") from e
                self._dropped += 1
                await self._device_failed(e)
                return
            if underruns:
                self._xruns += underruns
                self._xrun_log(logging.WARNING, "ALSA playback %r: underrun (total %d), recovered",
                               self.device, self._xruns)
            self._frames += 1

    async def stop(self) -> None:
        """Let what is buffered play out, then stop the PCM (``snd_pcm_drain``); the next
        ``write`` starts it again (pyalsaaudio prepares a stopped PCM on write)."""
        async with self._lock:
            if self._pcm is not None and self._state == "open":
                await trio.to_thread.run_sync(_stop_blocking, self._pcm, True)
            else:
                await trio.lowlevel.checkpoint()

    @staticmethod
    def _write_blocking(handle: Any, pcm: bytes, bpf: int) -> int:
        """Write all of ``pcm``; returns the number of underruns met (each recovered)."""
        view = memoryview(pcm)
        off = 0
        underruns = 0
        stalls = 0
        while off < len(pcm):
            r = handle.write(view[off:])
            if r == -errno.EPIPE:
                underruns += 1  # pyalsaaudio re-prepared the PCM; write the same data again
                continue
            if r > 0:
                off += r * bpf
                stalls = 0
                continue
            stalls += 1
            if stalls >= _MAX_EMPTY_READS:
                raise OSError(errno.EIO, f"device accepted nothing after {stalls} writes")
        return underruns


