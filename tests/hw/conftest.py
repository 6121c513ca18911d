"""Shared fixtures for the device-edge tests.

ALSA: alsa-lib re-reads its configuration when ``ALSA_CONFIG_PATH`` (or a file it names)
changes, checked at every ``snd_pcm_open``. So a test can point the variable at its own
file (which first includes the system ``alsa.conf``) and define the PCMs it needs; the
``alsa_conf`` fixture does that and restores the environment afterwards.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

HERE = Path(__file__).parent
SYSTEM_ALSA_CONF = "/usr/share/alsa/alsa.conf"


class AlsaConf:
    """Writes PCM definitions to a private ALSA config file."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._pcms: dict[str, str] = {}

    def define(self, name: str, body: str) -> None:
        self._pcms[name] = body
        self._write()

    def remove(self, name: str) -> None:
        self._pcms.pop(name, None)
        self._write()

    def _write(self) -> None:
        text = f"<{SYSTEM_ALSA_CONF}>\n" + "".join(
            f"pcm.{n} {{ {b} }}\n" for n, b in self._pcms.items()
        )
        old_s = int(self.path.stat().st_mtime) if self.path.exists() else 0
        self.path.write_text(text)
        # alsa-lib notices a change by mtime in whole seconds: make sure it moves.
        st = self.path.stat()
        new_s = max(int(st.st_mtime), old_s + 1)
        os.utime(self.path, (new_s, new_s))

    def file_pcm(self, name: str, *, infile: Path | None = None, outfile: Path | str = "/dev/null") -> None:
        """A ``type file`` PCM over ``null``: playback lands in ``outfile`` byte for byte,
        capture is read from ``infile`` byte for byte."""
        body = f'type file; slave.pcm "null"; file "{outfile}"; format "raw"'
        if infile is not None:
            body += f'; infile "{infile}"'
        self.define(name, body)


@pytest.fixture
def alsa_conf(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[AlsaConf]:
    pytest.importorskip("alsaaudio")
    conf = AlsaConf(tmp_path / "asound.conf")
    conf._write()
    monkeypatch.setenv("ALSA_CONFIG_PATH", str(conf.path))
    yield conf


@pytest.fixture
def standin_gpio(monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """``RPi.GPIO`` is the stand-in of tests/hw/standin (edge callbacks on its own thread)."""
    for m in [m for m in sys.modules if m == "RPi" or m.startswith("RPi.")]:
        monkeypatch.delitem(sys.modules, m)
    monkeypatch.syspath_prepend(str(HERE / "standin"))
    import RPi.GPIO as gpio  # the stand-in

    gpio._reset()
    yield gpio
    gpio._reset()
    for m in [m for m in sys.modules if m == "RPi" or m.startswith("RPi.")]:
        del sys.modules[m]
