"""The fake audio devices simulate hardware: real-time pacing, overruns, underruns,
injected xruns, and the content they promise."""

from __future__ import annotations

import math
import time
import wave
from array import array
from pathlib import Path

import pytest
import trio

from hw.audio import (
    AudioFormat,
    AudioSink,
    AudioSource,
    DeviceClosedError,
    FormatNotSupportedError,
    NullSink,
    SilenceSource,
    ToneSource,
    WavSink,
    WavSource,
    XrunInjector,
)

FMT = AudioFormat()


def samples(pcm: bytes) -> array:
    a = array("h")
    a.frombytes(pcm)
    return a


def write_wav(path: Path, pcm: bytes, rate: int = 16000, channels: int = 1, width: int = 2) -> None:
    with wave.open(str(path), "wb") as w:
        w.setsampwidth(width)
        w.setframerate(rate)
        w.setnchannels(channels)
        w.writeframes(pcm)


async def test_one_second_of_tone_takes_about_one_second(autojump_clock, hang_guard) -> None:
    t = trio.current_time()
    async with ToneSource(FMT, frequency_hz=1000, level=0.5) as src:
        assert isinstance(src, AudioSource)
        frames = [await src.read() for _ in range(50)]
        elapsed, st = trio.current_time() - t, src.stats()
    # The fakes pace on trio's clock: on MockClock the second of tone takes exactly 1 s of it.
    assert elapsed == pytest.approx(1.0, abs=1e-9)
    assert len(frames) == 50 and st.frames == 50 and st.xruns == 0
    assert all(len(f.pcm) == 640 for f in frames)
    gaps = {b.timestamp_us - a.timestamp_us for a, b in zip(frames, frames[1:])}
    assert gaps == {20_000}
    s = samples(b"".join(f.pcm for f in frames))
    assert max(s) == pytest.approx(0.5 * 32767, abs=2)
    # 1 kHz: 2000 zero crossings in a second.
    crossings = sum(1 for x, y in zip(s, s[1:]) if (x < 0) != (y < 0))
    assert 1990 <= crossings <= 2010
    rms = math.sqrt(sum(x * x for x in s) / len(s))
    assert rms == pytest.approx(0.5 * 32767 / math.sqrt(2), rel=0.01)


async def test_timestamps_are_clock_monotonic_microseconds(hang_guard) -> None:
    # `before` is taken before the device opens (its first sample's time is the open), so
    # the check needs no margin for a machine that stalls between the two.
    before = time.monotonic_ns() // 1000
    async with SilenceSource() as src:
        f = await src.read()
        after = time.monotonic_ns() // 1000
    assert f.pcm == bytes(640)
    assert before <= f.timestamp_us <= after


async def test_slow_reader_gets_overrun_and_loses_frames(autojump_clock, hang_guard) -> None:
    async with ToneSource(buffer_frames=4) as src:
        await src.read()
        await trio.sleep(0.3)  # 15 frames late; the device buffer holds 4
        f = await src.read()
        g = await src.read()
        st = src.stats()
    assert st.xruns == 1
    assert 10 <= st.dropped <= 20
    assert st.dropped == 15  # 0.3 s late at 20 ms a frame
    assert g.timestamp_us - f.timestamp_us == 20_000


async def test_injected_xruns_on_schedule_and_rate(autojump_clock, hang_guard) -> None:
    # On MockClock: a stalled reader would add real overruns.
    async with ToneSource(xruns=XrunInjector(at_frames=[2, 5])) as a:
        fa = [await a.read() for _ in range(8)]
    async with SilenceSource(xruns=XrunInjector(rate=0.5, seed=42)) as b:
        for _ in range(10):
            await b.read()
    sa, sb = a.stats(), b.stats()
    assert sa.xruns == 2 and sa.dropped == 2 and sa.frames == 8
    gaps = [y.timestamp_us - x.timestamp_us for x, y in zip(fa, fa[1:])]
    assert gaps.count(40_000) == 2  # a lost frame leaves a hole in the timeline
    assert sb.xruns == sb.dropped and 3 <= sb.xruns <= 30 and sb.frames == 10
    assert sb.xruns == 11  # seed 42 at rate 0.5: frames 1-3, 7-10, 12, 13, 16 and 19 of 21 lost


async def test_wav_source_plays_file_then_silence_or_loops(tmp_path: Path, autojump_clock, hang_guard) -> None:
    pcm = bytes(range(256)) * 5  # 1280 bytes = 2 frames
    path = tmp_path / "in.wav"
    write_wav(path, pcm + b"\x01\x00")  # plus one sample: padded third frame
    # On MockClock: a stalled reader would lose frames to an overrun.
    async with WavSource(path) as once:
        a = [await once.read() for _ in range(4)]
        assert once.exhausted
    async with WavSource(path, loop=True) as loop:
        b = [await loop.read() for _ in range(6)]
    assert a[0].pcm + a[1].pcm == pcm
    assert a[2].pcm == b"\x01\x00" + bytes(638)
    assert a[3].pcm == bytes(640)
    assert [f.pcm for f in b[3:6]] == [f.pcm for f in b[0:3]]


async def test_wav_source_wrong_format_is_clear(tmp_path: Path, hang_guard) -> None:
    path = tmp_path / "cd.wav"
    write_wav(path, bytes(4 * 441), rate=44100, channels=2)
    with pytest.raises(FormatNotSupportedError, match=r"asked S16_LE 16000 Hz 1 ch.*16-bit 44100 Hz 2 ch"):
        async with WavSource(path):
            pass


async def test_wav_sink_consumes_in_real_time_and_records(tmp_path: Path, autojump_clock, hang_guard) -> None:
    path = tmp_path / "out.wav"
    frames = [bytes([i]) * 640 for i in range(30)]
    # On MockClock: exact, and a writer stalled by a busy machine cannot underrun the buffer.
    t = trio.current_time()
    async with WavSink(path, buffer_frames=4) as sink:
        assert isinstance(sink, AudioSink)
        for f in frames:
            await sink.write(f)
    elapsed, st = trio.current_time() - t, sink.stats()
    assert elapsed == pytest.approx(0.6, abs=1e-9)  # 30 frames = 0.6 s of audio, drained at close
    assert st.frames == 30 and st.xruns == 0
    with wave.open(str(path), "rb") as w:
        assert (w.getframerate(), w.getnchannels(), w.getsampwidth()) == (16000, 1, 2)
        assert w.readframes(w.getnframes()) == b"".join(frames)


async def test_slow_producer_shows_up_as_underruns(autojump_clock, hang_guard) -> None:
    async with NullSink() as sink:
        for _ in range(3):
            await sink.write(bytes(640))
            await trio.sleep(0.2)  # the device plays 20 ms, then starves
        st = sink.stats()
    assert st.xruns == 2 and st.frames == 3


async def test_sink_injected_underrun_drops_that_frame(tmp_path: Path, autojump_clock, hang_guard) -> None:
    path = tmp_path / "o.wav"
    # On MockClock: a stalled writer would add real underruns.
    async with WavSink(path, xruns=XrunInjector(at_frames=[1])) as sink:
        for i in range(4):
            await sink.write(bytes([i]) * 640)
    st = sink.stats()
    assert st.xruns == 1 and st.dropped == 1 and st.frames == 3
    with wave.open(str(path), "rb") as w:
        assert w.readframes(10_000) == bytes([0]) * 640 + bytes([2]) * 640 + bytes([3]) * 640


async def test_a_stopped_source_starts_again_without_an_overrun(autojump_clock) -> None:
    """An idle node stops its microphone: the pause is no overrun, and reading starts it again
    (its first frame a frame period after the restart, timestamped then)."""
    async with ToneSource() as src:
        first = [await src.read() for _ in range(5)]
        await src.stop()
        await trio.sleep(2.0)  # 100 frame periods: without stop() an overrun of 96 frames
        t = trio.current_time()
        again = [await src.read() for _ in range(3)]
        took, st = trio.current_time() - t, src.stats()
    assert st.xruns == 0 and st.dropped == 0 and st.frames == 8
    assert took == pytest.approx(0.06, abs=1e-9)  # 3 frames from the restart, 20 ms each
    # frame 4 began at 0.08 s; the restart at 0.1 + 2.0 s (each frame is stamped with its start)
    assert again[0].timestamp_us - first[-1].timestamp_us == 2_020_000
    assert [b.timestamp_us - a.timestamp_us for a, b in zip(again, again[1:])] == [20_000, 20_000]


async def test_a_stopped_sink_plays_out_then_is_silent_without_underruns(tmp_path: Path,
                                                                          autojump_clock) -> None:
    path = tmp_path / "out.wav"
    async with WavSink(path, buffer_frames=4) as sink, NullSink() as null:
        t = trio.current_time()
        for _ in range(10):
            await sink.write(bytes([1]) * 640)
            await null.write(bytes(640))
        await sink.stop()  # what is buffered plays out first
        await null.stop()
        played_out = trio.current_time() - t
        await trio.sleep(1.0)  # stopped: no writes and no underruns
        for _ in range(10):
            await sink.write(bytes([2]) * 640)
            await null.write(bytes(640))
        await sink.stop()
        await sink.stop()  # stopped already
    st, nst = sink.stats(), null.stats()
    assert played_out == pytest.approx(0.2, abs=1e-9)  # 10 frames of 20 ms
    assert st.xruns == 0 and st.frames == 20 and nst.xruns == 0 and nst.frames == 20
    with wave.open(str(path), "rb") as w:
        # a stopped speaker is silent: the second of pause is in the file (it keeps time)
        assert w.readframes(10**6) == bytes([1]) * 6400 + bytes(32000) + bytes([2]) * 6400


async def test_closed_fakes_refuse_io(hang_guard) -> None:
    with pytest.raises(DeviceClosedError):
        await ToneSource().read()
    with pytest.raises(DeviceClosedError):
        await NullSink().write(bytes(640))
    async with NullSink() as s:
        with pytest.raises(ValueError):
            await s.write(b"\x00")


async def test_stereo_48k_format(hang_guard) -> None:
    fmt = AudioFormat(rate=48000, channels=2, frame_ms=10)
    async with ToneSource(fmt, frequency_hz=100) as src:
        f = await src.read()
    assert len(f.pcm) == 480 * 2 * 2
    s = samples(f.pcm)
    assert list(s[0::2]) == list(s[1::2])


def test_bad_format_rejected() -> None:
    with pytest.raises(ValueError):
        AudioFormat(rate=44100, frame_ms=15)  # 661.5 samples
