"""alsa-lib's own error messages into Python logging instead of the process's stderr.

alsa-lib prints every internal error straight to stderr (``ALSA lib pcm.c:2666:(snd_pcm_open_noupdate)
Unknown PCM default`` and 7 more lines of config evaluation for one missing card): under systemd
that is 8 journal lines per reopen attempt, without level or fields. The same error reaches us as
an exception from pyalsaaudio, which the device code reports once. :func:`capture_alsa_errors`
installs an error handler (``snd_lib_error_set_handler``) that sends them to the
``hw.audio.alsalib`` logger at DEBUG.

The handler's C type is variadic; a ctypes callback receives its five fixed arguments (that is
the calling convention on x86-64 and arm64 Linux) and logs the format string unexpanded.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os

__all__ = ["capture_alsa_errors"]

log = logging.getLogger("hw.audio.alsalib")

_HANDLER_T = ctypes.CFUNCTYPE(None, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_int,
                              ctypes.c_char_p)
_installed: object | None = None  # the callback must stay alive as long as alsa-lib may call it


def _on_error(file: bytes | None, line: int, function: bytes | None, err: int, fmt: bytes | None) -> None:
    try:
        text = (fmt or b"").decode("utf-8", "replace")
        where = (function or b"?").decode("utf-8", "replace")
        reason = f" ({os.strerror(abs(err))})" if err else ""
        log.debug("alsa-lib %s: %s%s", where, text, reason)
    except Exception:  # noqa: BLE001 - never raise into C
        pass


def capture_alsa_errors() -> bool:
    """Install the handler once per process; False when libasound cannot be loaded."""
    global _installed
    if _installed is not None:
        return True
    name = ctypes.util.find_library("asound") or "libasound.so.2"
    try:
        lib = ctypes.CDLL(name)
        setter = lib.snd_lib_error_set_handler
    except (OSError, AttributeError) as exc:
        log.debug("cannot load %s to capture its errors: %s", name, exc)
        return False
    setter.argtypes = [_HANDLER_T]
    setter.restype = ctypes.c_int
    cb = _HANDLER_T(_on_error)
    if setter(cb) != 0:
        return False
    _installed = cb
    return True
