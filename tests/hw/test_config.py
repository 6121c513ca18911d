"""Config models validate and name the field; factories build the named backends."""

from __future__ import annotations

import sys
import wave
from pathlib import Path
from typing import Any

import pytest
import trio
from pydantic import BaseModel, ValidationError

from hw.audio import (AudioSink, AudioSource, NullSink, SilenceSource, ToneSource, WavSink, WavSource,
                      open_audio_sink, open_audio_source)
from hw.config import AudioConfig, GpioConfig
from hw.gpio import Button, FakeButton, FakeLed, GpioUnavailableError, Led, open_button, open_led


def field_of(err: ValidationError) -> list[tuple[Any, ...]]:
    return [e["loc"] for e in err.errors()]


def test_defaults_are_fake_16k_mono_20ms() -> None:
    a = AudioConfig()
    assert (a.backend, a.rate, a.channels, a.frame_ms) == ("fake", 16000, 1, 20)
    assert a.frame_samples == 320 and a.frame_bytes == 640
    g = GpioConfig()
    assert g.backend == "fake" and g.pull_up and g.active_low


@pytest.mark.parametrize(
    "model, data, loc",
    [
        (AudioConfig, {"backend": "oss"}, ("backend",)),
        (AudioConfig, {"rate": 100}, ("rate",)),
        (AudioConfig, {"channels": 0}, ("channels",)),
        (AudioConfig, {"devcie": "hw:1,0"}, ("devcie",)),
        (AudioConfig, {"fake_source": {"kind": "noise"}}, ("fake_source", "kind")),
        (AudioConfig, {"fake_source": {"level": 2}}, ("fake_source", "level")),
        (AudioConfig, {"xrun_injection": {"rate": -0.1}}, ("xrun_injection", "rate")),
        (GpioConfig, {"backend": "pigpio"}, ("backend",)),
        (GpioConfig, {"button_pin": 40}, ("button_pin",)),
        (GpioConfig, {"debounce_ms": -1}, ("debounce_ms",)),
        (GpioConfig, {"fake_presses": [{"at_s": 1}]}, ("fake_presses", 0, "duration_s")),
        (GpioConfig, {"pullup": True}, ("pullup",)),
    ],
)
def test_bad_option_names_the_field(model: type[BaseModel], data: dict[str, Any], loc: tuple[Any, ...]) -> None:
    with pytest.raises(ValidationError) as ei:
        model.model_validate(data)
    assert loc in field_of(ei.value)


def test_cross_field_checks() -> None:
    with pytest.raises(ValidationError, match="path is required"):
        AudioConfig(fake_source={"kind": "wav"})
    with pytest.raises(ValidationError, match="whole number of samples"):
        AudioConfig(rate=44100, frame_ms=15)
    with pytest.raises(ValidationError, match="both 5"):
        GpioConfig(button_pin=5, led_pin=5)


def test_embeds_in_an_agent_config() -> None:
    class AgentLike(BaseModel):
        audio: AudioConfig = AudioConfig()
        gpio: GpioConfig = GpioConfig()

    cfg = AgentLike.model_validate(
        {"audio": {"backend": "alsa", "capture_device": "plughw:1,0"}, "gpio": {"backend": "rpi"}}
    )
    assert cfg.audio.capture_device == "plughw:1,0" and cfg.gpio.backend == "rpi"
    with pytest.raises(ValidationError) as ei:
        AgentLike.model_validate({"audio": {"rate": "fast"}})
    assert ("audio", "rate") in field_of(ei.value)


def test_config_module_is_models_only() -> None:
    """hw.config imports no device or factory module (the factories import the models, never
    the reverse): checked in a fresh interpreter, where nothing else has imported them yet."""
    import subprocess

    code = ("import sys, hw.config as c; "
            "print(sorted(m for m in sys.modules if m.startswith('hw'))); "
            "print(sorted(n for n in dir(c) if n.startswith('open_')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.splitlines() == ["['hw', 'hw.config']", "[]"]


def test_factories_build_fakes(tmp_path: Path) -> None:
    wav = tmp_path / "a.wav"
    with wave.open(str(wav), "wb") as w:
        w.setsampwidth(2), w.setframerate(16000), w.setnchannels(1), w.writeframes(bytes(640))
    assert isinstance(open_audio_source(AudioConfig()), ToneSource)
    assert isinstance(open_audio_source(AudioConfig(fake_source={"kind": "silence"})), SilenceSource)
    src = open_audio_source(AudioConfig(fake_source={"kind": "wav", "path": wav, "loop": True}))
    assert isinstance(src, WavSource) and src.loop
    assert isinstance(open_audio_sink(AudioConfig()), NullSink)
    assert isinstance(open_audio_sink(AudioConfig(fake_sink={"kind": "wav", "path": tmp_path / "o.wav"})), WavSink)
    assert isinstance(open_button(GpioConfig()), FakeButton)
    assert isinstance(open_led(GpioConfig()), FakeLed)
    for obj, proto in ((src, AudioSource), (open_audio_sink(AudioConfig()), AudioSink),
                       (open_button(GpioConfig()), Button), (open_led(GpioConfig()), Led)):
        assert isinstance(obj, proto)


async def test_factory_alsa_backend(alsa_conf, tmp_path: Path, hang_guard) -> None:
    out = tmp_path / "o.raw"
    alsa_conf.file_pcm("spk", outfile=out)
    cfg = AudioConfig(backend="alsa", playback_device="spk", capture_device="nothere")
    async with open_audio_sink(cfg) as sink:
        await sink.write(b"\x01\x02" * 320)
    with pytest.raises(Exception, match="nothere"):
        async with open_audio_source(cfg):
            pass
    assert out.read_bytes() == b"\x01\x02" * 320


async def test_factory_fake_button_script_and_injection(hang_guard) -> None:
    g = GpioConfig(fake_presses=[{"at_s": 0.02, "duration_s": 0.1}], debounce_ms=10, long_press_s=5)
    a = AudioConfig(xrun_injection={"at_frames": [0]})
    async with open_button(g) as b:
        kinds = []
        async for ev in b.events():
            kinds.append(ev.kind)
            if len(kinds) == 2:
                break
    async with open_audio_source(a) as s:
        await s.read()
        st = s.stats()
    assert kinds == ["pressed", "released"]
    assert st.xruns == 1


async def test_rpi_backend_off_pi_is_clear(monkeypatch: pytest.MonkeyPatch, hang_guard) -> None:
    monkeypatch.setitem(sys.modules, "RPi", None)
    with pytest.raises(GpioUnavailableError, match="fake"):
        async with open_button(GpioConfig(backend="rpi")):
            pass
