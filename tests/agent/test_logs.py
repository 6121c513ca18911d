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
from agent.logs import (ReadableFormatter, Summarizer, adopt_libp2p_logging, journal_fields, setup_logging,
                        short_peer_ids, use_journal)

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
    short = f"{PEER[:6]}…{PEER[-8:]}"  # as the monitor shows it
    assert re.fullmatch(rf"{LINE_RE} INFO     mesh: peer connected peer={short} stream=7", lines[0]), lines
    assert re.fullmatch(rf'{LINE_RE} WARNING  service: device hw:0 lost error="no such device"',
                        lines[1]), lines
    # The level column has one width, so the messages line up.
    assert lines[0].index(" mesh:") == lines[1].index(" service:")


def test_peer_ids_are_shortened_except_in_multiaddrs() -> None:
    text = f"node {PEER} listening on /ip4/10.0.0.2/tcp/4001/p2p/{PEER}"
    assert short_peer_ids(text) == f"node {PEER[:6]}…{PEER[-8:]} listening on /ip4/10.0.0.2/tcp/4001/p2p/{PEER}"
    assert short_peer_ids("no ids here 12D3KooW") == "no ids here 12D3KooW"


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
    assert "ERROR    talk: capture failed\nTraceback (most recent call last):" in text
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


def test_journal_always_without_journald_falls_back_to_stderr_with_one_warning(tmp_path: Path) -> None:
    """journal = "always" where no journald listens (journal.send would drop every line
    silently): stderr instead, and one warning saying so."""
    out = io.StringIO()
    handler = setup_logging(LoggingConfig(journal="always"), "pi-kitchen", env={}, stream=out,
                            journal_socket=tmp_path / "no-socket")
    assert isinstance(handler, logging.StreamHandler) and isinstance(handler.formatter, ReadableFormatter)
    logging.getLogger("agent.mesh").info("peer connected", extra={"peer": PEER})
    lines = out.getvalue().splitlines()
    assert len(lines) == 2, lines
    assert "WARNING  logs: logging.journal = \"always\" but there is no journald socket" in lines[0]
    assert "peer connected" in lines[1]


def test_falls_back_to_stderr_without_systemd_python(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import agent.logs as logs

    logs._journal_handler_class.cache_clear()
    monkeypatch.setitem(sys.modules, "systemd", None)
    out = io.StringIO()
    try:
        sock = tmp_path / "socket"
        sock.touch()  # a journald socket exists, but the module to use it does not
        handler = setup_logging(LoggingConfig(journal="always"), "n", env={}, stream=out, journal_socket=sock)
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


# --- an SD card: summaries, py-libp2p, alsa-lib ----------------------------------------------

class Clock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def test_summarizer_one_line_per_key_then_one_summary_a_minute() -> None:
    clock = Clock()
    out = io.StringIO()
    handler = setup_logging(LoggingConfig(journal="never"), "n", stream=out, env={}, clock=clock)
    s: Summarizer = handler.summarizer
    lg = logging.getLogger("libp2p.transport.tcp.tcp")
    for i in range(300):  # a departed peer redialled every 0.2 s for a minute, different ports
        lg.error("Failed to open TCP stream: all attempts to connect to 127.0.0.1:%d failed", 40000 + i)
        logging.getLogger("agent.service").info("peer connected: %s", i, extra={"_summary": "peers"})
        logging.getLogger("libp2p.kad_dht").warning("Failed to read DHT message")  # same key: libp2p
        clock.t += 0.2
    logging.getLogger("agent.service").info("not summarised")
    lines = out.getvalue().splitlines()
    assert len(lines) == 3, lines  # the first of each key, and the unkeyed line
    assert "127.0.0.1:40000 failed" in lines[0] and "ERROR    libp2p.transport.tcp.tcp:" in lines[0]
    clock.t += 0.1
    assert s.flush() == 1  # the minute is over: ONE line sums up every key
    summary = out.getvalue().splitlines()[3]
    # The level of the worst record, py-libp2p's counting as WARNING at most (its ERROR for a
    # failed dial of a departed peer is what the mesh expects).
    assert "WARNING  logs: in the last 60 s: " in summary, summary
    assert "libp2p +599 more (last: Failed to read DHT message)" in summary
    assert "peers +299 more (last: peer connected: 299)" in summary and "repeated=898" in summary
    assert s.flush() == 0  # at most one a minute
    # Still busy: held back and counted; then quiet for a minute: the next record passes at once.
    lg.error("Failed to open TCP stream: all attempts to connect to 127.0.0.1:%d failed", 1)
    clock.t += 61
    assert s.flush() == 1 and "libp2p +1 more" in out.getvalue().splitlines()[-1]
    clock.t += 61
    assert s.flush() == 0
    lg.error("Failed to open TCP stream: all attempts to connect to 127.0.0.1:%d failed", 2)
    assert out.getvalue().splitlines()[-1].endswith("127.0.0.1:2 failed")


def test_summarizer_is_bounded() -> None:
    s = Summarizer(60, clock=Clock(), max_keys=10)
    for i in range(100):
        s.filter(make_record("m", extra={"_summary": f"k{i}"}))
    assert len(s._windows) == 10


def test_libp2p_records_go_through_our_handler_after_its_import_resets_them() -> None:
    """py-libp2p's import sets its logger to propagate=False with no handler (its records
    then reach Python's last-resort handler: bare stderr lines); adopt_libp2p_logging undoes it."""
    out = io.StringIO()
    setup_logging(LoggingConfig(journal="never", libp2p_level="INFO"), "n", stream=out, env={})
    from libp2p.utils.logging import setup_logging as libp2p_setup

    libp2p_setup()  # what `import libp2p` does
    lg = logging.getLogger("libp2p")
    assert lg.propagate is False and lg.level == logging.WARNING
    adopt_libp2p_logging()
    assert lg.propagate is True and lg.level == logging.INFO and lg.handlers == []
    logging.getLogger("libp2p.pubsub.gossipsub").info("heartbeat %d", 3)
    assert re.fullmatch(rf"{LINE_RE} INFO     libp2p.pubsub.gossipsub: heartbeat 3", out.getvalue().strip())


ALSA_PROBE = textwrap.dedent("""
    import logging, sys
    sys.path.insert(0, sys.argv[1])
    from agent.config import LoggingConfig
    from agent.logs import setup_logging
    setup_logging(LoggingConfig(journal="never", level=sys.argv[2]), "n", env={})
    from hw.audio.alsa import _alsaaudio
    aa = _alsaaudio()
    for dev in ("default", "nosuchpcm", "hw:7"):
        try:
            aa.PCM(device=dev)
        except aa.ALSAAudioError:
            pass
""")


def test_alsa_lib_errors_go_to_our_log_not_to_stderr(tmp_path: Path) -> None:
    pytest.importorskip("alsaaudio")
    script = tmp_path / "probe.py"
    script.write_text(ALSA_PROBE)
    env = {**os.environ, "ALSA_CONFIG_PATH": "/usr/share/alsa/alsa.conf"}
    info = subprocess.run([sys.executable, str(script), str(ROOT), "INFO"], capture_output=True, text=True,
                          timeout=60, env=env)
    assert info.returncode == 0, info.stderr
    assert info.stderr == "", info.stderr  # no "ALSA lib pcm.c:...(snd_pcm_open_noupdate)" block
    debug = subprocess.run([sys.executable, str(script), str(ROOT), "DEBUG"], capture_output=True, text=True,
                           timeout=60, env=env)
    assert "DEBUG    hw.audio.alsalib: alsa-lib snd_pcm_open_noupdate: Unknown PCM" in debug.stderr
    assert "ALSA lib" not in debug.stderr
