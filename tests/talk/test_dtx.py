"""Discontinuous transmission (agent/talk/dtx.py): the pure gate, the announcement's feature,
and real mesh nodes: a talker leaves silent packets out only to listeners that announced they
play gaps as silence, sends a node of the previous version every packet, and in a relayed
press only when every member plays gaps."""

from __future__ import annotations

from contextlib import AsyncExitStack
from pathlib import Path

import numpy as np
import pytest

from agent.mesh import AudioData
from agent.talk.dtx import Dtx, DtxGate, hangover_packets
from agent.talk.engine import Talk
from agent.talk.groups import encode_announcement, parse_announcement
from tests.poll import wait_until
from tests.speech import write_wav

from .rig import Agent, agent, analyse, know_each_other


# --- pure --------------------------------------------------------------------------------------

def test_the_gate_keeps_a_hangover_then_marks_the_gap_once_then_skips() -> None:
    g = DtxGate(hangover=2)
    pattern = [True, True, True, True, False, True, True, True, True, True, False, True, False]
    got = [g.decide(s) for s in pattern]
    S, M, K = Dtx.SEND, Dtx.MARKER, Dtx.SKIP
    # the lead-in silence whole; sound; 2 silent sent, the marker, skipped...; sound again
    assert got == [S, S, S, S, S, S, S, M, K, K, S, S, S]
    assert g.gaps == 1 and g.skipped == 2
    g0 = DtxGate(0)
    assert [g0.decide(s) for s in (False, True, True)] == [S, M, K]
    assert hangover_packets(40) == 2 and hangover_packets(20) == 4 and hangover_packets(40, 0) == 0
    with pytest.raises(ValueError):
        DtxGate(-1)


def test_the_feature_is_announced_and_older_announcements_have_none() -> None:
    new = parse_announcement(encode_announcement("a", ["g"], "g", ["opus", "pcm"], features=["dtx"]))
    assert new is not None and new.features == ("dtx",) and new.codecs == ("opus", "pcm")
    old = parse_announcement(encode_announcement("a", ["g"], "g", ["opus", "pcm"]))
    assert old is not None and old.features == ()
    # a newer node's unknown features are kept as names (ignored), a malformed field refuses it
    assert parse_announcement(encode_announcement("a", ["g"], "g", features=["dtx", "later"])).features == ("dtx", "later")  # type: ignore[union-attr]
    assert parse_announcement(encode_announcement("a", ["g"], "g")[:-1] + b',"features":"dtx"}') is None


# --- real nodes ----------------------------------------------------------------------------------

class PreviousVersionTalk(Talk):
    """Announces like the previous version (codecs, no features) and never leaves packets out."""

    def _announcement(self) -> bytes:
        tc = self.talk_config
        return encode_announcement(self.config.node.name, tc.groups, tc.active_group, ["opus", "pcm"])

    def _dtx_for(self, peer):  # type: ignore[no-untyped-def]
        return False


def bursts(path: Path, on_s: float = 0.3, off_s: float = 0.5) -> Path:
    """A tone burst then digital silence, looped by the talker's microphone."""
    t = np.arange(int(on_s * 16000)) / 16000
    x = np.concatenate([np.rint(12000 * np.sin(2 * np.pi * 440 * t)), np.zeros(int(off_s * 16000))])
    write_wav(path, x.astype(np.int16))
    return path


def markers(a: Agent) -> int:
    return sum(1 for e in a.events if isinstance(e, AudioData) and not e.data)


def packets(a: Agent) -> int:
    return sum(1 for e in a.events if isinstance(e, AudioData) and e.data)


async def test_gaps_go_only_to_listeners_that_play_them_and_the_previous_version_gets_every_packet(
        tmp_path: Path, monkeypatch) -> None:
    import tests.talk.rig as rig

    wav = bursts(tmp_path / "bursts.wav")
    async with AsyncExitStack() as stack:
        talker = await stack.enter_async_context(agent("t", tmp_path, source_wav=wav, dtx=True))
        new = await stack.enter_async_context(agent("new", tmp_path, freq=660))
        monkeypatch.setattr(rig, "Talk", PreviousVersionTalk)
        old = await stack.enter_async_context(agent("old", tmp_path, source_wav=wav, dtx=True))
        for x in (new, old):
            await talker.node.handle().dial(x.addr)
        await old.node.handle().dial(new.addr)
        await know_each_other(talker, new, old)
        await talker.hold(3.0)
        await wait_until(lambda: new.talk.stats().streams_in == 0 and old.talk.stats().streams_in == 0
                         and new.talk.stats().frames_played > 0, 15, "both to hear the talk end")
        new_conc = new.talk.stats().frames_concealed
        new_packets, new_markers = packets(new), markers(new)
        # the other way: a node of the previous version talks to a new one
        new.events.clear()
        played = new.talk.stats().frames_played
        await old.hold(2.0)
        await wait_until(lambda: new.talk.stats().streams_in == 0 and new.talk.stats().frames_played > played + 50,
                         15, "new to hear the previous version's talk")
    # 3 s of 0.8 s cycles: about four gaps; 40 ms packets, 0.5 s of silence each = ~10 left out
    assert markers(new) == 0 and packets(new) >= 45, "the previous version's talker sent every packet"
    assert markers(old) == 0, "a node of the previous version was sent a gap marker"
    print(f"packets: to the new listener {new_packets} + {new_markers} markers, to the previous "
          f"version {packets(old)}; concealed at the new listener {new_conc}")
    assert new_markers >= 3 and new_packets <= packets(old) - 15, (new_packets, new_markers, packets(old))
    # the gaps were played as silence, not concealed as stalls (a stall-playout conceals them all:
    # ~12 frame periods each); a few concealments are allowed for a busy machine's scheduling
    assert new_conc < 12, new_conc
    for x in (new, old):
        heard = analyse(x.wav)  # type: ignore[arg-type]
        assert abs(heard.peaks_hz[0] - 440) < 5, (x.name, heard)


@pytest.mark.parametrize("second", ["new", "previous"])
async def test_a_relayed_press_leaves_packets_out_only_if_every_member_plays_gaps(
        tmp_path: Path, monkeypatch, second: str) -> None:
    """relay_fanout 1: the talker streams to one member, which relays its frames unchanged
    (gap markers included) to the other (the talk spreads over their connection)."""
    import tests.talk.rig as rig

    wav = bursts(tmp_path / "bursts.wav")
    async with AsyncExitStack() as stack:
        talker = await stack.enter_async_context(agent("t", tmp_path, source_wav=wav, relay_fanout=1, dtx=True))
        first = await stack.enter_async_context(agent("m1", tmp_path, relay_fanout=1))
        if second == "previous":
            monkeypatch.setattr(rig, "Talk", PreviousVersionTalk)
        other = await stack.enter_async_context(agent("m2", tmp_path, relay_fanout=1))
        for x, y in ((talker, first), (talker, other), (first, other)):
            await x.node.handle().dial(y.addr)
        await know_each_other(talker, first, other)
        await talker.hold(2.5)
        await wait_until(lambda: all(x.talk.stats().streams_in == 0 and x.talk.stats().frames_played > 0
                                     for x in (first, other)), 15, "both members to hear the talk end")
        relayed = {x.name: x.talk.frames_relayed for x in (first, other)}
    # With relay_fanout 1 the talker streams to one member, which passes the talk on to the other.
    assert sorted(v > 0 for v in relayed.values()) == [False, True], relayed
    got = {x.name: (packets(x), markers(x)) for x in (first, other)}
    print(f"members {second}: (packets, markers) {got}")
    if second == "new":
        assert all(m >= 2 for _, m in got.values()), got   # gaps reach both, through the relay
    else:
        assert all(m == 0 for _, m in got.values()), got   # one member cannot play gaps: none
        assert all(p >= 55 for p, _ in got.values()), got  # 2.5 s of 40 ms packets, every one
