"""sd_notify for ``Type=notify``: a thin layer over systemd-python's ``systemd.daemon.notify``.

Outside systemd (``NOTIFY_SOCKET`` unset) or without systemd-python every call is a plain no-op
returning False, so the agent runs the same from a shell. A failed send (socket gone) is logged
once and returns False: losing a status line must never take the service down.

The watchdog ping is sent from a trio task (:func:`run_watchdog`), so it proves that the event
loop itself is turning; a loop blocked by a stray synchronous call stops the pings and systemd
restarts the service after ``WatchdogSec``.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Mapping
from typing import Any

import trio

__all__ = ["Notifier", "run_watchdog"]

log = logging.getLogger("agent.sdnotify")

_Send = Callable[[str], Any]


def _load_sender() -> _Send | None:
    try:
        from systemd import daemon  # lazy: systemd-python is an optional dependency
    except ImportError:
        return None
    return daemon.notify


class Notifier:
    """Sends sd_notify states. Create it once at start-up (it reads the environment then).

    ``env`` defaults to ``os.environ``; ``NOTIFY_SOCKET`` itself is read by libsystemd from the
    process environment at each send, as systemd intends.
    """

    def __init__(self, env: Mapping[str, str] | None = None) -> None:
        self._env = os.environ if env is None else env
        self._socket = self._env.get("NOTIFY_SOCKET") or None
        self._send: _Send | None = _load_sender() if self._socket else None
        self._failed_once = False
        if self._socket and self._send is None:
            log.warning("NOTIFY_SOCKET is set but systemd-python is not installed: "
                        "systemd will not hear READY=1 (install the 'systemd' extra)")

    @property
    def enabled(self) -> bool:
        """True when there is a notify socket and a way to reach it."""
        return self._send is not None

    def notify(self, state: str) -> bool:
        """Send raw ``KEY=value`` lines; True when systemd got them."""
        if self._send is None:
            return False
        try:
            ok = bool(self._send(state))
        except OSError as exc:
            ok = False
            self._report(f"{type(exc).__name__}: {exc}")
        else:
            if not ok:
                self._report("libsystemd returned false")
        return ok

    def _report(self, why: str) -> None:
        level = logging.DEBUG if self._failed_once else logging.WARNING
        self._failed_once = True
        log.log(level, "sd_notify to %s failed (%s)", self._socket, why)

    def ready(self) -> bool:
        """READY=1: the mesh listens and the devices are open (also after a reload)."""
        return self.notify("READY=1")

    def status(self, text: str) -> bool:
        """STATUS=<one line> for ``systemctl status``; newlines would start a new assignment."""
        line = " | ".join(part.strip() for part in text.splitlines() if part.strip())
        return self.notify(f"STATUS={line}")

    def stopping(self) -> bool:
        return self.notify("STOPPING=1")

    def reloading(self) -> bool:
        """RELOADING=1 (with MONOTONIC_USEC, which systemd >= 253 requires); send ``ready()``
        when the reload is done."""
        usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        return self.notify(f"RELOADING=1\nMONOTONIC_USEC={usec}")

    def watchdog(self) -> bool:
        return self.notify("WATCHDOG=1")

    def watchdog_interval(self) -> float | None:
        """Seconds between pings: half of ``WATCHDOG_USEC``; None when the watchdog is off, the
        value is malformed, or ``WATCHDOG_PID`` names another process (as sd_watchdog_enabled)."""
        if not self.enabled:
            return None
        raw = self._env.get("WATCHDOG_USEC")
        if not raw:
            return None
        try:
            usec = int(raw)
        except ValueError:
            log.warning("ignoring malformed WATCHDOG_USEC=%r", raw)
            return None
        if usec <= 0:
            return None
        pid = self._env.get("WATCHDOG_PID")
        if pid:
            try:
                if int(pid) != os.getpid():
                    return None
            except ValueError:
                log.warning("ignoring malformed WATCHDOG_PID=%r", pid)
                return None
        return usec / 2 / 1_000_000


async def run_watchdog(notifier: Notifier, *,
                       task_status: trio.TaskStatus[float | None] = trio.TASK_STATUS_IGNORED) -> None:
    """Ping WATCHDOG=1 at ``notifier.watchdog_interval()`` until cancelled.

    Reports the interval through ``nursery.start`` (None = watchdog off: returns at once). The
    send is a datagram to PID 1, which always drains its socket, so it is called directly in the
    loop: a ping that only a worker thread could send would not prove the loop is alive.
    """
    interval = notifier.watchdog_interval()
    task_status.started(interval)
    if interval is None:
        return
    log.debug("watchdog: pinging every %.3f s", interval)
    while True:
        notifier.watchdog()
        await trio.sleep(interval)
