"""Process helpers: bounded waits on a child's output, process-group kills, liveness."""

from __future__ import annotations

import os
import select
import signal
import subprocess
import time


def read_line(proc: subprocess.Popen, timeout: float = 10.0) -> str:
    """Read one line from `proc.stdout` (which must be a pipe), waiting at most `timeout` s.

    Reads the raw fd byte by byte so no data is left in a Python buffer: `communicate()`
    afterwards still sees everything that follows. Raises TimeoutError with whatever was
    read so far, or EOFError if the process closed stdout first.
    """
    if proc.stdout is None:
        raise ValueError("process was not started with stdout=PIPE")
    fd = proc.stdout.fileno()
    deadline = time.monotonic() + timeout
    buf = bytearray()
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError(f"no full line within {timeout}s (got {bytes(buf)!r})")
        ready, _, _ = select.select([fd], [], [], left)
        if not ready:
            continue
        ch = os.read(fd, 1)
        if not ch:
            raise EOFError(f"stdout closed before a full line (got {bytes(buf)!r})")
        if ch == b"\n":
            return buf.decode(errors="replace")
        buf += ch


def kill_group(proc: subprocess.Popen, sig: int = signal.SIGKILL, timeout: float = 5.0) -> int | None:
    """Send `sig` to the process group led by `proc` and wait for `proc` to exit.

    Returns its exit code, or None if it is still running after `timeout` s (only possible
    for a catchable signal). The group exists because the rig starts every process with
    `start_new_session=True`.
    """
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            pass
    else:
        # The leader is gone, but children in its group may still run.
        try:
            os.killpg(proc.pid, sig)
        except (ProcessLookupError, PermissionError):
            pass
    try:
        return proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        return None


def is_running(pid: int) -> bool:
    """True if `pid` exists and is not a zombie.

    PID 1 on some machines (this one included) does not reap orphans, so a killed
    grandchild can linger as a zombie: it holds no sockets and no namespace.
    """
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            stat = fh.read()
    except (FileNotFoundError, ProcessLookupError):
        return False
    state = stat[stat.rindex(b")") + 2 : stat.rindex(b")") + 3]
    return state not in (b"Z", b"X")


def start_ticks(pid: int) -> int | None:
    """Start time of `pid` in clock ticks since boot (field 22 of /proc/pid/stat), or None."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            stat = fh.read()
    except (FileNotFoundError, ProcessLookupError):
        return None
    fields = stat[stat.rindex(b")") + 2 :].split()
    return int(fields[19])


def wait_gone(pids: list[int], timeout: float = 5.0) -> list[int]:
    """Wait (bounded) until none of `pids` is running; return the ones still running."""
    deadline = time.monotonic() + timeout
    left = [p for p in pids if is_running(p)]
    while left and time.monotonic() < deadline:
        time.sleep(0.02)
        left = [p for p in left if is_running(p)]
    return left
