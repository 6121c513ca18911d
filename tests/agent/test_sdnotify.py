"""agent.sdnotify against a real AF_UNIX datagram socket bound as NOTIFY_SOCKET.

The receiver enables SO_PASSCRED (sender pid, as systemd checks for NotifyAccess=main) and
SO_TIMESTAMPNS (kernel arrival time), so timing assertions do not depend on when the
receiving thread happens to be scheduled.
"""

from __future__ import annotations

import logging
import os
import socket
import struct
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import trio

from agent.sdnotify import Notifier, run_watchdog

SO_TIMESTAMPNS = getattr(socket, "SO_TIMESTAMPNS", 35)


@dataclass(frozen=True)
class Datagram:
    data: str
    pid: int
    at: float  # kernel arrival time, CLOCK_REALTIME (comparable with time.time())


class Receiver:
    def __init__(self, sock: socket.socket, address: str) -> None:
        self.sock = sock
        self.address = address  # the NOTIFY_SOCKET value

    def recv(self, timeout: float = 5.0) -> Datagram:
        self.sock.settimeout(timeout)
        data, anc, _flags, _addr = self.sock.recvmsg(4096, socket.CMSG_SPACE(64) * 2)
        pid, at = -1, 0.0
        for level, ctype, payload in anc:
            if level == socket.SOL_SOCKET and ctype == socket.SCM_CREDENTIALS:
                pid = struct.unpack("3i", payload[:12])[0]
            elif level == socket.SOL_SOCKET and ctype == SO_TIMESTAMPNS:
                sec, nsec = struct.unpack("qq", payload[:16])
                at = sec + nsec / 1e9
        return Datagram(data.decode(), pid, at)

    def recv_none(self, timeout: float = 0.3) -> None:
        with pytest.raises(TimeoutError):
            self.recv(timeout)


@pytest.fixture(params=["path", "abstract"])
def receiver(request: pytest.FixtureRequest, tmp_path: Path,
             monkeypatch: pytest.MonkeyPatch) -> Iterator[Receiver]:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    if request.param == "path":
        path = str(tmp_path / "notify.sock")
        sock.bind(path)
        address = path
    else:
        name = f"avi-test-{uuid.uuid4().hex}"
        sock.bind("\0" + name)
        address = "@" + name
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
    sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
    monkeypatch.setenv("NOTIFY_SOCKET", address)
    monkeypatch.delenv("WATCHDOG_USEC", raising=False)
    monkeypatch.delenv("WATCHDOG_PID", raising=False)
    try:
        yield Receiver(sock, address)
    finally:
        sock.close()


def test_state_sequence_arrives_from_this_process(receiver: Receiver) -> None:
    n = Notifier()
    assert n.enabled
    assert n.status("starting: opening devices")
    assert n.ready()
    assert n.status("peers: 2\nstreams: 1 in, 0 out\n\nerrors: none")
    assert n.watchdog()
    assert n.reloading()
    assert n.ready()
    assert n.stopping()
    got = [receiver.recv() for _ in range(7)]
    assert all(d.pid == os.getpid() for d in got)
    texts = [d.data for d in got]
    assert texts[:4] == ["STATUS=starting: opening devices", "READY=1",
                         "STATUS=peers: 2 | streams: 1 in, 0 out | errors: none", "WATCHDOG=1"]
    first, second = texts[4].split("\n")
    assert first == "RELOADING=1"
    assert second.startswith("MONOTONIC_USEC=")
    assert abs(int(second.split("=")[1]) - time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000) < 60e6
    assert texts[5:] == ["READY=1", "STOPPING=1"]
    receiver.recv_none()


def test_no_op_without_notify_socket(receiver: Receiver, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NOTIFY_SOCKET")
    monkeypatch.setenv("WATCHDOG_USEC", "10000000")
    n = Notifier()
    assert not n.enabled
    assert [n.ready(), n.status("x"), n.watchdog(), n.stopping(), n.reloading()] == [False] * 5
    assert n.watchdog_interval() is None
    receiver.recv_none()


def test_no_op_without_systemd_python(receiver: Receiver, monkeypatch: pytest.MonkeyPatch,
                                      caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setitem(sys.modules, "systemd", None)  # makes `import systemd` raise ImportError
    with caplog.at_level(logging.WARNING, logger="agent.sdnotify"):
        n = Notifier()
    assert not n.enabled
    assert n.ready() is False
    assert "systemd-python is not installed" in caplog.text
    receiver.recv_none()


def test_vanished_socket_is_logged_not_raised(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                              caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "gone.sock"))
    n = Notifier()
    with caplog.at_level(logging.DEBUG, logger="agent.sdnotify"):
        assert n.ready() is False
        assert n.status("still running") is False
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "gone.sock" in warnings[0].getMessage()


def test_watchdog_interval(receiver: Receiver, monkeypatch: pytest.MonkeyPatch) -> None:
    assert Notifier().watchdog_interval() is None
    monkeypatch.setenv("WATCHDOG_USEC", "10000000")
    assert Notifier().watchdog_interval() == 5.0
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid()))
    assert Notifier().watchdog_interval() == 5.0
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid() + 1))  # meant for another process
    assert Notifier().watchdog_interval() is None
    monkeypatch.delenv("WATCHDOG_PID")
    for bad in ("ten", "0", "-5"):
        monkeypatch.setenv("WATCHDOG_USEC", bad)
        assert Notifier().watchdog_interval() is None


async def test_run_watchdog_returns_when_off(receiver: Receiver) -> None:
    async with trio.open_nursery() as nursery:
        assert await nursery.start(run_watchdog, Notifier()) is None
    receiver.recv_none()


async def test_watchdog_pings_stop_while_the_loop_is_blocked(receiver: Receiver,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WATCHDOG_USEC", "200000")  # ping every 0.1 s
    got: list[Datagram] = []
    stop = threading.Event()

    def drain() -> None:  # keep the socket queue empty so a send never waits on us
        while not stop.is_set():
            try:
                got.append(receiver.recv(timeout=0.1))
            except TimeoutError:
                continue

    thread = threading.Thread(target=drain, daemon=True)
    thread.start()
    marks: dict[str, float] = {}
    try:
        async with trio.open_nursery() as nursery:
            interval = await nursery.start(run_watchdog, Notifier())
            assert interval == pytest.approx(0.1)
            marks["start"] = time.time()
            await trio.sleep(1.0)
            marks["block"] = time.time()
            time.sleep(1.5)  # a stray blocking call: the loop does not turn
            marks["unblock"] = time.time()
            await trio.sleep(1.0)
            marks["end"] = time.time()
            nursery.cancel_scope.cancel()
    finally:
        stop.set()
        thread.join(5)
    while True:  # whatever the thread had not read yet
        try:
            got.append(receiver.recv(timeout=0.2))
        except TimeoutError:
            break
    assert all(d.data == "WATCHDOG=1" and d.pid == os.getpid() for d in got)
    before = [d for d in got if d.at < marks["block"]]
    during = [d for d in got if marks["block"] + 0.01 < d.at < marks["unblock"]]
    after = [d for d in got if d.at >= marks["unblock"]]
    why = {"marks": {k: round(v - marks["start"], 3) for k, v in marks.items()},
           "pings": [round(d.at - marks["start"], 3) for d in got]}
    assert len(before) >= 3, why  # ~10 expected
    assert during == [], why
    assert len(after) >= 3, why  # ~10 expected
    assert after[0].at - marks["unblock"] < 1.0, why  # resumes as soon as the loop turns again
    assert after[0].at - before[-1].at >= 1.4, why
