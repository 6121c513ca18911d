"""Every public async method of ``hw.audio`` and ``hw.gpio`` is a checkpoint (tests/checkpoints.py),
also where it has nothing to wait for: opening a fake, a write with room in the device buffer,
a second close, pressing a fake button without bounce, entering an LED."""

from __future__ import annotations

import wave
from pathlib import Path
from typing import Any

import pytest
import trio

import hw.audio
import hw.gpio
from hw.audio import NullSink, SilenceSource, ToneSource, WavSink, WavSource
from hw.gpio import FakeButton, FakeLed, RpiButton, RpiLed
from tests.checkpoints import Checkpoints, public_async

pytest.importorskip("alsaaudio")


async def _device(ck: Checkpoints, name: str, dev: Any, io: str, *args: Any) -> None:
    """open, one read/write, close, close again, then the same through ``async with``'s methods."""
    with ck.check(f"{name}.open"):
        await dev.open()
    with ck.check(f"{name}.{io}"):
        await getattr(dev, io)(*args)
    with ck.check(f"{name}.stop"):
        await dev.stop()
    with ck.check(f"{name}.{io}"):
        await getattr(dev, io)(*args)  # started again
    with ck.check(f"{name}.aclose"):
        await dev.aclose()
    with ck.check(f"{name}.aclose"):
        await dev.aclose()  # already closed: returns at once, still a checkpoint
    with ck.check(f"{name}.__aenter__"):
        await dev.__aenter__()
    with ck.check(f"{name}.__aexit__"):
        await dev.__aexit__(None, None, None)


async def test_every_public_async_call_of_hw_is_a_checkpoint(tmp_path: Path, alsa_conf: Any,
                                                             standin_gpio: Any) -> None:
    from hw.audio import AlsaCapture, AlsaPlayback

    wav = tmp_path / "in.wav"
    with wave.open(str(wav), "wb") as w:
        w.setsampwidth(2)
        w.setframerate(16000)
        w.setnchannels(1)
        w.writeframes(bytes(640 * 3))
    mic = tmp_path / "mic.raw"
    mic.write_bytes(bytes(640 * 50))
    alsa_conf.file_pcm("mic", infile=mic)
    alsa_conf.file_pcm("spk", outfile=tmp_path / "spk.raw")
    frame = bytes(640)
    ck = Checkpoints()

    await _device(ck, "ToneSource", ToneSource(), "read")
    await _device(ck, "SilenceSource", SilenceSource(), "read")
    await _device(ck, "WavSource", WavSource(wav), "read")
    await _device(ck, "AlsaCapture", AlsaCapture("mic"), "read")
    await _device(ck, "NullSink", NullSink(), "write", frame)  # room in the buffer: no wait
    await _device(ck, "WavSink", WavSink(tmp_path / "out.wav"), "write", frame)
    await _device(ck, "AlsaPlayback", AlsaPlayback("spk"), "write", frame)
    async with AlsaPlayback("spk") as spk, AlsaCapture("mic") as cap:
        with ck.check("AlsaPlayback.write"):
            await spk.write(b"")  # nothing to play
        with ck.check("AlsaCapture.open"):
            await cap.open()  # already open

    for name, button in (("FakeButton", FakeButton(bounce_s=0.0)), ("RpiButton", RpiButton(17))):
        with ck.check(f"{name}.__aenter__"):
            await button.__aenter__()
        if isinstance(button, FakeButton):
            with ck.check("FakeButton.press"):
                await button.press()  # no bounce: nothing to wait for
        else:
            await trio.to_thread.run_sync(standin_gpio._drive, 17, 0)  # pressed (active low)
        events = button.events()
        with ck.check(f"{name}.events"):
            await events.__anext__()
        await events.aclose()
        if isinstance(button, FakeButton):
            with ck.check("FakeButton.release"):
                await button.release()
        with ck.check(f"{name}.__aexit__"):
            await button.__aexit__(None, None, None)
    for name, led in (("FakeLed", FakeLed("on")), ("RpiLed", RpiLed(27))):
        with ck.check(f"{name}.__aenter__"):
            await led.__aenter__()
        with ck.check(f"{name}.__aexit__"):
            await led.__aexit__(None, None, None)

    ck.verify(public_async(hw.audio, hw.gpio))
