"""Host health figures for the status message: load, SoC temperature, this process's RSS and CPU.

Everything here reads small files under /proc and /sys and never raises: a figure that cannot be
read is ``None`` (a container has no thermal zone; an x86 box may have several, none of them the
"SoC").
"""

from __future__ import annotations

import os
import time
from pathlib import Path

__all__ = ["load_average", "soc_temperature", "rss_bytes", "ProcessCpu"]

THERMAL_ROOT = Path("/sys/class/thermal")
# Zone types that mean "the chip" (Raspberry Pi: cpu-thermal; others: soc/x86_pkg_temp).
_SOC_TYPES = ("cpu-thermal", "cpu_thermal", "soc_thermal", "soc-thermal", "x86_pkg_temp")


def load_average() -> float | None:
    """The 1-minute load average divided by the number of CPUs (1.0 = every core busy)."""
    try:
        return round(os.getloadavg()[0] / (os.cpu_count() or 1), 3)
    except OSError:
        return None


def soc_temperature(root: Path = THERMAL_ROOT) -> float | None:
    """The SoC temperature in °C: the first zone whose type names the chip, else thermal_zone0;
    None when there is no readable zone."""
    try:
        zones = sorted(root.glob("thermal_zone*"))
    except OSError:
        return None
    chosen: Path | None = None
    for zone in zones:
        try:
            kind = (zone / "type").read_text().strip()
        except OSError:
            continue
        if kind in _SOC_TYPES:
            chosen = zone
            break
    if chosen is None and zones:
        chosen = zones[0]
    if chosen is None:
        return None
    try:
        milli = int((chosen / "temp").read_text().strip())
    except (OSError, ValueError):
        return None
    return round(milli / 1000.0, 1)


def rss_bytes(pid: int | str = "self") -> int | None:
    """Resident set size of a process (default: this one) from /proc/<pid>/statm."""
    try:
        fields = Path(f"/proc/{pid}/statm").read_text().split()
        return int(fields[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return None


class ProcessCpu:
    """CPU use of this process as a fraction of one core, over windows of at least
    ``min_window_s`` (a call sooner than that returns the previous window's figure, so callers
    that ask often do not get noisy millisecond windows)."""

    def __init__(self, min_window_s: float = 1.0) -> None:
        self.min_window_s = min_window_s
        self._last_cpu = time.process_time()
        self._last_wall = time.monotonic()
        self._value = 0.0

    def sample(self) -> float:
        cpu, wall = time.process_time(), time.monotonic()
        d_cpu, d_wall = cpu - self._last_cpu, wall - self._last_wall
        if d_wall >= self.min_window_s:
            self._last_cpu, self._last_wall = cpu, wall
            self._value = round(d_cpu / d_wall, 3)
        return self._value
