"""Codecs on their own (Opus round trip, concealment, bad payloads) and their negotiation: the
pure `choose_codec`, the announcement field, and two real mesh nodes where one behaves like a
node of the first version (announces no codecs, sends and decodes only PCM)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from agent.mesh import AudioData
from agent.talk.codec import (OPUS, PCM_S16LE, CodecError, OpusCodec, OpusSettings, PcmS16le, choose_codec, common_codec,
                              codec_ids, make_codec, opus_available)
from agent.talk.engine import Talk
from agent.talk.groups import encode_announcement, parse_announcement
from hw.audio.base import AudioFormat

from tests.poll import wait_until

from .rig import agent, analyse, know_each_other

FMT = AudioFormat()
needs_opus = pytest.mark.skipif(not opus_available(), reason="libopus0 / opuslib-next not installed")


def tone(n_frames: int, hz: float = 300.0, level: float = 8000.0) -> list[bytes]:
    t = np.arange(n_frames * FMT.frame_samples) / FMT.rate
    x = np.rint(level * np.sin(2 * np.pi * hz * t)).astype("<i2")
    return [x[i * FMT.frame_samples:(i + 1) * FMT.frame_samples].tobytes() for i in range(n_frames)]


def corr(a: bytes, b: bytes) -> float:
    x, y = np.frombuffer(a, "<i2").astype(float), np.frombuffer(b, "<i2").astype(float)
    return float(np.dot(x, y) / np.sqrt(np.dot(x, x) * np.dot(y, y)))


# --- Opus --------------------------------------------------------------------------------------

@needs_opus
@pytest.mark.parametrize("frame_ms", [20, 40])
def test_opus_round_trip_packs_frames_and_keeps_the_signal(frame_ms: int) -> None:
    enc, dec = OpusCodec(FMT, OpusSettings(frame_ms=frame_ms, bitrate=32_000)), OpusCodec(FMT)
    per = frame_ms // FMT.frame_ms
    frames = tone(40)
    out, sizes = [], []
    for f in frames:
        p = enc.encode(f)
        if p is None:
            continue
        sizes.append(len(p))
        assert enc.frames_in(p) == per and dec.frames_in(p) == per
        out.append(dec.decode(p))
    assert len(out) == 40 // per and all(len(o) == per * FMT.frame_bytes for o in out)
    # about bitrate x packet duration / 8 bytes a packet, far below PCM's 640 B per frame
    assert max(sizes[2:]) < 32_000 * frame_ms / 1000 / 8 * 1.6
    # the codec delays the signal a little (look-ahead): compare with the best lag
    heard, sent = b"".join(out)[FMT.frame_bytes * 4:], b"".join(frames)
    best = max(corr(heard[:6400], sent[FMT.frame_bytes * 4 - 2 * lag:][:6400]) for lag in range(0, 400, 2))
    assert best > 0.9


@needs_opus
def test_opus_conceals_with_plc_and_recovers_with_fec() -> None:
    enc, dec = OpusCodec(FMT, OpusSettings(frame_ms=20, fec=True, loss_percent=20)), OpusCodec(FMT)
    packets = [p for p in (enc.encode(f) for f in tone(30)) if p is not None]
    for p in packets[:20]:
        dec.decode(p)
    plc = dec.conceal()
    assert len(plc) == FMT.frame_bytes and np.abs(np.frombuffer(plc, "<i2")).max() > 1000  # not silence
    fec = dec.conceal(next_payload=packets[21])  # packet 20 lost, 21 is here: its FEC carries 20
    assert len(fec) == FMT.frame_bytes and np.abs(np.frombuffer(fec, "<i2")).max() > 1000


@needs_opus
@pytest.mark.parametrize("payload", [b"", bytes(5000), b"\xff\xff\xff", b"\x03"])
def test_opus_rejects_bad_payloads_before_libopus(payload: bytes) -> None:
    with pytest.raises(CodecError):
        OpusCodec(FMT).decode(payload)


def test_opus_settings_are_checked() -> None:
    for bad in (dict(bitrate=1000), dict(frame_ms=30), dict(loss_percent=120), dict(complexity=11)):
        with pytest.raises(ValueError):
            OpusSettings(**bad)  # type: ignore[arg-type]


# --- negotiation (pure) ------------------------------------------------------------------------

def test_choose_codec() -> None:
    both = (OPUS, PCM_S16LE)
    assert choose_codec((OPUS, PCM_S16LE), both, local=both) == OPUS
    assert choose_codec((OPUS, PCM_S16LE), None, local=both) == PCM_S16LE        # first-version peer
    assert choose_codec((OPUS, PCM_S16LE), (PCM_S16LE,), local=both) == PCM_S16LE
    assert choose_codec((OPUS, PCM_S16LE), both, local=(PCM_S16LE,)) == PCM_S16LE  # no libopus here
    assert choose_codec((PCM_S16LE,), both, local=both) == PCM_S16LE               # talk.codec = "pcm"
    assert choose_codec((OPUS,), (PCM_S16LE,), local=both) == PCM_S16LE            # PCM is always there


def test_announced_codec_names() -> None:
    assert codec_ids(["opus", "pcm"]) == (OPUS, PCM_S16LE)
    assert codec_ids(["lyra", "opus"]) == (OPUS, PCM_S16LE)  # unknown names ignored, PCM implied
    assert codec_ids("opus") == (PCM_S16LE,)
    new = parse_announcement(encode_announcement("a", ["g"], "g", ["opus", "pcm"]))
    assert new is not None and new.codecs == ("opus", "pcm")
    old = parse_announcement(json.dumps({"v": 1, "name": "a", "groups": ["g"], "current": "g"}).encode())
    assert old is not None and old.codecs is None
    assert parse_announcement(encode_announcement("a", ["g"], "g")[:-1] + b',"codecs":"opus"}') is None
    # a first-version parser ignores the new key: the announcement keeps every old field as it was
    obj = json.loads(encode_announcement("a", ["g"], "g", ["opus"]))
    assert {k: obj[k] for k in ("v", "name", "groups", "current")} == {"v": 1, "name": "a", "groups": ["g"],
                                                                        "current": "g"}


def test_pcm_codec_counts_frames() -> None:
    c = make_codec(PCM_S16LE, FMT)
    assert isinstance(c, PcmS16le) and c.frames_in(bytes(FMT.frame_bytes)) == 1


# --- negotiation through real nodes ------------------------------------------------------------

class FirstVersionTalk(Talk):
    """Announces like a node of the first version (no ``codecs``) and sends PCM."""

    def _announcement(self) -> bytes:
        tc = self.talk_config
        return encode_announcement(self.config.node.name, tc.groups, tc.active_group)


def codecs_heard(events: list[object]) -> set[int]:
    return {e.codec for e in events if isinstance(e, AudioData)}


@needs_opus
async def test_new_and_first_version_nodes_talk_both_ways_in_pcm(tmp_path: Path, monkeypatch) -> None:
    import tests.talk.rig as rig

    async with agent("new", tmp_path, freq=440) as new:
        monkeypatch.setattr(rig, "Talk", FirstVersionTalk)
        async with agent("old", tmp_path, freq=660, codec="pcm") as old:
            await new.node.handle().dial(old.addr)
            await know_each_other(new, old)
            await new.hold(1.0)
            await wait_until(lambda: old.talk.stats().frames_played > 30 and old.talk.stats().streams_in == 0,
                             15, "old to hear new")
            await old.hold(1.0)
            await wait_until(lambda: new.talk.stats().frames_played > 30 and new.talk.stats().streams_in == 0,
                             15, "new to hear old")
    assert codecs_heard(old.events) == {PCM_S16LE}, "a first-version node was sent something it cannot decode"
    assert codecs_heard(new.events) == {PCM_S16LE}
    for who, freq in ((old, 440), (new, 660)):
        h = analyse(who.wav)  # type: ignore[arg-type]
        assert abs(h.peaks_hz[0] - freq) < 5 and h.sound_s >= 0.8, h


@needs_opus
async def test_two_new_nodes_talk_opus_and_report_it(tmp_path: Path) -> None:
    async with agent("a", tmp_path, freq=440) as a, agent("b", tmp_path, freq=660) as b:
        await a.node.handle().dial(b.addr)
        await know_each_other(a, b)
        await a.button.press()
        await wait_until(lambda: any(s.codec == "opus" for s in b.talk.stats().streams), 15,
                         "b to report an Opus stream")
        st = b.talk.stats().streams[0]
        assert st.peer == a.peer_id and st.delay_ms >= 0 and st.target_ms >= 20
        await a.button.release()
        await wait_until(lambda: b.talk.stats().streams_in == 0, 15, "the talk to end")
    assert codecs_heard(b.events) == {OPUS}
    h = analyse(b.wav)  # type: ignore[arg-type]
    assert abs(h.peaks_hz[0] - 440) < 5, h


def test_common_codec_for_relayed_frames() -> None:
    both = (OPUS, PCM_S16LE)
    assert common_codec(both, [both, both], local=both) == OPUS
    assert common_codec(both, [both, None], local=both) == PCM_S16LE  # one first-version member
    assert common_codec(both, [], local=both) == OPUS
    assert common_codec(both, [both], local=(PCM_S16LE,)) == PCM_S16LE
