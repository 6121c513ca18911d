"""In-process agents for talk tests: a real mesh node on 127.0.0.1, fake hardware, a `Talk`,
and a dispatcher that forwards every mesh event to it (as agent/service.py does)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import trio

from agent.config import AgentConfig
from agent.measure import ToneAnalysis, analyse_tone, read_wav
from agent.mesh import AviP2p, AviP2pConfig, Event
from agent.talk import Talk
from tests.poll import wait_until
from hw.audio.fake import NullSink, ToneSource, WavSink, WavSource
from hw.gpio.fake import FakeButton, FakeLed

RATE = 16000


@dataclass
class Agent:
    name: str
    node: Any
    talk: Talk
    button: FakeButton
    led: FakeLed
    wav: Path | None
    events: list[Event]

    @property
    def peer_id(self) -> str:
        return self.node.handle().local_peer_id

    @property
    def addr(self) -> str:
        return self.node.handle().listen_addresses()[0]

    async def hold(self, seconds: float) -> None:
        await self.button.press()
        await trio.sleep(seconds)
        await self.button.release()


@asynccontextmanager
async def agent(name: str, tmp: Path, *, freq: float = 440.0, groups: tuple[str, ...] = ("default",),
                current: str | None = None, record: bool = True, source_wav: Path | None = None,
                **talk: Any) -> AsyncIterator[Agent]:
    """``source_wav``: the microphone loops this WAV instead of a ``freq`` tone."""
    cfg = AgentConfig(node={"name": name},
                      talk={"groups": list(groups), "current_group": current, **talk})
    wav = tmp / f"{name}.wav" if record else None
    async with AsyncExitStack() as stack:
        node, events = await stack.enter_async_context(AviP2p.start(AviP2pConfig.local_only(node_name=name)))
        source = await stack.enter_async_context(WavSource(source_wav, loop=True) if source_wav
                                                 else ToneSource(frequency_hz=freq, level=0.5))
        sink = await stack.enter_async_context(WavSink(wav) if wav else NullSink())
        button = await stack.enter_async_context(FakeButton())
        led = await stack.enter_async_context(FakeLed("idle"))
        t = Talk(cfg, node.handle(), source, sink, button, led)
        seen: list[Event] = []
        nursery = await stack.enter_async_context(trio.open_nursery())
        await nursery.start(t.run)

        async def dispatch() -> None:
            async for ev in events:
                seen.append(ev)
                del seen[:-2000]
                await t.handle_event(ev)

        nursery.start_soon(dispatch)
        try:
            yield Agent(name, node, t, button, led, wav, seen)
        finally:
            nursery.cancel_scope.cancel()


async def know_each_other(*agents: Agent, timeout: float = 20.0) -> None:
    """Wait until each agent knows every connected other agent of its group (announcements)."""
    for a in agents:
        others = {b.peer_id for b in agents if b is not a
                  and a.talk.talk_config.active_group in b.talk.talk_config.groups}
        await wait_until(lambda: others <= set(a.talk.peers_in_group()), timeout,
                         f"{a.name} to learn the groups of its peers")


# --- WAV analysis -------------------------------------------------------------------------------

def analyse(path: Path, threshold_rms: float = 500.0) -> ToneAnalysis:
    x, rate = read_wav(path)
    assert rate == RATE, f"{path}: {rate} Hz"
    return analyse_tone(x, rate, threshold_rms=threshold_rms)
