"""Codec, mixer, group announcements and the drop-oldest queue on their own."""

from __future__ import annotations

import numpy as np
import pytest
import trio
import trio.testing

from agent.talk.codec import (PCM_S16LE, CodecError, PcmS16le, known_codecs, make_codec,
                              register_codec)
from agent.talk.groups import (GroupDirectory, admission, encode_announcement, parse_announcement)
from agent.talk.latency import LatencyWindow
from agent.talk.mixer import Mixer, mix
from agent.talk.outqueue import DropOldestQueue
from hw.audio.base import AudioFormat

FMT = AudioFormat()


def pcm(values: list[int] | np.ndarray) -> bytes:
    return np.asarray(values, dtype="<i2").tobytes()


def tone(freq: float, level: float = 0.5, n: int = FMT.frame_samples) -> bytes:
    t = np.arange(n) / FMT.rate
    return pcm(np.rint(level * 32767 * np.sin(2 * np.pi * freq * t)).astype(np.int16))


def samples(b: bytes) -> np.ndarray:
    return np.frombuffer(b, dtype="<i2")


# --- mixer ------------------------------------------------------------------------------------

def test_mix_adds_samples() -> None:
    m = Mixer(8)
    assert samples(m.mix([pcm([1, -2, 300, 0]), pcm([10, 20, -300, 5])])).tolist() == [11, 18, 0, 5]


def test_mix_saturates_instead_of_wrapping() -> None:
    m = Mixer(8)
    out = samples(m.mix([pcm([30000, -30000, 32767, -32768]), pcm([30000, -30000, 1, -1]),
                         pcm([30000, -30000, 0, 0])]))
    assert out.tolist() == [32767, -32768, 32767, -32768]


def test_mix_of_none_is_silence_and_one_is_itself() -> None:
    m = Mixer(640)
    assert m.mix([]) == bytes(640)
    a = tone(440)
    assert m.mix([a]) == a


def test_mix_keeps_both_frequencies() -> None:
    out = samples(mix([tone(440, 0.3), tone(660, 0.3)])).astype(float)
    spec = np.abs(np.fft.rfft(out))
    freqs = np.fft.rfftfreq(len(out), 1 / FMT.rate)
    top2 = sorted(freqs[np.argsort(spec)[-2:]])
    assert abs(top2[0] - 450) <= 50 and abs(top2[1] - 650) <= 50  # 50 Hz bins at 320 samples


def test_mix_rejects_wrong_lengths() -> None:
    with pytest.raises(ValueError):
        Mixer(640).mix([bytes(640), bytes(638)])
    with pytest.raises(ValueError):
        Mixer(3)
    with pytest.raises(ValueError):
        mix([])


# --- codec ------------------------------------------------------------------------------------

def test_pcm_round_trip_and_header_id() -> None:
    c = make_codec(PCM_S16LE, FMT)
    assert c.id == 1 and isinstance(c, PcmS16le)
    a = tone(440)
    assert c.decode(c.encode(a)) == a


def test_pcm_rejects_wrong_sizes() -> None:
    c = PcmS16le(FMT)
    with pytest.raises(CodecError):
        c.decode(b"\x00" * 10)
    with pytest.raises(CodecError):
        c.encode(b"\x00" * 10)


def test_concealment_fades_the_last_frame_then_silence() -> None:
    c = PcmS16le(FMT)
    assert c.conceal() == bytes(FMT.frame_bytes)  # nothing heard yet: silence
    loud = pcm(np.full(FMT.frame_samples, 20000))
    c.decode(loud)
    first, second, third = (samples(c.conceal()) for _ in range(3))
    assert first[0] == 20000 and 9000 < first[-1] < 11000   # full -> half
    assert 9000 < second[0] < 11000 and abs(second[-1]) < 200  # half -> nothing
    assert not third.any()
    assert np.all(np.diff(np.concatenate([first, second]).astype(int)) <= 0)  # monotone fade
    c.decode(loud)  # a real frame resets the fade
    assert samples(c.conceal())[0] == 20000


def test_registry_takes_a_new_codec_without_touching_stream_logic() -> None:
    class Halving:
        id = 200

        def __init__(self, fmt: AudioFormat) -> None:
            self.fmt = fmt

        def encode(self, p: bytes) -> bytes:
            return p[::2]

        def decode(self, p: bytes) -> bytes:
            return bytes(b for x in p for b in (x, x))

        def conceal(self) -> bytes:
            return bytes(self.fmt.frame_bytes)

    with pytest.raises(CodecError):
        make_codec(200, FMT)
    register_codec(200, Halving)
    try:
        c = make_codec(200, FMT)
        assert c.decode(c.encode(b"\x01\x01\x02\x02")) == b"\x01\x01\x02\x02"
        assert 200 in known_codecs()
    finally:
        from agent.talk import codec as mod
        mod._REGISTRY.pop(200)
    with pytest.raises(ValueError):
        register_codec(256, Halving)


# --- groups -----------------------------------------------------------------------------------

def test_announcement_round_trip() -> None:
    ann = parse_announcement(encode_announcement("node-a", ["ops", "all"], "ops"))
    assert ann is not None and ann.groups == ("ops", "all") and ann.current == "ops" and ann.name == "node-a"


@pytest.mark.parametrize("data", [
    b"", b"nope", b"[]", b'{"v":2,"name":"a","groups":["x"],"current":"x"}',
    b'{"v":1,"name":"a","groups":["x"],"current":"y"}', b'{"v":1,"name":"a","groups":[],"current":"x"}',
    b'{"v":1,"name":"a","groups":["bad group"],"current":"bad group"}',
    b'{"v":1,"name":1,"groups":["x"],"current":"x"}', b"\xff\xfe", b"{" * 5000,
])
def test_bad_announcements_are_refused_without_raising(data: bytes) -> None:
    assert parse_announcement(data) is None


def test_directory_is_bounded_and_lists_members() -> None:
    d = GroupDirectory(max_peers=3)
    for i in range(5):
        d.update(f"p{i}", parse_announcement(encode_announcement("n", ["a", f"g{i}"], "a")))  # type: ignore[arg-type]
    assert len(d) == 3 and d.get("p0") is None
    assert sorted(d.members("a")) == ["p2", "p3", "p4"] and d.members("g4") == ["p4"]
    d.forget("p4")
    assert d.members("g4") == []


def test_admission_policy() -> None:
    ops = parse_announcement(encode_announcement("n", ["ops", "all"], "ops"))
    allg = parse_announcement(encode_announcement("n", ["ops", "all"], "all"))
    assert admission(ops, ["ops"], 0, 4) is None
    assert "not in talk group 'all'" in (admission(allg, ["ops"], 0, 4) or "")
    assert "busy" in (admission(ops, ["ops"], 4, 4) or "")
    assert "unknown" in (admission(None, ["ops"], 0, 4) or "")


# --- queue, latency ---------------------------------------------------------------------------

async def test_drop_oldest_queue_never_blocks_the_producer() -> None:
    q: DropOldestQueue[int] = DropOldestQueue(3)
    for i in range(10):
        q.put_nowait(i)
    assert len(q) == 3 and q.dropped == 7
    assert [await q.get() for _ in range(3)] == [7, 8, 9]
    got: list[int] = []

    async def consumer() -> None:
        got.append(await q.get())

    async with trio.open_nursery() as n:
        n.start_soon(consumer)
        await trio.testing.wait_all_tasks_blocked()  # the consumer is waiting in get(), not a guess
        assert got == []  # waits while empty
        q.put_nowait(42)
    assert got == [42]


def test_latency_window() -> None:
    w = LatencyWindow(size=100)
    assert w.percentile_ms(50) is None
    for us in range(1000, 201_000, 1000):
        w.add(us)
    assert len(w) == 100 and w.count == 200
    assert w.percentile_ms(50) == pytest.approx(150.5, abs=0.01)
    w.reset()
    assert w.percentile_ms(99) is None
