"""Logging: journald with structured fields under systemd, readable lines on stderr otherwise.

Context goes in ``extra``: ``log.info("peer connected", extra={"peer": pid, "stream": sid})``.
In the journal these become ``PEER=`` / ``STREAM=`` fields (plus ``NODE=`` and
``SYSLOG_IDENTIFIER=avi-agent`` on every entry), so ``journalctl -u avi-agent PEER=12D3...``
filters by peer; on stderr they are appended as ``peer=12D3...``.
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
from collections.abc import Mapping
from typing import Any, TextIO

from agent.config import LoggingConfig

__all__ = ["SYSLOG_IDENTIFIER", "setup_logging", "use_journal", "journal_fields",
           "extra_fields", "ReadableFormatter"]

SYSLOG_IDENTIFIER = "avi-agent"

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
    """``2026-11-25 21:00:00.123 INFO  mesh: peer connected peer=12D3...`` (local time)."""

    def format(self, record: logging.LogRecord) -> str:
        stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(record.created))
        name = record.name.removeprefix("agent.")
        line = f"{stamp}.{int(record.msecs):03d} {record.levelname:<5} {name}: {record.getMessage()}"
        extras = " ".join(f"{k}={_quote(v)}" for k, v in extra_fields(record).items())
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


def setup_logging(cfg: LoggingConfig, node_name: str, *, env: Mapping[str, str] | None = None,
                  stream: TextIO | None = None) -> logging.Handler:
    """Install the one agent handler on the root logger (replacing an earlier one, so it can be
    called again on reload) and set the levels. Returns the handler."""
    stream = sys.stderr if stream is None else stream
    handler: logging.Handler | None = None
    fallback_reason = None
    if use_journal(cfg.journal, env, stream):
        try:
            handler = _journal_handler_class()(node_name)
        except ImportError:
            fallback_reason = "systemd-python is not installed; logging to stderr instead of the journal"
    if handler is None:
        handler = logging.StreamHandler(stream)
        handler.setFormatter(ReadableFormatter())
    handler._avi_agent = True  # type: ignore[attr-defined]  # marks ours for replacement

    root = logging.getLogger()
    for old in [h for h in root.handlers if getattr(h, "_avi_agent", False)]:
        root.removeHandler(old)
        old.close()
    root.addHandler(handler)
    root.setLevel(cfg.level)
    logging.getLogger("libp2p").setLevel(cfg.libp2p_level)
    if fallback_reason:
        logging.getLogger("agent.logs").warning(fallback_reason)
    return handler
