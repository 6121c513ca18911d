"""agent.logs: readable stderr lines, journald fields, and the choice between them."""

from __future__ import annotations

import io
import json
import logging
import os
import re
import shutil
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.config import LoggingConfig
from agent.logs import ReadableFormatter, journal_fields, setup_logging, use_journal

ROOT = Path(__file__).resolve().parents[2]
PEER = "12D3KooWD3eckifWpRn9wQpMG9R9hX3sD158z7EqHWmweQAJU5SA"
LINE_RE = r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{3}"


@pytest.fixture(autouse=True)
def restore_root_logger() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    libp2p_level = logging.getLogger("libp2p").level
    yield
    for h in list(root.handlers):
        if h not in handlers:
            root.removeHandler(h)
    root.setLevel(level)
    logging.getLogger("libp2p").setLevel(libp2p_level)


def make_record(msg: str = "peer connected", level: int = logging.INFO, name: str = "agent.mesh",
                extra: dict | None = None, exc: bool = False) -> logging.LogRecord:
    logger = logging.getLogger(name)
    exc_info = None
    if exc:
        try:
            raise ValueError("boom")
        except ValueError:
            exc_info = sys.exc_info()
    return logger.makeRecord(name, level, __file__, 42, msg, (), exc_info, func="f", extra=extra)


# --- stderr ----------------------------------------------------------------------------------

def test_stderr_line_format_with_extra_fields() -> None:
    out = io.StringIO()
    handler = setup_logging(LoggingConfig(journal="never"), "pi-kitchen", stream=out, env={})
    assert isinstance(handler.formatter, ReadableFormatter)
    logging.getLogger("agent.mesh").info("peer connected", extra={"peer": PEER, "stream": 7})
    logging.getLogger("agent.service").warning("device %s lost", "hw:0", extra={"error": "no such device"})
    lines = out.getvalue().splitlines()
    assert re.fullmatch(rf"{LINE_RE} INFO  mesh: peer connected peer={PEER} stream=7", lines[0]), lines
    assert re.fullmatch(rf'{LINE_RE} WARNING service: device hw:0 lost error="no such device"',
                        lines[1]), lines


def test_stderr_shows_exceptions_and_respects_levels() -> None:
    out = io.StringIO()
    setup_logging(LoggingConfig(level="INFO", journal="never"), "n", stream=out, env={})
    log = logging.getLogger("agent.talk")
    log.debug("hidden")
    try:
        raise RuntimeError("xrun storm")
    except RuntimeError:
        log.exception("capture failed")
    text = out.getvalue()
    assert "hidden" not in text
    assert "ERROR talk: capture failed\nTraceback (most recent call last):" in text
    assert "RuntimeError: xrun storm" in text


def test_setup_again_replaces_the_handler_and_levels() -> None:
    first, second = io.StringIO(), io.StringIO()
    setup_logging(LoggingConfig(level="WARNING", journal="never"), "n", stream=first, env={})
    setup_logging(LoggingConfig(level="DEBUG", libp2p_level="ERROR", journal="never"), "n",
                  stream=second, env={})
    ours = [h for h in logging.getLogger().handlers if getattr(h, "_avi_agent", False)]
    assert len(ours) == 1
    logging.getLogger("agent.x").debug("now visible")
    logging.getLogger("libp2p.pubsub").warning("quiet library")
    assert first.getvalue() == ""
    assert "now visible" in second.getvalue() and "quiet library" not in second.getvalue()


# --- choosing the journal --------------------------------------------------------------------

def test_use_journal_modes(tmp_path: Path) -> None:
    with open(tmp_path / "stream", "w") as f:
        st = os.fstat(f.fileno())
        match = {"JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}"}
        assert use_journal("auto", match, f)
        assert not use_journal("auto", {"JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino + 1}"}, f)
        assert not use_journal("auto", {"JOURNAL_STREAM": "garbage"}, f)
        assert not use_journal("auto", {}, f)
        assert not use_journal("never", match, f)
        assert use_journal("always", {}, f)
        assert not use_journal("auto", match, io.StringIO())  # no fd: not the journal


def test_auto_picks_journal_handler_when_stderr_is_the_journal(tmp_path: Path) -> None:
    from systemd.journal import JournalHandler

    with open(tmp_path / "stream", "w") as f:
        st = os.fstat(f.fileno())
        env = {"JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}"}
        assert isinstance(setup_logging(LoggingConfig(), "n", env=env, stream=f), JournalHandler)
        assert isinstance(setup_logging(LoggingConfig(), "n", env={}, stream=f), logging.StreamHandler)


def test_journal_handler_is_silent_without_journald(capsys: pytest.CaptureFixture[str]) -> None:
    handler = setup_logging(LoggingConfig(journal="always"), "pi-kitchen", env={})
    from systemd.journal import JournalHandler

    assert isinstance(handler, JournalHandler)
    logging.getLogger("agent.mesh").info("peer connected", extra={"peer": PEER})
    assert "Logging error" not in capsys.readouterr().err


def test_falls_back_to_stderr_without_systemd_python(monkeypatch: pytest.MonkeyPatch) -> None:
    import agent.logs as logs

    logs._journal_handler_class.cache_clear()
    monkeypatch.setitem(sys.modules, "systemd", None)
    out = io.StringIO()
    try:
        handler = setup_logging(LoggingConfig(journal="always"), "n", env={}, stream=out)
    finally:
        logs._journal_handler_class.cache_clear()
    assert isinstance(handler, logging.StreamHandler)
    assert "systemd-python is not installed" in out.getvalue()


# --- record -> journal fields ----------------------------------------------------------------

def test_journal_fields_mapping() -> None:
    rec = make_record(extra={"peer": PEER, "stream": 7, "xruns": 3, "message_id": None,
                             "priority": "0", "bad-name": 1, "raw": b"\xffab"})
    f = journal_fields(rec, "pi-kitchen")
    assert f["MESSAGE"] == "peer connected"
    assert f["PRIORITY"] == "6"
    assert f["SYSLOG_IDENTIFIER"] == "avi-agent"
    assert f["NODE"] == "pi-kitchen"
    assert f["PEER"] == PEER and f["STREAM"] == "7" and f["XRUNS"] == "3"
    assert f["LOGGER"] == "agent.mesh" and f["CODE_LINE"] == "42" and f["CODE_FUNC"] == "f"
    assert "MESSAGE_ID" not in f  # None values are left out
    assert "BAD-NAME" not in f and "bad-name" not in f  # not a valid journal field name
    assert f["RAW"] == "\ufffdab"
    assert all(k == k.upper() for k in f)
    assert all(isinstance(v, str) for v in f.values())


def test_journal_priorities_and_exceptions() -> None:
    prios = {lvl: journal_fields(make_record(level=lvl), "n")["PRIORITY"]
             for lvl in (logging.DEBUG, logging.INFO, logging.WARNING, logging.ERROR,
                         logging.CRITICAL, 60)}
    assert prios == {10: "7", 20: "6", 30: "4", 40: "3", 50: "2", 60: "1"}
    f = journal_fields(make_record("failed", level=logging.ERROR, exc=True), "n")
    assert f["MESSAGE"].startswith("failed\nTraceback")
    assert f["EXCEPTION_TEXT"].endswith("ValueError: boom")


# --- end to end through the native journal protocol ------------------------------------------

RECEIVER = textwrap.dedent("""
    import json, logging, socket, struct, sys
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind("/run/systemd/journal/socket")
    sock.settimeout(10)
    sys.path.insert(0, sys.argv[1])
    from agent.config import LoggingConfig
    from agent.logs import setup_logging
    setup_logging(LoggingConfig(journal="always"), "pi-kitchen", env={})
    logging.getLogger("agent.mesh").info("peer connected", extra={"peer": sys.argv[2], "stream": 5})
    data = sock.recv(65536)
    fields, i = {}, 0
    while i < len(data):  # KEY=value\\n, or KEY\\n<le64 length><bytes>\\n for multi-line values
        nl = data.index(b"\\n", i)
        line = data[i:nl]
        if b"=" in line:
            k, v = line.split(b"=", 1)
            i = nl + 1
        else:
            k, n = line, struct.unpack("<Q", data[nl + 1:nl + 9])[0]
            v = data[nl + 9:nl + 9 + n]
            i = nl + 9 + n + 1
        fields[k.decode()] = v.decode()
    print(json.dumps(fields))
""")


def test_entry_reaches_a_journal_socket_with_fields(tmp_path: Path) -> None:
    """Binds the journal socket in a private mount namespace (tmpfs over /run/systemd), so the
    real libsystemd client code path runs without touching this machine's /run."""
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        pytest.skip("needs root and unshare for a private mount namespace")
    script = tmp_path / "receiver.py"
    script.write_text(RECEIVER)
    cmd = ["unshare", "--mount", "--propagation", "private", "sh", "-c",
           'mount -t tmpfs tmpfs /run/systemd && mkdir /run/systemd/journal && exec "$@"', "sh",
           sys.executable, str(script), str(ROOT), PEER]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    if proc.returncode != 0 and "unshare failed" in proc.stderr:
        pytest.skip(f"no mount namespace here: {proc.stderr.strip()}")
    assert proc.returncode == 0, proc.stderr
    fields = json.loads(proc.stdout)
    assert fields["MESSAGE"] == "peer connected"
    assert fields["PEER"] == PEER and fields["STREAM"] == "5"
    assert fields["NODE"] == "pi-kitchen" and fields["SYSLOG_IDENTIFIER"] == "avi-agent"
    assert fields["PRIORITY"] == "6"
