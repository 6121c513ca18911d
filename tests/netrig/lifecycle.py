"""Names, ownership and clean-up of the rig's namespaces.

Every namespace a rig makes is called `netrig-<pid>-<start>-<seq>-<role>`: the pid and
start time (clock ticks since boot) of the process that owns it, so a later run can tell
a leftover of a dead process (remove it) from a live rig of a parallel run (leave it).
Rigs made by hand (`python -m tests.netrig up`) are called `netrig-manual-<role>` and are
only removed by `down`.

Live rigs are torn down on normal exit (atexit), on SIGTERM/SIGHUP (handler installed
when the first rig comes up, chained to any previous one), and on KeyboardInterrupt
through the context manager. SIGKILL cannot be caught: `cleanup_stale()` runs before
every rig comes up and removes what a killed run left.
"""

from __future__ import annotations

import atexit
import itertools
import os
import signal
import threading
from typing import Protocol

from ._sh import sh
from .procs import is_running, start_ticks, wait_gone

PREFIX = "netrig-"
MANUAL_PREFIX = PREFIX + "manual"

_seq = itertools.count()
_lock = threading.RLock()
_live: dict[int, "_Downable"] = {}
_hooks_installed = False
_previous_handlers: dict[int, object] = {}
rigs_created = 0  # read by the pytest summary hook


class _Downable(Protocol):
    def down(self) -> None: ...


def new_prefix() -> str:
    """A name prefix unique to this process and call."""
    pid = os.getpid()
    return f"{PREFIX}{pid}-{start_ticks(pid)}-{next(_seq)}"


def list_namespaces() -> list[str]:
    """Names of all namespaces `ip netns` knows, first word of each line."""
    out = sh(["ip", "netns", "list"]).stdout
    return [line.split()[0] for line in out.splitlines() if line.strip()]


def owner_alive(name: str) -> bool:
    """True unless `name` is a pid-tagged rig namespace whose owner is gone."""
    parts = name[len(PREFIX):].split("-")
    if len(parts) < 2 or not parts[0].isdigit() or not parts[1].isdigit():
        return True  # manual or foreign: not ours to judge
    pid, ticks = int(parts[0]), int(parts[1])
    return is_running(pid) and start_ticks(pid) == ticks


def namespace_pids(ns: str) -> list[int]:
    """Pids of processes whose network namespace is `ns`."""
    res = sh(["ip", "netns", "pids", ns], check=False)
    return [int(p) for p in res.stdout.split() if p.isdigit()]


def destroy_namespaces(names: list[str]) -> list[str]:
    """SIGKILL every process inside `names`, then delete the namespaces.

    Deleting a namespace also deletes every link inside it (veth ends, the bridge).
    Returns a list of problems (empty when all went well); never raises.
    """
    problems: list[str] = []
    pids: list[int] = []
    for ns in names:
        for pid in namespace_pids(ns):
            if pid == os.getpid():
                continue
            try:
                os.kill(pid, signal.SIGKILL)
                pids.append(pid)
            except ProcessLookupError:
                pass
            except OSError as exc:
                problems.append(f"kill {pid} in {ns}: {exc}")
    still = wait_gone(pids, timeout=5.0)
    if still:
        problems.append(f"processes still running after SIGKILL: {still}")
    for ns in names:
        res = sh(["ip", "netns", "delete", ns], check=False)
        if res.returncode != 0 and "No such file" not in res.stderr:
            problems.append(f"ip netns delete {ns}: {res.stderr.strip()}")
    return problems


def cleanup_stale(prefix: str = PREFIX) -> list[str]:
    """Remove rig namespaces (and processes in them) whose owning process is dead.

    Rigs of live processes and hand-made rigs are left alone. Returns the names removed.
    """
    stale = [n for n in list_namespaces() if n.startswith(prefix) and not owner_alive(n)]
    if stale:
        destroy_namespaces(stale)
    return stale


def register(rig: _Downable) -> None:
    """Track a live rig so exit or a termination signal tears it down."""
    global rigs_created
    with _lock:
        _install_hooks()
        _live[id(rig)] = rig
        rigs_created += 1


def unregister(rig: _Downable) -> None:
    with _lock:
        _live.pop(id(rig), None)


def teardown_all() -> None:
    """Tear down every live rig of this process (best effort, never raises)."""
    with _lock:
        rigs = list(_live.values())
    for rig in rigs:
        try:
            rig.down()
        except Exception:  # noqa: BLE001 - exit path: keep going with the others
            pass


def _on_signal(signum: int, frame: object) -> None:
    teardown_all()
    prev = _previous_handlers.get(signum, signal.SIG_DFL)
    if callable(prev):
        prev(signum, frame)
    elif prev == signal.SIG_DFL:
        signal.signal(signum, signal.SIG_DFL)
        os.kill(os.getpid(), signum)


def _install_hooks() -> None:
    global _hooks_installed
    if _hooks_installed:
        return
    _hooks_installed = True
    atexit.register(teardown_all)
    if threading.current_thread() is not threading.main_thread():
        return  # signal handlers can only be set from the main thread; atexit still holds
    for signum in (signal.SIGTERM, signal.SIGHUP):
        prev = signal.getsignal(signum)
        if prev == signal.SIG_IGN:
            continue
        _previous_handlers[signum] = prev
        signal.signal(signum, _on_signal)


