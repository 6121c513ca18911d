"""Logging: journald with structured fields under systemd, readable lines on stderr otherwise.

Context goes in ``extra``: ``log.info("peer connected", extra={"peer": pid, "stream": sid})``.
In the journal these become ``PEER=`` / ``STREAM=`` fields (plus ``NODE=`` and
``SYSLOG_IDENTIFIER=avi-agent`` on every entry), so ``journalctl -u avi-agent PEER=12D3...``
filters by peer; on stderr they are appended as ``peer=12D3Ko…WmweQAJU`` (peer ids shortened
the way ``avi-agent monitor`` shows them).

Fit for an SD card:
- py-libp2p's records (it sets its logger to not propagate, with no handler: they would reach
  Python's last-resort handler as bare stderr lines) go through the same handler, format and
  journald fields, at ``logging.libp2p_level`` (:func:`adopt_libp2p_logging`, called again after
  py-libp2p is imported, since its import resets its logger).
- Repeated records are summarised by :class:`Summarizer`: all of py-libp2p's under one key, ours
  when they carry ``extra={"_summary": key}`` (``peers``: every membership change; ``audio-timing``:
  xruns and playout slips). At most one line per key per ``SUMMARY_PERIOD_S`` (60 s), the later
  ones counted into a ``(+N more in the last 60 s)`` line (field ``repeated=N``) at its end.
- ``journal = "always"`` without a journald socket falls back to stderr with one warning.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import re
import sys
import time
import traceback
from collections.abc import Callable, Hashable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from agent.config import LoggingConfig

__all__ = ["SYSLOG_IDENTIFIER", "setup_logging", "use_journal", "journal_fields",
           "extra_fields", "ReadableFormatter", "Summarizer", "adopt_libp2p_logging", "short_peer_ids",
           "JOURNAL_SOCKET", "SUMMARY_PERIOD_S"]

SYSLOG_IDENTIFIER = "avi-agent"
JOURNAL_SOCKET = Path("/run/systemd/journal/socket")
SUMMARY_PERIOD_S = 60.0
LEVEL_WIDTH = len("CRITICAL")
_PEER_ID_RE = re.compile(r"(?<![/\w])(12D3KooW[1-9A-HJ-NP-Za-km-z]{44}|Qm[1-9A-HJ-NP-Za-km-z]{44})(?!\w)")


def short_peer_ids(text: str) -> str:
    """``12D3KooWD3eckifWpRn9wQpMG9R9hX3sD158z7EqHWmweQAJU5SA`` -> ``12D3Ko…WmweQAJU`` (as the
    monitor shows them), except inside multiaddrs (``/p2p/<id>`` stays whole, to be copied)."""
    return _PEER_ID_RE.sub(lambda m: f"{m[1][:6]}…{m[1][-8:]}", text)

# Attributes every LogRecord has; anything else on a record came from `extra=`.
_STANDARD_ATTRS = frozenset(logging.LogRecord("", 0, "", 0, "", (), None).__dict__) | {
    "message", "asctime", "taskName"}
_FIELD_RE = re.compile(r"^[A-Z][A-Z0-9_]{0,63}$")
# Fields the handler sets itself; an `extra` of the same name must not replace them.
_RESERVED = frozenset({"MESSAGE", "PRIORITY", "NODE", "SYSLOG_IDENTIFIER", "LOGGER", "CODE_FILE",
                       "CODE_LINE", "CODE_FUNC", "THREAD_NAME", "EXCEPTION_TEXT"})
_PRIORITIES = ((logging.DEBUG, 7), (logging.INFO, 6), (logging.WARNING, 4), (logging.ERROR, 3),
               (logging.CRITICAL, 2))


def extra_fields(record: logging.LogRecord) -> dict[str, Any]:
    """The ``extra=`` items of a record, in the order given."""
    return {k: v for k, v in record.__dict__.items() if k not in _STANDARD_ATTRS and not k.startswith("_")}


def _priority(levelno: int) -> int:
    for level, prio in _PRIORITIES:
        if levelno <= level:
            return prio
    return 1  # above CRITICAL: LOG_ALERT


def journal_fields(record: logging.LogRecord, node_name: str) -> dict[str, str]:
    """The journal entry for ``record``: MESSAGE, PRIORITY, NODE, SYSLOG_IDENTIFIER, source
    location, and every ``extra`` whose upper-cased name is a valid journal field name."""
    message = record.getMessage()
    if record.name.startswith("libp2p"):  # its messages embed newlines and indentation
        message = " ".join(message.split())
    fields = {
        "MESSAGE": message,
        "PRIORITY": str(_priority(record.levelno)),
        "SYSLOG_IDENTIFIER": SYSLOG_IDENTIFIER,
        "NODE": node_name,
        "LOGGER": record.name,
        "CODE_FILE": record.pathname,
        "CODE_LINE": str(record.lineno),
        "CODE_FUNC": record.funcName,
        "THREAD_NAME": record.threadName or "",
    }
    if record.exc_info and record.exc_info[0] is not None:
        text = "".join(traceback.format_exception(*record.exc_info)).rstrip()
        fields["EXCEPTION_TEXT"] = text
        fields["MESSAGE"] = f"{message}\n{text}"
    for key, value in extra_fields(record).items():
        name = key.upper()
        if _FIELD_RE.match(name) and name not in _RESERVED and value is not None:
            fields[name] = value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)
    return fields


@functools.cache
def _journal_handler_class() -> type[logging.Handler]:
    from systemd import journal  # lazy: optional dependency, only needed under systemd

    class AviJournalHandler(journal.JournalHandler):
        """``JournalHandler`` that maps ``extra`` to upper-case fields (the stock one sends
        ``record.__dict__`` as-is, and journald drops lower-case field names)."""

        def __init__(self, node_name: str) -> None:
            super().__init__(SYSLOG_IDENTIFIER=SYSLOG_IDENTIFIER, NODE=node_name)
            self.node_name = node_name

        def emit(self, record: logging.LogRecord) -> None:
            try:
                fields = journal_fields(record, self.node_name)
                message = fields.pop("MESSAGE")
                line = int(fields.pop("CODE_LINE"))  # journal.send formats it with {:d}
                self.send(message, CODE_LINE=line, **fields)
            except Exception:
                self.handleError(record)

    return AviJournalHandler


def _quote(value: Any) -> str:
    text = str(value)
    if text == "" or any(c.isspace() or c in '="' for c in text):
        return json.dumps(text, ensure_ascii=False)
    return text


class ReadableFormatter(logging.Formatter):
    """``2026-11-25 21:00:00.123 INFO     mesh: peer connected peer=12D3Ko…WmweQAJU`` (local
    time, the level padded to one width so the messages line up, peer ids shortened)."""

    def format(self, record: logging.LogRecord) -> str:
        stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(record.created))
        name = record.name.removeprefix("agent.")
        message = record.getMessage()
        if name.startswith("libp2p"):  # its messages embed newlines and indentation: one line each
            message = " ".join(message.split())
        line = (f"{stamp}.{int(record.msecs):03d} {record.levelname:<{LEVEL_WIDTH}} {name}: "
                f"{short_peer_ids(message)}")
        extras = " ".join(f"{k}={_quote(short_peer_ids(str(v)))}" for k, v in extra_fields(record).items())
        if extras:
            line += " " + extras
        if record.exc_info and record.exc_info[0] is not None:
            line += "\n" + self.formatException(record.exc_info)
        if record.stack_info:
            line += "\n" + self.formatStack(record.stack_info)
        return line


def use_journal(mode: str, env: Mapping[str, str] | None = None, stream: TextIO | None = None) -> bool:
    """Whether to log to journald: ``always``/``never``, or for ``auto`` when ``JOURNAL_STREAM``
    names the device:inode of ``stream`` (stderr), i.e. systemd connected stderr to the journal
    and it was not redirected since (the check systemd.exec(5) recommends)."""
    if mode == "always":
        return True
    if mode == "never":
        return False
    env = os.environ if env is None else env
    stream = sys.stderr if stream is None else stream
    value = env.get("JOURNAL_STREAM", "")
    dev, _, ino = value.partition(":")
    if not (dev.isdigit() and ino.isdigit()):
        return False
    try:
        st = os.fstat(stream.fileno())
    except (AttributeError, OSError, ValueError):
        return False
    return (st.st_dev, st.st_ino) == (int(dev), int(ino))


# ---- summaries of repeated records ------------------------------------------------------------
@dataclass(slots=True)
class _Window:
    last_seen: float
    suppressed: int = 0
    last: logging.LogRecord | None = None
    level: int = 0  # the most severe held-back record


class Summarizer(logging.Filter):
    """A handler filter for an SD card: repeated records become one summary line a minute.

    Records have a key (:meth:`key`; records without one pass untouched). The first record of a
    quiet key passes at once; later ones are held back and counted. Once per ``period``
    (:meth:`flush`, which the service calls every second) ONE line sums up every key with
    held-back records: ``in the last 60 s: peers +3 more (last: peer connected: ...); libp2p +79
    more (last: Failed to open TCP stream ...)``, at the level of the most severe of them. A key
    is quiet again after a whole period without records. So a node writes at most one line per
    key per quiet spell plus one line a minute, however much repeats. Explicit time (``clock``)
    for tests; bounded (``max_keys``, the oldest key dropped first)."""

    def __init__(self, period: float = SUMMARY_PERIOD_S, *, clock: Callable[[], float] = time.monotonic,
                 max_keys: int = 512) -> None:
        super().__init__()
        self.period = period
        self.clock = clock
        self.max_keys = max_keys
        self.handler: logging.Handler | None = None
        self._windows: dict[Hashable, _Window] = {}
        self._tick = clock()
        self.suppressed = 0  # records held back so far (all keys)

    @staticmethod
    def key(record: logging.LogRecord) -> Hashable | None:
        explicit = record.__dict__.get("_summary")
        if explicit is not None:  # one key across loggers: "peers" is every membership change
            return str(explicit)
        if record.name == "libp2p" or record.name.startswith("libp2p."):
            # One key for all of py-libp2p: a departed peer makes its transport, DHT and pub/sub
            # each complain in their own words, many times (the count says how many).
            return "libp2p"
        return None

    def filter(self, record: logging.LogRecord) -> bool:
        if record.__dict__.get("_avi_summary_line"):
            return True
        key = self.key(record)
        if key is None:
            return True
        now = self.clock()
        w = self._windows.get(key)
        if w is None:
            self._windows[key] = _Window(now)
            while len(self._windows) > self.max_keys:
                self._windows.pop(next(iter(self._windows)))
            return True
        w.last_seen = now
        w.suppressed += 1
        w.last = record
        w.level = max(w.level, record.levelno)
        self.suppressed += 1
        return False

    def summary(self, now: float | None = None) -> logging.LogRecord | None:
        """End the period if it is over: the summary record of what was held back (None when
        nothing was); keys without records for a whole period become quiet again."""
        now = self.clock() if now is None else now
        if now - self._tick < self.period:
            return None
        span, self._tick = now - self._tick, now
        held = [(k, w) for k, w in self._windows.items() if w.suppressed and w.last is not None]
        for k, w in list(self._windows.items()):
            if now - w.last_seen >= self.period:
                del self._windows[k]
        if not held:
            return None
        # py-libp2p logs a failed dial of a departed peer as ERROR: our mesh expects those (it
        # redials with back-off, then forgets), so in the summary they count as WARNING at most.
        level = max(min(w.level, logging.WARNING) if k == "libp2p" else w.level for k, w in held)
        parts = [f"{k} +{w.suppressed} more (last: {w.last.getMessage()})" for k, w in held]  # type: ignore[union-attr]
        line = logging.makeLogRecord({
            "name": "agent.logs", "levelno": level, "levelname": logging.getLevelName(level),
            "msg": f"in the last {span:.0f} s: " + "; ".join(parts), "args": None,
            "pathname": __file__, "lineno": 0, "funcName": "flush",
            "repeated": sum(w.suppressed for _, w in held), "_avi_summary_line": True})
        for _, w in held:
            w.suppressed, w.last, w.level = 0, None, 0
        return line

    def flush(self, now: float | None = None) -> int:
        """Write the summary line when the period is over; returns the number of lines written."""
        line = self.summary(now)
        if line is None or self.handler is None or line.levelno < self.handler.level:
            return 0
        self.handler.handle(line)
        return 1


def adopt_libp2p_logging(level: str | int | None = None) -> None:
    """Route py-libp2p's records through our handler: importing ``libp2p`` clears its logger's
    handlers, sets ``propagate = False`` and WARNING, so call this after that import (again)."""
    lg = logging.getLogger("libp2p")
    for h in list(lg.handlers):
        lg.removeHandler(h)
    lg.propagate = True
    if level is None:
        level = _state.get("libp2p_level")
    if level is not None:
        lg.setLevel(level)


_state: dict[str, Any] = {}


def journal_available(socket_path: Path | None = None) -> bool:
    return (socket_path or JOURNAL_SOCKET).exists()


def setup_logging(cfg: LoggingConfig, node_name: str, *, env: Mapping[str, str] | None = None,
                  stream: TextIO | None = None, journal_socket: Path | None = None,
                  clock: Callable[[], float] = time.monotonic) -> logging.Handler:
    """Install the one agent handler on the root logger (replacing an earlier one, so it can be
    called again on reload) and set the levels. Returns the handler (its ``summarizer``
    attribute is the :class:`Summarizer`; call its ``flush()`` now and then)."""
    stream = sys.stderr if stream is None else stream
    handler: logging.Handler | None = None
    fallback_reason = None
    if use_journal(cfg.journal, env, stream):
        if cfg.journal == "always" and not journal_available(journal_socket):
            fallback_reason = (f'logging.journal = "always" but there is no journald socket '
                               f"({journal_socket or JOURNAL_SOCKET}): logging to stderr instead")
        else:
            try:
                handler = _journal_handler_class()(node_name)
            except ImportError:
                fallback_reason = "systemd-python is not installed; logging to stderr instead of the journal"
    if handler is None:
        handler = logging.StreamHandler(stream)
        handler.setFormatter(ReadableFormatter())
    handler._avi_agent = True  # type: ignore[attr-defined]  # marks ours for replacement
    summarizer = Summarizer(clock=clock)
    summarizer.handler = handler
    handler.addFilter(summarizer)
    handler.summarizer = summarizer  # type: ignore[attr-defined]

    root = logging.getLogger()
    for old in [h for h in root.handlers if getattr(h, "_avi_agent", False)]:
        root.removeHandler(old)
        old.close()
    root.addHandler(handler)
    root.setLevel(cfg.level)
    _state["libp2p_level"] = cfg.libp2p_level
    adopt_libp2p_logging(cfg.libp2p_level)
    if fallback_reason:
        logging.getLogger("agent.logs").warning(fallback_reason)
    return handler


def current_summarizer() -> Summarizer | None:
    """The summarizer of the installed agent handler, if any."""
    for h in logging.getLogger().handlers:
        if getattr(h, "_avi_agent", False):
            return getattr(h, "summarizer", None)
    return None
