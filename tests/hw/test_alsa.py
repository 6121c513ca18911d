"""Real AlsaCapture/AlsaPlayback through alsa-lib, with PCMs each test defines itself
(``type file`` over ``null``: playback lands in a file byte for byte, capture comes from
one byte for byte)."""

from __future__ import annotations

import errno
import os
from pathlib import Path
from typing import Any

import pytest
import trio

from hw.audio import (
    AudioFormat,
    AudioSink,
    AudioSource,
    DeviceClosedError,
    DeviceNotFoundError,
    FormatNotSupportedError,
)
from tests.poll import wait_until

alsaaudio = pytest.importorskip("alsaaudio")
from hw.audio.alsa import AlsaCapture, AlsaPlayback  # noqa: E402

FMT = AudioFormat()


def pattern(frames: int, seed: int = 1) -> bytes:
    """Deterministic, non-repeating PCM so that any shift or loss shows up."""
    import random

    return random.Random(seed).randbytes(frames * FMT.frame_bytes)


async def test_playback_round_trip_sample_for_sample(alsa_conf, tmp_path: Path, hang_guard) -> None:
    out = tmp_path / "played.raw"
    alsa_conf.file_pcm("spk", outfile=out)
    data = pattern(60)
    async with AlsaPlayback("spk", FMT) as sink:
        assert isinstance(sink, AudioSink)
        for i in range(60):
            await sink.write(data[i * FMT.frame_bytes : (i + 1) * FMT.frame_bytes])
        st = sink.stats()
    assert out.read_bytes() == data
    assert st.frames == 60 and st.xruns == 0 and st.device_errors == 0 and st.state == "open"


async def test_playback_accepts_odd_sized_writes(alsa_conf, tmp_path: Path, hang_guard) -> None:
    out = tmp_path / "played.raw"
    alsa_conf.file_pcm("spk", outfile=out)
    data = pattern(10, seed=7)
    cuts = [0, 2, 1000, 1002, 3000, len(data)]
    async with AlsaPlayback("spk", FMT) as sink:
        for a, b in zip(cuts, cuts[1:]):
            await sink.write(data[a:b])
        with pytest.raises(ValueError, match="whole number"):
            await sink.write(b"\x00")
    assert out.read_bytes() == data


async def test_capture_round_trip_sample_for_sample(alsa_conf, tmp_path: Path, hang_guard) -> None:
    infile = tmp_path / "mic.raw"
    data = pattern(50, seed=3)
    infile.write_bytes(data)
    alsa_conf.file_pcm("mic", infile=infile)
    async with AlsaCapture("mic", FMT) as src:
        assert isinstance(src, AudioSource)
        frames = [await src.read() for _ in range(50)]
        st, actual = src.stats(), src.actual
    assert all(len(f.pcm) == FMT.frame_bytes for f in frames)
    assert b"".join(f.pcm for f in frames) == data
    assert st.frames == 50 and st.xruns == 0
    assert actual["format_name"] == "S16_LE" and actual["rate"] == 16000 and actual["channels"] == 1
    ts = [f.timestamp_us for f in frames]
    assert ts == sorted(ts)
    now_us = __import__("time").monotonic_ns() // 1000
    assert now_us - 60_000_000 < ts[0] <= now_us  # CLOCK_MONOTONIC microseconds


async def test_capture_then_play_through_alsa(alsa_conf, tmp_path: Path, hang_guard) -> None:
    """Capture from one PCM and play into another: what comes out is what went in."""
    infile, out = tmp_path / "in.raw", tmp_path / "out.raw"
    data = pattern(25, seed=11)
    infile.write_bytes(data)
    alsa_conf.file_pcm("mic", infile=infile)
    alsa_conf.file_pcm("spk", outfile=out)
    async with AlsaCapture("mic") as src, AlsaPlayback("spk") as sink:
        for _ in range(25):
            await sink.write((await src.read()).pcm)
    assert out.read_bytes() == data


async def test_stopped_devices_start_again_on_the_next_read_or_write(alsa_conf, tmp_path: Path,
                                                                     hang_guard) -> None:
    """stop(): playback plays out what it holds, then stops; capture drops what it holds. The
    next write/read starts the PCM again, with no xrun counted for the pause."""
    infile, out = tmp_path / "in.raw", tmp_path / "out.raw"
    infile.write_bytes(pattern(100, seed=5))
    alsa_conf.file_pcm("mic", infile=infile)
    alsa_conf.file_pcm("spk", outfile=out)
    data = pattern(20, seed=6)
    fb = FMT.frame_bytes
    async with AlsaCapture("mic", FMT) as src, AlsaPlayback("spk", FMT) as sink:
        got = [await src.read() for _ in range(5)]
        for i in range(10):
            await sink.write(data[i * fb:(i + 1) * fb])
        await src.stop()
        await sink.stop()
        await trio.sleep(0.3)  # longer than either device's buffer (4 periods, 80 ms)
        got += [await src.read() for _ in range(5)]
        for i in range(10, 20):
            await sink.write(data[i * fb:(i + 1) * fb])
        cst, pst = src.stats(), sink.stats()
    assert out.read_bytes() == data  # nothing lost or repeated around the stop
    assert cst.xruns == 0 and cst.frames == 10 and cst.state == "open"
    assert pst.xruns == 0 and pst.frames == 20 and pst.state == "open"
    assert all(len(f.pcm) == fb for f in got)
    ts = [f.timestamp_us for f in got]
    assert ts == sorted(ts) and ts[5] - ts[4] >= 300_000  # captured after the pause


async def test_missing_device_names_it_and_lists_pcms(alsa_conf, hang_guard) -> None:
    alsa_conf.file_pcm("mic_that_exists", infile=Path("/dev/zero"))
    with pytest.raises(DeviceNotFoundError) as ei:
        async with AlsaCapture("usb_mic_unplugged"):
            pass
    msg = str(ei.value)
    assert "usb_mic_unplugged" in msg
    assert "mic_that_exists" in msg and "null" in msg
    assert "mic_that_exists" in ei.value.available


async def test_format_refused_names_asked_and_given(alsa_conf, hang_guard) -> None:
    # lfloat with an S16 slave only takes float samples from its client.
    alsa_conf.define("floatonly", 'type lfloat; slave { pcm "null"; format S16_LE }')
    with pytest.raises(FormatNotSupportedError) as ei:
        async with AlsaPlayback("floatonly"):
            pass
    msg = str(ei.value)
    assert "floatonly" in msg
    assert "asked S16_LE 16000 Hz 1 ch" in msg
    assert "FLOAT_LE" in ei.value.got
    assert "FLOAT_LE" in ei.value.offered


async def test_channel_count_refused(alsa_conf, hang_guard) -> None:
    # vdownmix only takes 4 to 6 channels from its client.
    alsa_conf.define("fourch", 'type vdownmix; slave.pcm "null"')
    with pytest.raises(FormatNotSupportedError) as ei:
        async with AlsaCapture("fourch"):
            pass
    assert "1 ch" in ei.value.asked and "4 ch" in ei.value.got


class XrunPCM:
    """Wraps a real alsaaudio.PCM; at the scheduled calls it stops the real stream (drop)
    and reports -EPIPE the way pyalsaaudio does after it has recovered an xrun. The null
    plugin never xruns by itself (it does not run in real time)."""

    def __init__(self, real: Any, at_calls: set[int]) -> None:
        self._real = real
        self._at = at_calls
        self.calls = 0

    def _maybe_xrun(self) -> bool:
        self.calls += 1
        if self.calls in self._at:
            self._real.drop()  # stream leaves RUNNING; the next real call must re-prepare
            return True
        return False

    def read(self) -> tuple[int, bytes]:
        if self._maybe_xrun():
            return -errno.EPIPE, b""
        return self._real.read()

    def write(self, data: bytes) -> int:
        if self._maybe_xrun():
            return -errno.EPIPE
        return self._real.write(data)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._real, name)


async def test_xruns_are_recovered_and_counted(alsa_conf, tmp_path: Path, hang_guard) -> None:
    infile, out = tmp_path / "in.raw", tmp_path / "out.raw"
    data = pattern(40, seed=5)
    infile.write_bytes(data)
    alsa_conf.file_pcm("mic", infile=infile)
    alsa_conf.file_pcm("spk", outfile=out)
    wrapped: list[XrunPCM] = []

    def factory(*a: Any, **kw: Any) -> XrunPCM:
        w = XrunPCM(alsaaudio.PCM(*a, **kw), {3, 10, 11})
        wrapped.append(w)
        return w

    async with AlsaCapture("mic", pcm_factory=factory) as src, \
            AlsaPlayback("spk", pcm_factory=factory) as sink:
        frames = [await src.read() for _ in range(20)]
        for f in frames:
            await sink.write(f.pcm)
        cst, pst = src.stats(), sink.stats()
    assert cst.xruns == 3 and cst.frames == 20 and cst.device_errors == 0
    assert pst.xruns == 3 and pst.frames == 20 and pst.device_errors == 0
    # Playback re-writes the frame an underrun refused: nothing is lost on that side.
    assert len(out.read_bytes()) == 20 * FMT.frame_bytes


class UnplugPCM:
    """A real PCM whose reads fail as a USB card's do once it is pulled (ENODEV)."""

    def __init__(self, real: Any, fail_from: int) -> None:
        self._real = real
        self._fail_from = fail_from
        self.calls = 0

    def read(self) -> tuple[int, bytes]:
        self.calls += 1
        if self.calls >= self._fail_from:
            raise alsaaudio.ALSAAudioError("No such device [mic]")
        return self._real.read()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._real, name)


async def test_capture_device_vanishes_and_returns(alsa_conf, tmp_path: Path, hang_guard) -> None:
    infile = tmp_path / "in.raw"
    infile.write_bytes(pattern(50, seed=9))
    alsa_conf.file_pcm("mic", infile=infile)
    opened: list[Any] = []

    def factory(*a: Any, **kw: Any) -> Any:
        real = alsaaudio.PCM(*a, **kw)  # raises while "mic" is gone from the config
        w = UnplugPCM(real, fail_from=5) if not opened else real
        opened.append(w)
        return w

    async with AlsaCapture("mic", pcm_factory=factory, reopen_interval_s=0.05) as src:
        for _ in range(4):
            await src.read()
        alsa_conf.remove("mic")  # the card is gone: re-opens fail for real

        async def replug() -> None:
            await trio.sleep(0.3)  # an outage of a few re-open attempts (every 0.05 s)
            # the failing read runs on a worker thread: wait for it
            await wait_until(lambda: src.stats().state == "recovering", 10, "the source to recover", step=0.01)
            alsa_conf.file_pcm("mic", infile=infile)

        async with trio.open_nursery() as n:
            n.start_soon(replug)
            frame = await src.read()  # waits through the outage
        assert len(frame.pcm) == FMT.frame_bytes
        st = src.stats()
    assert st.device_errors == 1 and st.reopens == 1 and st.state == "open"
    assert st.frames == 5
    assert len(opened) == 2


async def test_playback_device_failing_is_reported_and_retried(alsa_conf, tmp_path: Path, hang_guard) -> None:
    # Writing to /dev/full makes the file plugin fail with EIO once its buffer fills:
    # a real run-time device error. Then the "card" comes back as a normal file.
    alsa_conf.file_pcm("spk", outfile="/dev/full")
    out = tmp_path / "after.raw"
    frame = pattern(1, seed=2)

    async with AlsaPlayback("spk", reopen_interval_s=0.05) as sink:
        for _ in range(30):
            await sink.write(frame)
            if sink.stats().device_errors:
                break
        assert sink.stats().device_errors >= 1
        alsa_conf.file_pcm("spk", outfile=out)
        with trio.fail_after(5):
            while sink.stats().reopens == 0:
                await sink.write(frame)  # paced during the outage, counted as dropped
        for _ in range(5):
            await sink.write(frame)
        st = sink.stats()
    assert st.device_errors == 1 and st.reopens == 1 and st.state == "open"
    assert st.dropped >= 1
    assert out.read_bytes().startswith(frame * 5)


async def test_closed_device_refuses_io(alsa_conf, tmp_path: Path, hang_guard) -> None:
    alsa_conf.file_pcm("spk", outfile=tmp_path / "o.raw")
    sink = AlsaPlayback("spk")
    with pytest.raises(DeviceClosedError):
        await sink.write(bytes(FMT.frame_bytes))
    async with sink:
        await sink.write(bytes(FMT.frame_bytes))
    assert sink.stats().state == "closed"
    with pytest.raises(DeviceClosedError):
        await sink.write(bytes(FMT.frame_bytes))


def test_alsa_config_env_is_private_to_the_test(alsa_conf) -> None:
    assert os.environ["ALSA_CONFIG_PATH"] == str(alsa_conf.path)


async def test_capture_faster_than_real_time_is_paced(alsa_conf, tmp_path: Path, hang_guard) -> None:
    """A file/null capture PCM returns at once (no sound card paces it): AlsaCapture paces it to
    the clock instead of letting its reader spin, with frame timestamps one frame apart."""
    infile = tmp_path / "mic.raw"
    infile.write_bytes(pattern(100, seed=4))
    alsa_conf.file_pcm("mic", infile=infile)

    async with AlsaCapture("mic", FMT) as src:
        t0 = trio.current_time()
        frames = [await src.read() for _ in range(60)]
        took, paced = trio.current_time() - t0, src.paced
    assert paced
    # A lower bound (a busy machine only makes it longer): 60 frames of 20 ms, less the device
    # buffer (4 periods) it may run ahead, less one.
    assert took >= (60 - 4 - 1) * FMT.frame_s * 0.95, took
    ts = [f.timestamp_us for f in frames]
    assert {b - a for a, b in zip(ts[10:], ts[11:])} == {FMT.frame_us}
