"""`Talk`: push-to-talk on one node. The thin trio layer around the pure parts.

Tasks (one nursery, all started by `run`):

- **capture**: while the button is held, reads the source and encodes each frame once and
  queues it on every outgoing stream with its capture timestamp (`send_audio` never waits for
  the network). While it is not, the microphone is read for one level window (1 s) every
  ``IDLE_METER_S`` (and at once after a gain change) and stopped in between: an idle node does
  not wake 50 times a second; a press starts it again at once.
- **button**: pressed offers the talk to up to ``talk.relay_fanout`` connected members of the
  current talk group (`relay.Spread`; each stream's request carries the talk's context: talker,
  press number, group); released closes the streams. A stuck button stops after ``max_talk_s``.
- **relaying**: a node that accepts a stream of a talk offers it on at once (before its own
  accept completes) to its connected members that are not known to hear it, ``relay_fanout`` at
  a time, and forwards every frame, unchanged, to those that accept; a member that hears the
  talk already declines, so each member hears it once and no stream needs a new connection. A
  stream from a node of the previous version (no context) is relayed by the plan its talker
  published on ``PLAN_TOPIC``, as before.
- **playout**: every frame period pulls one frame of PCM from each incoming stream's adaptive
  playout (jitter buffer, decoder, concealment and time-stretching: playout.py), mixes, and
  hands the frame to a bounded drop-oldest queue. It runs on for a level window of silence
  after the last stream ends (so the talk's tail plays out and the playback level falls to
  silence), then stops the sink until an incoming stream or a local sound wakes it.
- **sink**: takes frames from that queue and writes them to the sink, one frame of silence
  ahead whenever the device (re)starts so it never underruns; the mouth-to-ear latency of each
  frame is measured here (sink hand-off time minus capture timestamp).
- **announce**: publishes this node's talk groups (see `groups.py`).
- **housekeeping**: answers stream requests from peers whose groups are not known yet.

`handle_event` only updates state and starts tasks; it never waits on audio or the network.
"""

from __future__ import annotations

import logging
from collections import deque
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Protocol

import numpy as np
import trio

from agent.config import AgentConfig, TalkConfig
from agent.mesh import (AudioData, AudioStreamAccepted, AudioStreamClosed, AudioStreamRequested,
                        AviP2pError, Event, Message, PeerConnected, PeerDisconnected, PeerId, StreamId,
                        UnknownStreamError)
from agent.levels import LevelMeter, Levels, apply_gain
from agent.metrics import LatencyHistogram
from hw.audio.base import AudioFormat, AudioSink, AudioSource, monotonic_us
from hw.gpio.base import Button, Led, LedPattern

from .codec import (CODEC_NAMES, OPUS, PCM_S16LE, Codec, CodecError, OpusCodec, OpusSettings, choose_codec,
                    codec_ids, codec_names, common_codec, known_codecs, make_codec)
from .dtx import DTX_FEATURE, DTX_SILENCE_RMS, Dtx, DtxGate, hangover_packets
from .groups import TOPIC, GroupDirectory, admission, encode_announcement, parse_announcement
from .playout import AdaptivePlayout, DelayEstimator
from .latency import LatencyWindow
from .mixer import Mixer
from .outqueue import DropOldestQueue
from .relay import (ALREADY_HEARING, PLAN_TOPIC, RelayPlan, RelayTable, Spread, TalkContext, adopt, encode_context,
                    parse_context, parse_plan, spread_order)
from .stretch import rms

if TYPE_CHECKING:  # the mesh node's module loads py-libp2p: only its type is needed here
    from agent.mesh import AviP2pHandle

__all__ = ["Talk", "TalkLike", "TalkFactory", "TalkStats", "StreamStatus"]

log = logging.getLogger("agent.talk")

OUTPUT_QUEUE_FRAMES = 5      # playout -> sink; beyond this the oldest frame is dropped
PENDING_GRACE_S = 3.0        # how long a request from a peer of unknown group may wait
MAX_PENDING = 16
ANNOUNCE_SLOW_S = 5.0
# Announcements per second the whole fleet sends at most: a node's interval grows with the
# number of nodes it knows (ANNOUNCE_SLOW_S at least), so idle traffic stays flat as the fleet
# grows. Newcomers get everyone's latest announcement from their neighbours (retained topic).
ANNOUNCE_FLEET_RATE = 0.2
# After a peer connects, one extra announcement (coalesced: at most one per this many seconds),
# not a burst: with N nodes starting, bursts made an announcement storm of N^2 messages.
ANNOUNCE_MIN_GAP_S = 1.0
GROUPS_LOGGED = 8            # "is in talk groups" lines at INFO for new peers, then DEBUG
RELAY_PREROLL_FRAMES = 16    # frames a relay keeps for children whose stream is still opening
# A node passing a talk on offers it to at most talk.relay_fanout connected members at a time;
# this long after it started it offers it to every connected member not known first hand to hear
# it (one whose other neighbours all filled their fanout would not hear otherwise): relay.Spread.
# Short, so such a member misses little of the talk (at N = 25 two members were reached only by
# the sweep at 1 s, 02:09, and played 3.9 of 5 s: a late stream's backlog beyond the playout's
# 220 ms maximum is not played); longer than a hop (accepts come 10-200 ms after an offer).
SPREAD_SWEEP_S = 0.5
HOUSEKEEPING_S = 0.25
CLOSE_TIMEOUT_S = 2.0
SHUTDOWN_S = 0.5             # closing our streams when push-to-talk stops (SIGTERM: exit in ~2 s)
PREROLL_FRAMES = 16          # 320 ms of 20 ms frames kept for streams still being opened
PLAYOUT_RESYNC_FRAMES = 4    # a playout clock this far behind restarts instead of bursting
LEARNT_PEERS = 32            # links whose last stream's delay estimate a new stream starts from
LEARNT_FOR_S = 600.0         # ... when that stream ended at most this long ago
# The button: a tap (shorter than TAP_MAX_S) followed within TAP_GAP_S by a long press moves to
# the next talk group; that second press does not transmit (a long press alone is just talking).
TAP_MAX_S = 0.5
TAP_GAP_S = 0.6
GROUP_LED_S = 4.0            # how long the LED shows the new group's number
IDENTIFY_S = 5.0             # how long identify blinks
LOCAL_SOUND_FRAMES = 250     # bounded queue of locally generated sound (chimes): 5 s
# While not transmitting, the microphone is read for one level window (capture_meter's, 1 s)
# this often and stopped in between; the sink is stopped once a level window of silence has
# played. Both are woken at once by what needs them (a press, a gain change; a stream, a chime).
IDLE_METER_S = 10.0


def group_pattern(index: int) -> LedPattern:
    """Group number ``index + 1`` as that many short blinks, then a pause."""
    steps: list[tuple[bool, float]] = []
    for _ in range(index + 1):
        steps += [(True, 0.15), (False, 0.25)]
    steps[-1] = (False, 1.2)
    return LedPattern(f"group-{index + 1}", tuple(steps))


IDENTIFY_PATTERN = LedPattern("identify", ((True, 0.05), (False, 0.05), (True, 0.05), (False, 0.45)))


@dataclass(frozen=True, slots=True)
class StreamStatus:
    """One incoming stream as it plays: codec, buffer delay now and its target, frame periods
    concealed, speech and silence time-stretched (ms), frames that came too late."""

    peer: str
    codec: str
    delay_ms: float
    target_ms: float
    concealed: int
    stretched_ms: float
    late: int


@dataclass(frozen=True, slots=True)
class TalkStats:
    """A snapshot of the push-to-talk counters (frames are 20 ms by default).

    Frames are capture frames (20 ms) even when a codec packs several in one payload.
    ``frames_sent``: frames handed to the mesh, counted per stream. ``frames_received``: frames
    that arrived on accepted incoming streams. ``frames_dropped``: jitter-buffer overflow and
    catch-up skips, playback-queue drops, undecodable frames and frames on unknown streams.
    ``frames_late``: arrived after their playout slot (dropped). ``frames_concealed``: frame
    periods of concealment (lost frames, and waiting out stalls). ``stretched_ms``: time added or
    removed by the adaptive playout (speech accelerated or expanded, silence dropped or added).
    ``latency_*_ms``: mouth-to-ear (capture timestamp to sink hand-off) over recent frames.
    ``streams``: the incoming streams playing now.
    """

    transmitting: bool
    group: str
    streams_in: int
    streams_out: int
    frames_sent: int
    frames_received: int
    frames_played: int
    frames_dropped: int
    frames_late: int
    frames_duplicate: int
    frames_concealed: int
    streams_rejected: int
    streams_failed: int
    latency_p50_ms: float | None
    latency_p99_ms: float | None
    latency_samples: int
    latency_p95_ms: float | None = None
    stretched_ms: float = 0.0
    streams: tuple[StreamStatus, ...] = ()
    receiving: bool = False
    groups: tuple[str, ...] = ()
    capture_levels: Levels = Levels()
    playback_levels: Levels = Levels()


@dataclass(eq=False)
class _Out:
    peer: PeerId
    generation: int
    stream_id: StreamId | None = None
    accepted: bool = False
    codec: int = PCM_S16LE
    dtx: bool = False  # silent packets left out (the listener announced it plays gaps as silence)


@dataclass(eq=False)
class _In:
    peer: PeerId
    stream_id: StreamId
    playout: AdaptivePlayout
    accepted: bool = False
    # Relaying: the plan this stream belongs to, our children's streams (None while opening)
    # and the latest frames for children still opening.
    plan: RelayPlan | None = None
    talk: TalkContext | None = None   # the talk this stream carries (from its request's context)
    spread: Spread | None = None      # to whom we pass it on (a talk context that relays)
    relay_out: dict[PeerId, StreamId | None] = field(default_factory=dict)
    relay_buf: deque[tuple[bytes, int, int]] = field(default_factory=lambda: deque(maxlen=RELAY_PREROLL_FRAMES))


@dataclass(frozen=True, slots=True)
class _Playout:
    pcm: bytes
    timestamps: tuple[int, ...] = field(default=())


_STOP_SINK = _Playout(b"")  # playout -> sink: nothing more to play for now, stop the device


@dataclass
class _Totals:
    """Counters of incoming streams that have ended (live streams are summed on demand)."""

    played: int = 0
    late: int = 0
    duplicates: int = 0
    concealed: int = 0
    overflow: int = 0
    stretched_ms: float = 0.0


class TalkLike(Protocol):
    """What the service runs and reads of push-to-talk: :class:`Talk`, or a stand-in a test
    hands the service (``Service(..., talk_class=...)``)."""

    on_change: Callable[[], None]  # set by the service: talking/hearing/group changed
    latency_histogram: LatencyHistogram

    async def run(self, *, task_status: trio.TaskStatus[None] = ...) -> None: ...

    async def handle_event(self, event: Event) -> None: ...

    def stats(self) -> TalkStats: ...

    def identify(self, seconds: float = ...) -> None: ...

    def set_gains(self, capture_db: float, playback_db: float) -> None: ...

    def reconfigure(self, config: AgentConfig) -> None: ...


# How the service builds push-to-talk once the mesh runs and the devices are open.
TalkFactory = Callable[[AgentConfig, "AviP2pHandle", AudioSource, AudioSink, Button, Led], TalkLike]


class Talk:
    """Push-to-talk for one node: ``await nursery.start(talk.run)``, then feed it every mesh
    event with ``await talk.handle_event(event)``; ``talk.stats()`` for figures."""

    def __init__(self, config: AgentConfig, handle: AviP2pHandle, source: AudioSource, sink: AudioSink,
                 button: Button, led: Led, *, clock: Callable[[], int] = monotonic_us) -> None:
        self.config = config
        self.handle = handle
        self.source = source
        self.sink = sink
        self.button = button
        self.led = led
        self._clock = clock
        self.format: AudioFormat = source.format
        self._encoders: dict[int, Codec] = {}  # this press's encoders, one per codec in use
        self._frame_counters: dict[int, Codec] = {}  # to count the frames in received payloads
        self._mixer = Mixer(self.format.frame_bytes)
        self._queue: DropOldestQueue[_Playout] = DropOldestQueue(OUTPUT_QUEUE_FRAMES)
        self._latency = LatencyWindow()
        self._dir = GroupDirectory()
        self._out: dict[PeerId, _Out] = {}
        self._out_by_sid: dict[StreamId, PeerId] = {}
        self._closed_recent: deque[StreamId] = deque(maxlen=64)
        self._in: dict[StreamId, _In] = {}
        self._pending: dict[StreamId, tuple[PeerId, float]] = {}
        self._tx = False
        self._tx_gen = 0
        self._tx_since = 0.0
        # This press's latest payloads per codec, for streams still opening (bounded: PREROLL_FRAMES).
        self._preroll: dict[int, deque[tuple[bytes, int]]] = {}
        self._packet_ts: dict[int, int] = {}  # codec -> capture time of the packet being filled
        self._packet_loud: dict[int, bool] = {}  # codec -> a frame of the packet being filled is not silent
        self._press_codec: int | None = None  # one codec for a relayed press, None: per listener
        self._press_dtx: bool | None = None   # a relayed press: may its frames have gaps (all members)
        self._gates: dict[StreamId, DtxGate] = {}  # our DTX streams' gap decisions
        self._stuck = False
        self._nursery: trio.Nursery | None = None
        self._announce_wake = trio.Event()
        self._capture_wake = trio.Event()  # a press or a gain change: read the microphone now
        self._play_wake = trio.Event()     # a stream or a local sound: run the playout again
        self._relays = RelayTable(str(handle.local_peer_id), ttl_s=config.talk.max_talk_s + 60.0)
        self._spread: Spread | None = None  # this press: to whom the talker offers it
        self._plan_seq = 0
        self._relay_sids: dict[StreamId, StreamId] = {}  # our relay stream -> the incoming one
        self._prerolling: set[StreamId] = set()  # streams _send_backlog is filling (live sends skip them)
        self._sent_ts: dict[StreamId, int] = {}  # per stream of ours, the newest frame's capture time sent
        self.frames_relayed = 0
        self._groups_logged = 0
        self.relay_failures = 0
        self.offers_declined = 0  # offers of a talk we hear already (declined: not an error)
        self._led_mine: str | None = None
        self._led_saved: Any = None
        self._totals = _Totals()
        self._learnt: dict[PeerId, tuple[float, DelayEstimator]] = {}  # peer -> (ended, estimate)
        self.frames_sent = 0
        self.frames_received = 0
        self.frames_unknown = 0  # on streams we do not play (not accepted, already gone)
        self.frames_bad = 0      # undecodable or of an unknown codec
        self.streams_rejected = 0
        self.streams_failed = 0
        self.bad_announcements = 0
        self.playout_resyncs = 0
        self.capture_gain_db = config.audio.capture_gain_db
        self.playback_gain_db = config.audio.playback_gain_db
        self.capture_meter = LevelMeter()
        self.playback_meter = LevelMeter()
        self.latency_histogram = LatencyHistogram()
        self._local_sound: deque[bytes] = deque(maxlen=LOCAL_SOUND_FRAMES)
        self._press_at: float | None = None
        self._last_tap_end: float | None = None
        self._group_press = False
        self._led_override: str | None = None  # a group number or identify is showing
        self._led_override_gen = 0
        self.group_changes = 0
        self._activity = (False, False)
        # Called when transmitting/receiving starts or stops, or the group changes (the service
        # sets it to publish its status at once).
        self.on_change: Callable[[], None] = lambda: None

    @property
    def talk_config(self) -> TalkConfig:
        return self.config.talk

    # --- public surface ----------------------------------------------------------------------
    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Run until cancelled; reports started once subscribed and all tasks are running."""
        if self.sink.format != self.format:
            raise ValueError(f"source format {self.format} differs from sink format {self.sink.format}")
        try:
            async with trio.open_nursery() as n:
                self._nursery = n
                # Capture first: the source must be read from the moment we take it over, or it
                # overruns while the subscription below goes round the mesh.
                n.start_soon(self._capture_loop)
                await self.handle.subscribe(TOPIC)
                await self.handle.subscribe(PLAN_TOPIC)
                n.start_soon(self._button_loop)
                n.start_soon(self._playout_loop)
                n.start_soon(self._sink_loop)
                n.start_soon(self._announce_loop)
                n.start_soon(self._housekeeping_loop)
                log.info("push-to-talk ready: group %s (member of %s)", self.talk_config.active_group,
                         ", ".join(self.talk_config.groups))
                task_status.started()
        finally:
            self._nursery = None
            with trio.CancelScope(shield=True):
                await self._shutdown()

    async def handle_event(self, event: Event) -> None:
        """Take one mesh event. Returns at once: state changes only, network calls run as tasks."""
        await trio.lowlevel.checkpoint()  # a checkpoint whatever the event (the API's rule)
        match event:
            case AudioData():
                ins = self._on_audio(event)
                if ins is not None and (ins.relay_out or ins.spread is not None):
                    await self._relay_frame(ins, event)
            case Message(topic=topic, peer_id=peer, data=data) if topic == TOPIC:
                self._on_announcement(peer, data)
            case Message(topic=topic, peer_id=peer, data=data) if topic == PLAN_TOPIC:
                plan = parse_plan(data, str(peer))
                if plan is None:
                    self.bad_announcements += 1
                    log.debug("ignoring a malformed relay plan from %s", peer)
                else:
                    self._on_plan(peer, plan)
            case AudioStreamRequested(peer_id=peer, stream_id=sid):
                self._on_request(peer, sid, getattr(event, "context", b""))
            case AudioStreamAccepted(peer_id=peer, stream_id=sid):
                self._on_accepted(peer, sid)
            case AudioStreamClosed(peer_id=peer, stream_id=sid, reason=reason):
                self._on_closed(peer, sid, reason)
            case PeerConnected(peer_id=peer):
                self._on_connected(peer)
            case PeerDisconnected(peer_id=peer):
                self._on_disconnected(peer)
            case _:
                pass

    def stats(self) -> TalkStats:
        t = self._totals
        live = [(i, i.playout.stats()) for i in self._in.values()]
        played = t.played + sum(st.decoded for _, st in live)
        late = t.late + sum(st.late for _, st in live)
        dups = t.duplicates + sum(st.duplicates for _, st in live)
        concealed = t.concealed + sum(st.concealed for _, st in live)
        overflow = t.overflow + sum(st.overflow for _, st in live)
        stretched = t.stretched_ms + sum(st.stretched_ms for _, st in live)
        streams = tuple(
            StreamStatus(peer=i.peer, codec=CODEC_NAMES.get(i.playout.codec or 0, "none"),
                         delay_ms=round(st.delay_ms, 1), target_ms=round(st.target_ms, 1),
                         concealed=st.concealed, stretched_ms=round(st.stretched_ms, 1), late=st.late)
            for i, st in live if i.accepted and not i.playout.drained)
        return TalkStats(
            transmitting=self._tx,
            group=self.talk_config.active_group,
            streams_in=sum(1 for i in self._in.values() if i.accepted and not i.playout.closed),
            streams_out=sum(1 for o in self._out.values() if o.stream_id is not None),
            frames_sent=self.frames_sent,
            frames_received=self.frames_received,
            frames_played=played,
            frames_dropped=overflow + self._queue.dropped + self.frames_unknown + self.frames_bad,
            frames_late=late,
            frames_duplicate=dups,
            frames_concealed=concealed,
            streams_rejected=self.streams_rejected,
            streams_failed=self.streams_failed,
            latency_p50_ms=self._latency.percentile_ms(50),
            latency_p99_ms=self._latency.percentile_ms(99),
            latency_samples=len(self._latency),
            latency_p95_ms=self._latency.percentile_ms(95),
            stretched_ms=round(stretched, 1),
            streams=streams,
            receiving=self._receiving(),
            groups=tuple(self.talk_config.groups),
            capture_levels=self.capture_meter.levels(),
            playback_levels=self.playback_meter.levels(),
        )

    @property
    def latency(self) -> LatencyWindow:
        """The mouth-to-ear samples behind the percentiles (benches reset it between phases)."""
        return self._latency

    def peers_in_group(self) -> list[PeerId]:
        """Connected peers known (from their announcements) to be in our current talk group."""
        group = self.talk_config.active_group
        members = set(self._dir.members(group))
        return [p for p in self.handle.connected_peers() if p in members]

    def reconfigure(self, config: AgentConfig) -> None:
        """Apply new talk settings (SIGHUP): groups are re-announced at once; jitter settings
        apply to streams that start from now on."""
        self.config = config
        self._announce_wake.set()

    def set_gains(self, capture_db: float, playback_db: float) -> None:
        """Apply new capture and playback gains (dB) from the next frame on (SIGHUP); an idle
        microphone is read at once, so the level with the new gain shows within a second."""
        self.capture_gain_db, self.playback_gain_db = capture_db, playback_db
        self._capture_wake.set()

    def next_group(self) -> str:
        """Move to the next of ``talk.groups`` (wrapping), announce it at once, show it on the LED."""
        tc = self.talk_config
        i = (tc.groups.index(tc.active_group) + 1) % len(tc.groups)
        self.config = self.config.model_copy(update={"talk": tc.model_copy(update={"current_group": tc.groups[i]})})
        self.group_changes += 1
        self._announce_wake.set()  # announced at once (coalesced: ANNOUNCE_MIN_GAP_S)
        self.on_change()
        log.info("talk group is now %s (%d of %d)", tc.groups[i], i + 1, len(tc.groups),
                 extra={"group": tc.groups[i]})
        self._led_for(group_pattern(i), GROUP_LED_S)
        return tc.groups[i]

    def identify(self, seconds: float = IDENTIFY_S) -> None:
        """Play a short chime and blink the LED fast for ``seconds``, so a person finds the node."""
        self._local_sound.extend(chime_frames(self.format))
        self._play_wake.set()
        self._led_for(IDENTIFY_PATTERN, seconds)

    def _led_for(self, pattern: LedPattern, seconds: float) -> None:
        """Show ``pattern`` for ``seconds``, then whatever talk shows (or the saved pattern)."""
        self._led_override_gen += 1
        gen = self._led_override_gen
        if self._led_mine is None:
            try:
                self._led_saved = self.led.pattern
            except Exception:  # an LED fault must not stop the audio
                self._led_saved = None
        try:
            self.led.set_pattern(pattern)
        except Exception as exc:
            log.debug("LED pattern %s failed: %s", pattern.name, exc)
        self._led_mine = self._led_override = pattern.name

        async def restore() -> None:
            await trio.sleep(seconds)
            if gen == self._led_override_gen:
                self._led_override = None
                self._update_led()
        self._spawn(restore)

    def _receiving(self) -> bool:
        return any(i.accepted and not i.playout.drained for i in self._in.values())

    # --- sending -----------------------------------------------------------------------------
    async def _button_loop(self) -> None:
        async for ev in self.button.events():
            if ev.kind == "pressed":
                tapped = self._last_tap_end is not None and ev.at - self._last_tap_end <= TAP_GAP_S
                self._press_at = ev.at
                self._group_press = tapped
                if not tapped:
                    self._start_talking()
            elif ev.kind == "long_press":
                if self._group_press:
                    self.next_group()
            elif ev.kind == "released":
                held = ev.at - self._press_at if self._press_at is not None else None
                self._last_tap_end = ev.at if (held is not None and held < TAP_MAX_S
                                               and not self._group_press) else None
                self._group_press = False
                self._stuck = False
                self._stop_talking("released")
        log.warning("the button's event stream ended: push-to-talk can no longer transmit")

    def _start_talking(self) -> None:
        if self._tx or self._stuck:
            return
        self._tx = True
        self._capture_wake.set()
        self._preroll.clear()
        self._encoders.clear()  # fresh encoder state per press
        self._packet_ts.clear()
        self._packet_loud.clear()
        self._tx_gen += 1
        self._tx_since = trio.current_time()
        tc = self.talk_config
        group = tc.active_group
        me = str(self.handle.local_peer_id)
        members = [p for p in self._dir.members(group) if p != me]
        connected = set(self.handle.connected_peers())
        self._plan_seq += 1
        now = trio.current_time()
        # A group no larger than the fanout, all connected: a star (each listener its own codec,
        # nobody passes it on). Otherwise the talk spreads over the members' connections.
        star = len(members) <= tc.relay_fanout and all(m in connected for m in members)
        ctx = TalkContext(me, self._plan_seq, group, relay=not star)
        self._spread = Spread(me, ctx, tc.relay_fanout, now, sweep_after_s=SPREAD_SWEEP_S)
        # Relays forward frames unchanged: when the talk spreads, every member must decode what
        # the talker sends (one codec for the press); in a star each listener gets its own.
        self._press_codec = None if star else common_codec(
            self.preferred_codecs(), [self._decodes(PeerId(m)) for m in members])
        # Relayed frames reach every member unchanged, gaps included: only if all play gaps.
        self._press_dtx = None if star else all(self._plays_gaps(PeerId(m)) for m in members)
        if members:
            log.info("talking to group %s: %d member(s), %d connected, %s", group, len(members),
                     sum(1 for m in members if m in connected), "direct" if star else
                     f"passed on by the members (talk.relay_fanout {tc.relay_fanout})", extra={"group": group})
        else:
            log.warning("talking to group %s, but no member of it is known", group, extra={"group": group})
        self._spread_talk()
        self._spawn(self._sweep_later, None, self._spread)
        self._update_led()

    def _candidates(self, ctx: TalkContext) -> list[str]:
        """Connected peers known (announcements) to be in the talk's group, in offer order."""
        me = self._relays.me
        return spread_order(ctx, [p for p in self.handle.connected_peers() if p != me
                                  and (ann := self._dir.get(p)) is not None and ctx.group in ann.groups])

    def _spread_talk(self) -> None:
        """Offer this press to the next members (relay.Spread decides whom)."""
        sp = self._spread
        if not self._tx or sp is None or self._nursery is None:
            return
        connected = set(self.handle.connected_peers())
        unconnected = spread_order(sp.ctx, [m for m in self._dir.members(sp.ctx.group)
                                            if m not in connected and m != self._relays.me])
        for peer in sp.offers(self._candidates(sp.ctx), trio.current_time(), unconnected=unconnected):
            self._open_to(PeerId(peer))

    async def _sweep_later(self, ins: _In | None, spread: Spread) -> None:
        await trio.sleep_until(spread.sweep_at)
        if ins is None:
            if spread is self._spread:
                self._spread_talk()
        elif ins.spread is spread:
            self._spread_relay(ins)

    def _stop_talking(self, why: str) -> None:
        if not self._tx:
            return
        self._tx = False
        self._tx_gen += 1
        self._spread = None
        entries = list(self._out.values())
        self._out.clear()
        for e in entries:
            if e.stream_id is not None:
                self._out_by_sid.pop(e.stream_id, None)
                self._gates.pop(e.stream_id, None)
                self._spawn(self._close_quietly, e.stream_id)
        log.info("stopped talking (%s) after %.1f s", why, trio.current_time() - self._tx_since)
        self._update_led()

    def _open_to(self, peer: PeerId) -> None:
        if not self._tx or peer in self._out or self._nursery is None:
            return
        entry = _Out(peer, self._tx_gen, codec=self._codec_for(peer), dtx=self._dtx_for(peer))
        self._encoder_for(entry.codec)
        self._out[peer] = entry
        self._spawn(self._request, entry, self._spread)

    async def _request(self, entry: _Out, spread: Spread | None = None) -> None:
        try:
            context = encode_context(spread.context_for(entry.peer)) if spread is not None else b""
            sid = await self.handle.request_audio_stream(entry.peer, context=context)
        except AviP2pError as exc:
            self.streams_failed += 1
            log.warning("cannot stream to %s: %s", entry.peer, exc, extra={"peer": entry.peer})
            if self._out.get(entry.peer) is entry:
                del self._out[entry.peer]
            if spread is not None:
                spread.answered(entry.peer, accepted=False)
                if spread is self._spread:
                    self._spread_talk()  # the next member instead
            return
        if self._out.get(entry.peer) is not entry or entry.generation != self._tx_gen:
            await self._close_quietly(sid)  # released (or replaced) while the request ran
            return
        if sid in self._closed_recent:  # refused before we got here
            del self._out[entry.peer]
            if spread is not None:
                spread.answered(entry.peer, accepted=False)
                if spread is self._spread:
                    self._spread_talk()
            return
        entry.stream_id = sid
        self._out_by_sid[sid] = entry.peer
        # Frames captured while the stream was being opened (a slow or lossy link takes a few
        # hundred ms): send them now, so the start of the talk is not cut off. The mesh queues
        # them until the peer accepts, and drops the oldest if the peer is slow.
        codec = entry.codec
        try:
            await self._send_backlog(sid, lambda: [(p, ts, codec) for p, ts in self._preroll.get(codec, ())],
                                     relay=False)
        except AviP2pError as exc:
            log.debug("pre-roll on %x: %s", sid, exc)

    async def _send_backlog(self, sid: StreamId, backlog: Callable[[], list[tuple[bytes, int, int]]], *,
                            relay: bool) -> None:
        """Send a stream that just opened the frames kept for it, then those added meanwhile:
        ``send_audio`` is a checkpoint, so the capture or relay task runs between two sends; it
        skips a stream in ``_prerolling`` (only adds to the backlog), so frames go out in order."""
        self._prerolling.add(sid)
        try:
            while fresh := [f for f in backlog() if f[1] > self._sent_ts.get(sid, -1)]:
                for payload, ts, codec in fresh:
                    if await self._send_frame(sid, payload, ts, codec):
                        n = self._frames_in(codec, payload)  # (this press's encoders may be gone by now)
                        if relay:
                            self.frames_relayed += n
                        else:
                            self.frames_sent += n
        finally:
            self._prerolling.discard(sid)

    async def _send_frame(self, sid: StreamId, payload: bytes, ts: int, codec: int) -> bool:
        """Send one frame on one of our streams unless the stream already has it (or a newer one):
        a live sender that was paused at a checkpoint may come to a stream whose backlog has just
        sent the same frame. Returns whether it was sent."""
        if ts <= self._sent_ts.get(sid, -1):
            return False
        self._sent_ts[sid] = ts
        await self.handle.send_audio(sid, payload, timestamp_us=ts, codec=codec)
        return True

    async def _close_quietly(self, sid: StreamId) -> None:
        with trio.move_on_after(CLOSE_TIMEOUT_S):
            try:
                await self.handle.close_audio_stream(sid)
            except AviP2pError as exc:
                log.debug("closing stream %x: %s", sid, exc)

    # --- codecs ------------------------------------------------------------------------------
    def preferred_codecs(self) -> tuple[int, ...]:
        """Codecs this node sends, best first (config ``talk.codec``; PCM is always the fallback)."""
        return (OPUS, PCM_S16LE) if self.talk_config.codec == "opus" else (PCM_S16LE,)

    def _decodes(self, peer: PeerId) -> tuple[int, ...] | None:
        ann = self._dir.get(peer)
        return None if ann is None or ann.codecs is None else codec_ids(list(ann.codecs))

    def _codec_for(self, peer: PeerId) -> int:
        if self._press_codec is not None:
            return self._press_codec
        return choose_codec(self.preferred_codecs(), self._decodes(peer))

    def _plays_gaps(self, peer: PeerId) -> bool:
        ann = self._dir.get(peer)
        return ann is not None and DTX_FEATURE in ann.features

    def _dtx_for(self, peer: PeerId) -> bool:
        """Leave silent packets out of the stream to ``peer``: DTX is on here, the peer plays
        gaps as silence, and (a relayed press) so does every member its frames reach."""
        return self.talk_config.dtx and self._plays_gaps(peer) and self._press_dtx is not False

    def _encoder_for(self, codec: int) -> Codec:
        enc = self._encoders.get(codec)
        if enc is None:
            if codec == OPUS:
                tc = self.talk_config
                enc = OpusCodec(self.format, OpusSettings(bitrate=tc.opus_bitrate, frame_ms=tc.opus_frame_ms,
                                                          fec=tc.opus_fec))
            else:
                enc = make_codec(codec, self.format)
            self._encoders[codec] = enc
            self._preroll[codec] = deque(maxlen=PREROLL_FRAMES)
        return enc

    async def _capture_loop(self) -> None:
        while True:
            frame = await self.source.read()
            pcm = apply_gain(frame.pcm, self.capture_gain_db)
            self.capture_meter.add(pcm)
            if not self._tx:
                if self.capture_meter.window_done:
                    await self._capture_idle()
                continue
            loud = rms(np.frombuffer(pcm, dtype="<i2")) >= DTX_SILENCE_RMS
            for codec, enc in list(self._encoders.items()):
                self._packet_ts.setdefault(codec, frame.timestamp_us)
                self._packet_loud[codec] = self._packet_loud.get(codec, False) or loud
                payload = enc.encode(pcm)
                if payload is None:
                    continue  # a packet of several frames is being filled
                await self._send_payload(codec, payload, self._packet_ts.pop(codec),
                                         silent=not self._packet_loud.pop(codec))

    async def _capture_idle(self) -> None:
        """Not transmitting, a level window complete: stop the microphone until the next window
        is due or a press (or a gain change) needs it."""
        self._capture_wake = trio.Event()  # from here on a press sets this one
        if self._tx:
            return
        await self.source.stop()
        with trio.move_on_after(IDLE_METER_S):
            await self._capture_wake.wait()

    async def _send_payload(self, codec: int, payload: bytes, ts: int, *, silent: bool = False) -> None:
        self._preroll[codec].append((payload, ts))
        enc = self._encoders[codec]
        n = enc.frames_in(payload)
        for entry in list(self._out.values()):
            sid = entry.stream_id
            if sid is None or sid in self._prerolling or entry.codec != codec:
                continue  # still opening: _request sends the pre-roll (every packet) once it is open
            send = payload
            if entry.dtx:
                gate = self._gates.get(sid)
                if gate is None:
                    gate = self._gates[sid] = DtxGate(hangover_packets(n * self.format.frame_us // 1000))
                decision = gate.decide(silent)
                if decision is Dtx.SKIP:
                    continue
                if decision is Dtx.MARKER:
                    send = b""  # the gap marker: silence from here until the next packet's timestamp
            try:
                if await self._send_frame(sid, send, ts, codec) and send:
                    self.frames_sent += n
            except UnknownStreamError:
                self._forget_out(sid)
            except AviP2pError as exc:
                log.debug("send on %x: %s", sid, exc)

    def _forget_out(self, sid: StreamId) -> PeerId | None:
        self._sent_ts.pop(sid, None)
        self._gates.pop(sid, None)
        peer = self._out_by_sid.pop(sid, None)
        if peer is not None:
            entry = self._out.get(peer)
            if entry is not None and entry.stream_id == sid:
                del self._out[peer]
        return peer

    # --- receiving ---------------------------------------------------------------------------
    def _on_request(self, peer: PeerId, sid: StreamId, context: bytes = b"") -> None:
        ctx = parse_context(context)
        if ctx is not None:
            self._decide_talk(peer, sid, ctx)
            return
        # No context: a node of the previous version (its relay plan comes over PLAN_TOPIC).
        ann = self._dir.get(peer)
        if self._relays.route(peer, trio.current_time()) is not None:
            self._decide(peer, sid)
            return
        tc = self.talk_config
        if (ann is None or ann.current not in tc.groups) and len(self._pending) < MAX_PENDING \
                and self._nursery is not None:
            # A relay's stream may arrive before the talker's plan (pub/sub is slower than a
            # direct stream), and a peer's announcement may still be on the way.
            self._pending[sid] = (peer, trio.current_time() + PENDING_GRACE_S)
            return
        self._decide(peer, sid)

    def _decide(self, peer: PeerId, sid: StreamId) -> None:
        tc = self.talk_config
        active = sum(1 for i in self._in.values() if not i.playout.closed)
        plan = self._relays.route(peer, trio.current_time())
        if plan is not None and plan.group in tc.groups:
            # Our parent in a talker's relay tree: it relays the talker's group to us.
            reason = None if active < tc.max_streams else \
                f"busy: already playing {active} streams (talk.max_streams={tc.max_streams})"
        else:
            reason = admission(self._dir.get(peer), tc.groups, active, tc.max_streams)
        if reason is not None:
            self.streams_rejected += 1
            log.info("refused audio stream from %s: %s", peer, reason, extra={"peer": peer})
            self._spawn(self._reject, sid, reason)
            return
        self._take(peer, sid, plan=plan)

    def _take(self, peer: PeerId, sid: StreamId, *, plan: RelayPlan | None = None,
              talk: TalkContext | None = None) -> _In:
        tc = self.talk_config
        fmt = self.format
        learnt = self._learnt.get(peer)
        prior = learnt[1] if learnt is not None and trio.current_time() - learnt[0] <= LEARNT_FOR_S else None
        playout = AdaptivePlayout(fmt, lambda codec: make_codec(codec, fmt),
                                  min_delay_us=tc.jitter_target_ms * 1000, max_delay_us=tc.jitter_max_ms * 1000,
                                  prior=prior)
        ins = self._in[sid] = _In(peer, sid, playout, plan=plan, talk=talk)
        self._play_wake.set()
        self._spawn(self._accept, sid)
        return ins

    def _hearing(self, key: tuple[str, int]) -> _In | None:
        for ins in self._in.values():
            if ins.talk is not None and ins.talk.key == key and not ins.playout.closed:
                return ins
        return None

    def _decide_talk(self, peer: PeerId, sid: StreamId, ctx: TalkContext) -> None:
        """A stream of a talk (its context says whose press, which group): taken unless we hear
        that talk already (then the offer is declined: the offerer learns it and offers the next
        member), we are not in its group, or too many streams play."""
        tc = self.talk_config
        own = self._spread if self._tx else None
        same = self._hearing(ctx.key)
        reason: str | None = None
        if ctx.talker == self._relays.me or same is not None:
            reason = ALREADY_HEARING
            spread = own if ctx.talker == self._relays.me else (same.spread if same is not None else None)
            if spread is not None and spread.ctx.key == ctx.key:
                spread.heard_by(peer)  # it hears: not offered to it again
        elif ctx.group not in tc.groups:
            reason = f"not in talk group {ctx.group!r} (this node is in {', '.join(tc.groups)})"
        elif (ann := self._dir.get(peer)) is not None and ctx.group not in ann.groups:
            reason = f"the sender is not in talk group {ctx.group!r}"
        else:
            active = sum(1 for i in self._in.values() if not i.playout.closed)
            if active >= tc.max_streams:
                reason = f"busy: already playing {active} streams (talk.max_streams={tc.max_streams})"
        if reason is not None:
            if reason == ALREADY_HEARING:
                self.offers_declined += 1
            else:
                self.streams_rejected += 1
                log.info("refused audio stream from %s: %s", peer, reason, extra={"peer": peer})
            self._spawn(self._reject, sid, reason)
            return
        ins = self._take(peer, sid, talk=ctx)
        if ctx.relay:
            # Passed on at once, in parallel with our own accept: frames are relayed as they come.
            ins.spread = Spread(self._relays.me, ctx, tc.relay_fanout, trio.current_time(), parent=str(peer),
                                sweep_after_s=SPREAD_SWEEP_S)
            self._spread_relay(ins)
            self._spawn(self._sweep_later, ins, ins.spread)

    def _spread_relay(self, ins: _In) -> None:
        sp = ins.spread
        if sp is None or ins.playout.closed or self._nursery is None:
            return
        for peer in sp.offers(self._candidates(sp.ctx), trio.current_time()):
            self._relay_to(ins, PeerId(peer))

    async def _accept(self, sid: StreamId) -> None:
        try:
            await self.handle.accept_audio_stream(sid)
        except AviP2pError as exc:
            log.info("could not accept stream %x: %s", sid, exc)
            ins = self._in.get(sid)
            if ins is not None:
                ins.playout.close()
            return
        ins = self._in.get(sid)
        if ins is not None and not ins.playout.closed:
            ins.accepted = True
            log.info("hearing %s", ins.peer, extra={"peer": ins.peer, "stream": f"{sid:x}"})
            self._update_led()
            if ins.plan is not None:
                self._start_relay(ins)

    # --- relaying ------------------------------------------------------------------------------
    def _start_relay(self, ins: _In) -> None:
        plan = ins.plan
        if plan is None:
            return
        children = plan.children(self._relays.me)
        if children:
            log.info("relaying %s's talk to %d member(s)", plan.talker, len(children), extra={"peer": plan.talker})
        for child in children:
            self._relay_to(ins, PeerId(child))

    def _relay_to(self, ins: _In, child: PeerId) -> None:
        if child in ins.relay_out or child == self._relays.me or ins.playout.closed:
            return
        ins.relay_out[child] = None
        self._spawn(self._open_relay, ins, child)

    async def _open_relay(self, ins: _In, child: PeerId) -> None:
        try:
            context = (encode_context(ins.spread.context_for(child)) if ins.spread is not None
                       else encode_context(ins.talk) if ins.talk is not None else b"")
            sid = await self.handle.request_audio_stream(child, context=context)
        except AviP2pError as exc:
            self.relay_failures += 1
            log.warning("cannot relay to %s: %s", child, exc, extra={"peer": child})
            ins.relay_out.pop(child, None)
            if ins.spread is not None:
                ins.spread.answered(child, accepted=False)
                self._spread_relay(ins)
            elif ins.plan is not None:
                for grandchild in adopt(ins.plan, child):  # they would not hear otherwise
                    self._relay_to(ins, PeerId(grandchild))
            return
        if ins.playout.closed or child not in ins.relay_out:
            await self._close_quietly(sid)
            return
        ins.relay_out[child] = sid
        self._relay_sids[sid] = ins.stream_id
        try:
            await self._send_backlog(sid, lambda: list(ins.relay_buf), relay=True)
        except AviP2pError as exc:
            log.debug("relay pre-roll on %x: %s", sid, exc)

    async def _relay_frame(self, ins: _In, ev: AudioData) -> None:
        """Forward one frame, unchanged (payload, codec, capture time), to our children."""
        ins.relay_buf.append((ev.data, ev.timestamp_us, ev.codec))
        for child, sid in list(ins.relay_out.items()):
            if sid is None or sid in self._prerolling:
                continue  # still opening: it gets the pre-roll
            try:
                if await self._send_frame(sid, ev.data, ev.timestamp_us, ev.codec):
                    self.frames_relayed += self._frames_in(ev.codec, ev.data)
            except UnknownStreamError:
                ins.relay_out.pop(child, None)
            except AviP2pError as exc:
                log.debug("relay on %x: %s", sid, exc)

    def _stop_relay(self, ins: _In) -> None:
        for sid in [s for s in ins.relay_out.values() if s is not None]:
            self._relay_sids.pop(sid, None)
            self._spawn(self._close_quietly, sid)
        ins.relay_out.clear()

    def _on_plan(self, peer: PeerId, plan: RelayPlan) -> None:
        now = trio.current_time()
        self._relays.add(plan, now)
        parent = plan.parent_of(self._relays.me)
        if parent is None:
            return
        for sid, (p, _) in list(self._pending.items()):
            if p == parent:
                del self._pending[sid]
                self._decide(PeerId(p), sid)
        # A stream from our parent taken before the plan arrived: relay it from now on (at
        # once if already accepted, else when the accept completes).
        for ins in self._in.values():
            if ins.peer == parent and ins.plan is None and ins.talk is None and not ins.playout.closed:
                ins.plan = plan
                if ins.accepted:
                    self._start_relay(ins)

    async def _reject(self, sid: StreamId, reason: str) -> None:
        try:
            with trio.move_on_after(CLOSE_TIMEOUT_S):
                await self.handle.reject_audio_stream(sid, reason)
        except AviP2pError as exc:
            log.debug("could not reject stream %x: %s", sid, exc)

    def _on_audio(self, ev: AudioData) -> _In | None:
        ins = self._in.get(ev.stream_id)
        if ins is None or ins.playout.closed:
            self.frames_unknown += 1
            return None
        if ev.codec not in known_codecs():
            self.frames_received += 1
            self.frames_bad += 1
            if self.frames_bad in (1, 100) or self.frames_bad % 10_000 == 0:
                log.warning("frames from %s dropped: no decoder for codec %d", ins.peer, ev.codec)
            return ins  # still relayed: a child may know the codec
        self.frames_received += self._frames_in(ev.codec, ev.data)
        ins.playout.push(ev.sequence, ev.timestamp_us, ev.data, self._clock(), ev.codec)
        return ins

    def _frames_in(self, codec: int, payload: bytes) -> int:
        """Capture frames in a payload (1 when it cannot be told: the playout counts it lost; 0
        in a DTX gap marker)."""
        if not payload:
            return 0
        counter = self._frame_counters.get(codec)
        try:
            if counter is None:
                counter = self._frame_counters[codec] = make_codec(codec, self.format)
            return counter.frames_in(payload)
        except CodecError:
            return 1

    def _on_announcement(self, peer: PeerId, data: bytes) -> None:
        ann = parse_announcement(data)
        if ann is None:
            self.bad_announcements += 1
            log.debug("ignoring a malformed talk announcement from %s", peer)
            return
        prev = self._dir.update(peer, ann)
        if prev != ann:
            # The first few at INFO; in a big fleet the rest at DEBUG (49 lines per node otherwise).
            self._groups_logged += 1
            level = logging.INFO if self._groups_logged <= GROUPS_LOGGED or prev is not None else logging.DEBUG
            log.log(level, "%s (%s) is in talk groups %s, talking to %s", peer, ann.name, ",".join(ann.groups),
                    ann.current, extra={"peer": peer, "_summary": "peers"})  # (≤ 1 line/min with the others)
        for sid, (p, _) in list(self._pending.items()):
            if p == peer:
                del self._pending[sid]
                self._decide(peer, sid)
        if self._tx and self.talk_config.active_group in ann.groups and peer in self.handle.connected_peers():
            self._spread_talk()  # joined (or became known) while the button is held

    def _on_accepted(self, peer: PeerId, sid: StreamId) -> None:
        relayed = self._relay_sids.get(sid)
        if relayed is not None:
            src = self._in.get(relayed)
            if src is not None and src.spread is not None:
                src.spread.answered(peer, accepted=True)
            return
        entry = self._out.get(peer)
        if entry is not None and entry.stream_id == sid:
            entry.accepted = True
            if self._spread is not None:
                self._spread.answered(peer, accepted=True)
            log.info("%s accepted our stream", peer, extra={"peer": peer, "stream": f"{sid:x}"})

    def _on_closed(self, peer: PeerId, sid: StreamId, reason: str) -> None:
        self._sent_ts.pop(sid, None)
        self._gates.pop(sid, None)
        if self._pending.pop(sid, None) is not None:
            return
        ins = self._in.get(sid)
        if ins is not None:
            ins.playout.close()  # the playout plays what is buffered, then retires it
            self._stop_relay(ins)
            log.info("%s stopped talking (%s)", peer, reason, extra={"peer": peer, "stream": f"{sid:x}"})
            return
        relayed = self._relay_sids.pop(sid, None)
        if relayed is not None:
            src = self._in.get(relayed)
            if src is not None and src.relay_out.get(peer) == sid:
                del src.relay_out[peer]
                if src.spread is not None and not src.playout.closed:
                    self._offer_closed(src.spread, peer, reason)
                    self._spread_relay(src)
            return
        entry = self._out.get(peer)
        if self._forget_out(sid) is not None:
            hears = ALREADY_HEARING in reason
            level = logging.DEBUG if hears else logging.INFO if reason.endswith("normal") else logging.WARNING
            log.log(level, "stream to %s closed: %s", peer, reason, extra={"peer": peer})
            if self._spread is not None and entry is not None and entry.stream_id == sid:
                self._offer_closed(self._spread, peer, reason)
                self._spread_talk()
        else:
            self._closed_recent.append(sid)

    @staticmethod
    def _offer_closed(spread: Spread, peer: PeerId, reason: str) -> None:
        if peer in spread.accepted:
            spread.gone(peer)
        else:
            spread.answered(peer, accepted=False, hears=ALREADY_HEARING in reason)

    def _on_connected(self, peer: PeerId) -> None:
        if len(self.handle.connected_peers()) <= 2:
            # Our first connections: what we published before them reached nobody. Later ones
            # need nothing: the mesh hands our latest announcement over (retained topic).
            self._announce_wake.set()
        ann = self._dir.get(peer)
        if self._tx and ann is not None and self.talk_config.active_group in ann.groups:
            self._spread_talk()

    def _on_disconnected(self, peer: PeerId) -> None:
        entry = self._out.get(peer)
        if entry is not None and entry.stream_id is None:
            entry.generation = -1  # its request will fail or be closed on return
            del self._out[peer]

    # --- playout -----------------------------------------------------------------------------
    async def _playout_loop(self) -> None:
        while True:
            await self._play()
            # A level window of silence has played: stop the sink until something is to play.
            self._play_wake = trio.Event()  # from here on a new stream or sound sets this one
            if self._in or self._local_sound:
                continue
            self._queue.put_nowait(_STOP_SINK)
            await self._play_wake.wait()

    def _quiet(self) -> bool:
        return not self._in and not self._local_sound

    async def _play(self) -> None:
        """One frame every frame period, until a whole level window of silence has played."""
        period = self.format.frame_s
        window = self.playback_meter.window_frames
        t0 = trio.current_time()
        k = 0
        quiet = 0
        while quiet < window or not self.playback_meter.window_done:
            k += 1
            deadline = t0 + k * period
            now = trio.current_time()
            if now - deadline > PLAYOUT_RESYNC_FRAMES * period:
                self.playout_resyncs += 1
                log.warning("playout clock %.0f ms behind: restarting it", (now - deadline) * 1000,
                            extra={"_summary": "audio-timing"})  # (a busy machine: ≤ 1 line/min)
                t0, k = now, 0
                continue
            await trio.sleep_until(deadline)
            self._tick(self._clock())
            quiet = quiet + 1 if self._quiet() else 0

    def _tick(self, now_us: int) -> None:
        pcms: list[bytes] = []
        stamps: list[int] = []
        for sid, ins in list(self._in.items()):
            try:
                got = ins.playout.pull(now_us)
            except CodecError as exc:  # a codec that cannot be built for this stream
                self.frames_bad += 1
                log.warning("stream from %s dropped: %s", ins.peer, exc)
                ins.playout.close()
                self._retire(sid)
                continue
            if got is not None:
                pcms.append(got.pcm)
                if got.timestamp_us is not None:
                    stamps.append(got.timestamp_us)
            elif ins.playout.drained:
                self._retire(sid)
        if self._local_sound:
            pcms.append(self._local_sound.popleft())
        out = apply_gain(self._mixer.mix(pcms), self.playback_gain_db)
        self.playback_meter.add(out)
        self._queue.put_nowait(_Playout(out, tuple(stamps)))

    def _retire(self, sid: StreamId) -> None:
        ins = self._in.pop(sid)
        # The next stream from this peer starts from the delays this one learnt (its first stalls
        # are then ridden out, not concealed while the target learns them again).
        self._learnt.pop(ins.peer, None)
        self._learnt[ins.peer] = (trio.current_time(), ins.playout.estimator)
        while len(self._learnt) > LEARNT_PEERS:
            del self._learnt[next(iter(self._learnt))]
        j, t = ins.playout.stats(), self._totals
        t.played += j.decoded
        t.late += j.late
        t.duplicates += j.duplicates
        t.concealed += j.concealed
        t.overflow += j.overflow
        t.stretched_ms += j.stretched_ms
        self._update_led()

    async def _sink_loop(self) -> None:
        # One frame of silence ahead of the playout clock, at the start and after the device ran
        # dry: a frame handed over on time (or a few ms late) then never finds the device's buffer
        # empty, which a sound card (and the fake) counts and logs as an underrun (costs 20 ms).
        silence = bytes(self.sink.format.frame_bytes)
        xruns = -1
        while True:
            item = await self._queue.get()
            if item is _STOP_SINK:
                await self.sink.stop()  # plays out what it holds; the next write starts it
                xruns = -1
                continue
            now = self._clock()
            for ts in item.timestamps:
                self._latency.add(now - ts)
                self.latency_histogram.observe_us(now - ts)
            seen = self.sink.stats().xruns
            if seen != xruns:
                xruns = seen
                await self.sink.write(silence)
            await self.sink.write(item.pcm)

    # --- groups, housekeeping, LED -----------------------------------------------------------
    def _announcement(self) -> bytes:
        tc = self.talk_config
        decodes = sorted(known_codecs(), key=lambda c: (c != OPUS, c))  # best first
        return encode_announcement(self.config.node.name, tc.groups, tc.active_group, codec_names(decodes),
                                   features=(DTX_FEATURE,))

    async def _announce_loop(self) -> None:
        while True:
            try:
                await self.handle.publish(TOPIC, self._announcement())
            except AviP2pError as exc:
                log.debug("talk announcement not published: %s", exc)
            await trio.sleep(ANNOUNCE_MIN_GAP_S)
            interval = max(ANNOUNCE_SLOW_S, (len(self._dir) + 1) / ANNOUNCE_FLEET_RATE)
            with trio.move_on_after(interval - ANNOUNCE_MIN_GAP_S):
                await self._announce_wake.wait()
            self._announce_wake = trio.Event()

    async def _housekeeping_loop(self) -> None:
        while True:
            await trio.sleep(HOUSEKEEPING_S)
            now = trio.current_time()
            self._relays.expire(now)
            for sid, (peer, deadline) in list(self._pending.items()):
                if now >= deadline:
                    del self._pending[sid]
                    self._decide(peer, sid)  # still unknown: refused with that reason
            if self._tx and now - self._tx_since > self.talk_config.max_talk_s:
                log.warning("button held for more than talk.max_talk_s (%g s): stopped transmitting "
                            "until it is released", self.talk_config.max_talk_s)
                self._stop_talking("max_talk_s")
                self._stuck = True

    def _update_led(self) -> None:
        activity = (self._tx, self._receiving())
        if activity != self._activity:
            self._activity = activity
            try:
                self.on_change()  # the service publishes the fleet status at once
            except Exception as exc:
                log.debug("on_change failed: %s", exc)
        if self._led_override is not None:
            return  # a group number or identify is showing; restored when it ends
        want = "transmitting" if self._tx else ("receiving" if self._receiving() else None)
        if want == self._led_mine:
            return
        try:
            current = self.led.pattern
            if want is None:
                # Give the LED back, unless someone else (the service) changed it meanwhile.
                if current.name == self._led_mine:
                    self.led.set_pattern(self._led_saved if self._led_saved is not None else "idle")
            else:
                if self._led_mine is None:
                    self._led_saved = current
                self.led.set_pattern(want)
        except Exception as exc:  # an LED fault must not stop the audio
            log.debug("LED pattern %s failed: %s", want, exc)
        self._led_mine = want

    # --- plumbing ----------------------------------------------------------------------------
    async def _unsubscribe_quietly(self, topic: str) -> None:
        try:
            await self.handle.unsubscribe(topic)
        except AviP2pError as exc:
            log.debug("unsubscribe %s: %s", topic, exc)

    def _spawn(self, fn: Callable[..., Any], *args: Any) -> None:
        if self._nursery is not None:
            self._nursery.start_soon(fn, *args)

    async def _shutdown(self) -> None:
        # Concurrently and briefly: on SIGTERM the node closes every stream right after this.
        with trio.move_on_after(SHUTDOWN_S):
            async with trio.open_nursery() as n:
                for sid in [e.stream_id for e in self._out.values() if e.stream_id is not None] + list(self._relay_sids):
                    n.start_soon(self._close_quietly, sid)
                for sid in list(self._pending):
                    n.start_soon(self._reject, sid, "push-to-talk stopped")
                for topic in (TOPIC, PLAN_TOPIC):
                    n.start_soon(self._unsubscribe_quietly, topic)
        for ins in self._in.values():
            ins.relay_out.clear()
        self._relay_sids.clear()
        self._out.clear()
        self._gates.clear()
        self._pending.clear()
        self._tx = False
        self._update_led()


def chime_frames(fmt: AudioFormat, seconds: float = 0.6) -> list[bytes]:
    """A two-note chime (880 Hz then 1320 Hz, faded) as frames of ``fmt`` (S16LE)."""
    import numpy as np

    n = int(fmt.rate * seconds)
    t = np.arange(n) / fmt.rate
    freq = np.where(t < seconds / 2, 880.0, 1320.0)
    env = np.minimum(1.0, np.minimum(t, seconds - t) / 0.02)
    x = (0.4 * 32767 * env * np.sin(2 * np.pi * freq * t)).astype("<i2")
    if fmt.channels > 1:
        x = np.repeat(x, fmt.channels)
    data = x.tobytes()
    fb = fmt.frame_bytes
    data += bytes(-len(data) % fb)
    return [data[i:i + fb] for i in range(0, len(data), fb)]
