"""Fleet status: the versioned status message, its publisher, and the view of the other nodes.

Every node publishes a :class:`StatusMessage` (JSON, ``"v": 1``) on the status topic every
``status.interval_s`` seconds (longer in a big fleet: see ``FLEET_STATUS_RATE``) and as soon as
something a person would notice changes (state, last error, talk, streams); the counts of
connections and of nodes seen go with the next message. Every node (and ``avi-agent monitor``) keeps a
:class:`FleetView` of the others with last-seen times; a node not heard from for
``status.stale_after_s`` is shown as stale. A peer's message that is oversized, not JSON, of an
unknown version, or claims another peer's id is dropped and counted; it never reaches the view.

The message never carries the identity key or anything derived from it besides the peer id.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

import trio
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from agent import __version__
from agent.config import StatusConfig
from agent.mesh import AviP2pError, Message

__all__ = ["STATUS_VERSION", "StatusMessage", "StatusRejected", "encode_status", "decode_status",
           "FleetEntry", "FleetStats", "FleetView", "Status", "MAX_LISTED_PEERS", "fake_devices",
           "TalkStreamStatus"]

log = logging.getLogger("agent.status")

STATUS_VERSION = 1
MAX_LISTED_PEERS = 16  # connected_peers is a sample; `peers` is the count
MAX_LISTED_STREAMS = 8  # talk_streams lists at most this many incoming streams
MAX_ERROR_CHARS = 300
FIRST_STATUS_LOGGED = 8  # "first status from" lines logged at INFO, the rest at DEBUG
# Peers listed in a message we send (a sample; `peers` is the count). Readers accept up to
# MAX_LISTED_PEERS: fewer keeps the message small, and every node receives every node's.
LISTED_PEERS_SENT = 1
# Publishing on change is coalesced: at most one message per this many seconds ...
MIN_PUBLISH_GAP_S = 0.25
# ... and per this fraction of the periodic interval (a fleet starting up changes every count).
CHANGE_GAP_FRACTION = 0.1
# Status messages per second the whole fleet sends at most, periodically: each node's interval
# grows with the fleet it sees (interval_s at least), so a node's idle traffic (it receives
# every node's status) stays flat as the fleet grows. A newcomer does not wait for that long
# interval: its neighbours hand it every node's latest status when it connects (retained).
FLEET_STATUS_RATE = 1.0
# A node is stale after this many of its own intervals without a message (at least stale_after_s).
STALE_INTERVALS = 2.5
# A node still "starting" publishes its first status when it is ready, or after this long.
STARTING_GRACE_S = 2.0


def listed_peers(peers: Iterable[str], is_node: Callable[[str], bool]) -> list[str]:
    """The sample of connected peers a status message lists: nodes of the fleet before other
    peers (a monitor publishes no status), each kind in id order, so a reader sees which
    nodes a node is connected to rather than which tools happen to be watching it."""
    return sorted(peers, key=lambda p: (not is_node(p), p))[:LISTED_PEERS_SENT]


def fleet_interval(base_s: float, fleet: int, fleet_rate: float) -> float:
    """The periodic interval of one node in a fleet of `fleet` others: `base_s`, or longer so
    that the whole fleet sends at most `fleet_rate` messages per second."""
    return max(base_s, (fleet + 1) / fleet_rate)

State = Literal["starting", "ok", "degraded"]


class TalkStreamStatus(BaseModel):
    """One incoming talk stream as the listener plays it (see agent.talk.StreamStatus)."""

    model_config = ConfigDict(extra="ignore", frozen=True, strict=True)

    peer: str = Field(max_length=128)
    codec: str = Field(max_length=16)
    delay_ms: float = Field(ge=0, description="audio buffered now (jitter buffer + decoded)")
    target_ms: float = Field(ge=0, description="the delay the adaptive buffer aims for")
    concealed: int = Field(ge=0, description="frame periods concealed")
    stretched_ms: float = Field(ge=0, description="time added or removed by time-stretching")
    late: int = Field(0, ge=0)


class StatusMessage(BaseModel):
    """Status topic message, version 1. Fields added later within v1 are ignored by older
    readers (``extra="ignore"``); a change of meaning gets a new ``v``."""

    model_config = ConfigDict(extra="ignore", frozen=True, strict=True)

    v: Literal[1] = STATUS_VERSION
    node: str = Field(min_length=1, max_length=64)
    peer_id: str = Field(min_length=1, max_length=128)
    version: str = Field(max_length=32)
    seq: int = Field(ge=0)
    uptime_s: float = Field(ge=0)
    state: str = Field(max_length=16, description="starting, ok or degraded")
    peers: int = Field(ge=0)
    connected_peers: list[str] = Field(default_factory=list, max_length=MAX_LISTED_PEERS)
    fleet: int = Field(0, ge=0, description="other nodes whose status we see (not stale)")
    streams_in: int = Field(0, ge=0)
    streams_out: int = Field(0, ge=0)
    frames_sent: int = Field(0, ge=0)
    frames_received: int = Field(0, ge=0)
    xruns: int = Field(0, ge=0)
    drops: int = Field(0, ge=0)
    cpu_load: float | None = Field(None, ge=0)
    process_cpu: float | None = Field(None, ge=0)
    temp_c: float | None = None
    talk: bool = False
    frames_late: int = Field(0, ge=0, description="received audio frames too late to play")
    latency_p50_ms: float | None = Field(None, ge=0, description="mouth-to-ear, capture to playback")
    latency_p99_ms: float | None = Field(None, ge=0)
    latency_p95_ms: float | None = Field(None, ge=0)
    frames_concealed: int = Field(0, ge=0, description="frame periods of concealment, all streams")
    stretched_ms: float = Field(0.0, ge=0, description="time-stretched, all streams")
    talk_streams: list[TalkStreamStatus] = Field(default_factory=list, max_length=MAX_LISTED_STREAMS)
    status_rejected: int = Field(0, ge=0, description="peers' status messages we dropped")
    interval_s: float | None = Field(None, ge=0, description="seconds until this node's next periodic status")
    last_error: str | None = Field(None, max_length=MAX_ERROR_CHARS)
    backends: dict[str, str] = Field(default_factory=dict, max_length=4,
                                     description='device backends, e.g. {"audio": "alsa", "gpio": "fake"}')
    # Talk activity and audio levels (dBFS over the last second; clipped = samples at full scale).
    transmitting: bool = False
    receiving: bool = False
    group: str | None = Field(None, max_length=64, description="current talk group")
    capture_rms_dbfs: float | None = Field(None, le=0)
    capture_peak_dbfs: float | None = Field(None, le=0)
    capture_clipped: int = Field(0, ge=0)
    playback_rms_dbfs: float | None = Field(None, le=0)
    playback_peak_dbfs: float | None = Field(None, le=0)
    playback_clipped: int = Field(0, ge=0)


def fake_devices(backends: Mapping[str, str]) -> list[str]:
    """``["fake audio", "fake gpio"]`` for the simulated device backends a node runs (in that
    order): a node that shows these records nothing, plays nothing or ignores its button."""
    return [f"fake {area}" for area in ("audio", "gpio") if backends.get(area) == "fake"]


class StatusRejected(ValueError):
    """A peer's status message was dropped; ``kind`` is oversized, malformed, version or spoofed."""

    def __init__(self, kind: str, detail: str) -> None:
        super().__init__(f"{kind}: {detail}")
        self.kind = kind
        self.detail = detail


def encode_status(msg: StatusMessage) -> bytes:
    """Compact JSON: fields at their default value are left out (a reader's model fills them
    in again, v1 readers included), and ``v`` always goes first. Every node receives every
    node's status about D times a message period: with shipped settings this halves a node's
    idle status traffic."""
    fields = msg.model_dump(mode="json", exclude_defaults=True)
    fields.pop("v", None)
    return json.dumps({"v": msg.v, **fields}, separators=(",", ":"), allow_nan=False).encode("utf-8")


def decode_status(data: bytes, from_peer: str, max_bytes: int) -> StatusMessage:
    """Parse and check one message from ``from_peer``; raises :class:`StatusRejected`."""
    if len(data) > max_bytes:
        raise StatusRejected("oversized", f"{len(data)} bytes > {max_bytes}")
    try:
        raw = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise StatusRejected("malformed", f"not JSON ({exc})") from None
    if not isinstance(raw, dict):
        raise StatusRejected("malformed", f"not a JSON object ({type(raw).__name__})")
    if raw.get("v") != STATUS_VERSION:
        raise StatusRejected("version", f"unsupported version {raw.get('v')!r}")
    try:
        msg = StatusMessage.model_validate(raw)
    except ValidationError as exc:
        first = exc.errors(include_url=False)[0]
        where = ".".join(str(p) for p in first["loc"])
        raise StatusRejected("malformed", f"{where}: {first['msg']} ({exc.error_count()} errors)") from None
    if not all(math.isfinite(x) for x in (msg.uptime_s, msg.cpu_load or 0.0,
                                            msg.process_cpu or 0.0, msg.temp_c or 0.0,
                                            msg.capture_rms_dbfs or 0.0, msg.capture_peak_dbfs or 0.0,
                                            msg.playback_rms_dbfs or 0.0, msg.playback_peak_dbfs or 0.0)):
        raise StatusRejected("malformed", "non-finite number")
    if msg.peer_id != from_peer:
        # Gossip messages are signed by their origin: a mismatch is a node speaking for another.
        raise StatusRejected("spoofed", f"claims peer id {msg.peer_id} but was signed by {from_peer}")
    return msg


# ---------------------------------------------------------------------------------------------
# The fleet view

@dataclass(frozen=True, slots=True)
class FleetEntry:
    """One other node as we last heard it."""

    status: StatusMessage
    last_seen: float  # the view's clock (time.monotonic by default)
    messages: int
    stale: bool

    @property
    def peer_id(self) -> str:
        return self.status.peer_id

    def age(self, now: float) -> float:
        return max(0.0, now - self.last_seen)


@dataclass(frozen=True, slots=True)
class FleetStats:
    accepted: int
    rejected: int
    rejected_by_kind: Mapping[str, int]
    evicted: int
    nodes: int
    stale: int


@dataclass
class _Slot:
    status: StatusMessage
    last_seen: float
    messages: int = 1
    seqno: int = 0  # the origin's pub/sub sequence number of `status` (0: unknown)


class FleetView:
    """The other nodes by peer id, bounded by ``max_nodes`` (the longest-quiet one is evicted)."""

    def __init__(self, stale_after_s: float = 15.0, max_nodes: int = 256, max_message_bytes: int = 4096,
                 *, local_peer_id: str | None = None, clock: Callable[[], float] = time.monotonic) -> None:
        self.stale_after_s = stale_after_s
        self.max_nodes = max_nodes
        self.max_message_bytes = max_message_bytes
        self.local_peer_id = local_peer_id
        self._clock = clock
        self._nodes: dict[str, _Slot] = {}
        self._accepted = 0
        self._rejected: dict[str, int] = {}
        self._evicted = 0
        self._warned: set[tuple[str, str]] = set()
        self._first_logged = 0

    @classmethod
    def from_config(cls, cfg: StatusConfig, **kw: Any) -> "FleetView":
        return cls(cfg.stale_after_s, cfg.max_nodes, cfg.max_message_bytes, **kw)

    def reconfigure(self, cfg: StatusConfig) -> None:
        self.stale_after_s = cfg.stale_after_s
        self.max_nodes = cfg.max_nodes
        self.max_message_bytes = cfg.max_message_bytes
        while len(self._nodes) > self.max_nodes:
            self._evict_one()

    @property
    def rejected(self) -> int:
        return sum(self._rejected.values())

    def knows(self, peer_id: str) -> bool:
        """Whether `peer_id` is a node of the fleet (we hold a status message of it)."""
        return peer_id in self._nodes

    def receive(self, from_peer: str, data: bytes, age_s: float = 0.0, seqno: int = 0) -> StatusMessage | None:
        """Take one message off the status topic; returns it, or None when it was dropped or is
        older than the one we hold. `age_s`: how long a neighbour held it before handing it over
        (retained message); `seqno`: the origin's pub/sub sequence number (Message.seqno), which
        orders its messages, also across its restarts. Messages do arrive out of order: a node's
        first messages, published before it had peers, reach them late (GossipSub replays its
        recent messages to a new peer) and after its later ones; the latest to arrive winning,
        a node's view went back to a first message ("starting", a 5 s interval) and marked that
        node stale 15 s later, although it had heard from it since (at N = 50: 1-6 nodes stale
        in the views of the last nodes to start)."""
        try:
            msg = decode_status(data, from_peer, self.max_message_bytes)
        except StatusRejected as exc:
            self._rejected[exc.kind] = self._rejected.get(exc.kind, 0) + 1
            # One warning per peer and kind; the rest at debug (a flood must not flood the log).
            key = (from_peer, exc.kind)
            level = logging.DEBUG if key in self._warned else logging.WARNING
            if len(self._warned) < 1024:
                self._warned.add(key)
            log.log(level, "dropped status message from %s: %s", from_peer, exc, extra={"peer": from_peer})
            return None
        if msg.peer_id == self.local_peer_id:
            return None
        now = self._clock() - max(0.0, age_s)
        slot = self._nodes.get(msg.peer_id)
        if slot is not None:
            if seqno and slot.seqno:
                if seqno <= slot.seqno:
                    return None  # the same message again, or an older one arriving late
            elif now < slot.last_seen:
                return None  # (no sequence numbers) a retained copy older than what we have
        if slot is None:
            if len(self._nodes) >= self.max_nodes:
                self._evict_one()
            self._nodes[msg.peer_id] = _Slot(msg, now, seqno=seqno)
            # The first few at INFO; in a big fleet the rest at DEBUG (49 lines per node otherwise).
            level = logging.INFO if self._first_logged < FIRST_STATUS_LOGGED else logging.DEBUG
            self._first_logged += 1
            log.log(level, "fleet: first status from %s (%s)", msg.node, msg.peer_id,
                    extra={"peer": msg.peer_id})
        else:
            # Newer by sequence number (or, without one, the latest to arrive: a restarted node
            # starts again at seq 0, so the status's own seq cannot order runs).
            slot.status, slot.last_seen, slot.seqno = msg, max(now, slot.last_seen), seqno
            slot.messages += 1
        self._accepted += 1
        return msg

    def stale_limit(self, msg: StatusMessage) -> float:
        """Seconds of silence after which `msg`'s node is stale: stale_after_s, or longer for a
        node that said it publishes less often (a big fleet)."""
        return max(self.stale_after_s, STALE_INTERVALS * (msg.interval_s or 0.0))

    def _evict_one(self) -> None:
        oldest = min(self._nodes, key=lambda p: self._nodes[p].last_seen)
        del self._nodes[oldest]
        self._evicted += 1

    def forget(self, peer_id: str) -> None:
        self._nodes.pop(peer_id, None)

    def entries(self, now: float | None = None) -> list[FleetEntry]:
        """Every node, sorted by name then peer id, with its stale flag as of ``now``."""
        now = self._clock() if now is None else now
        out = [FleetEntry(s.status, s.last_seen, s.messages, now - s.last_seen > self.stale_limit(s.status))
               for s in self._nodes.values()]
        out.sort(key=lambda e: (e.status.node, e.peer_id))
        return out

    def fresh_count(self, now: float | None = None) -> int:
        return sum(1 for e in self.entries(now) if not e.stale)

    def stats(self, now: float | None = None) -> FleetStats:
        entries = self.entries(now)
        return FleetStats(accepted=self._accepted, rejected=self.rejected,
                          rejected_by_kind=dict(self._rejected), evicted=self._evicted,
                          nodes=len(entries), stale=sum(1 for e in entries if e.stale))


def entry_json(entry: FleetEntry, now: float) -> dict[str, Any]:
    """A fleet entry for scripts: the status fields plus ``last_seen_s`` (age) and ``stale``."""
    d = entry.status.model_dump(mode="json")
    d["last_seen_s"] = round(entry.age(now), 2)
    d["stale"] = entry.stale
    return d


# ---------------------------------------------------------------------------------------------
# The publisher

class _Publisher(Protocol):
    async def subscribe(self, topic: str) -> None: ...

    async def publish(self, topic: str, data: bytes) -> None: ...


def _ms(value: float | None) -> float | None:
    return None if value is None else round(float(value), 2)


@dataclass(frozen=True, slots=True)
class LocalFigures:
    """What the service knows about this node right now (the variable part of the message)."""

    state: str
    peers: list[str]
    streams_in: int = 0
    streams_out: int = 0
    frames_sent: int = 0
    frames_received: int = 0
    xruns: int = 0
    drops: int = 0
    cpu_load: float | None = None
    process_cpu: float | None = None
    temp_c: float | None = None
    talk: bool = False
    frames_late: int = 0
    latency_p50_ms: float | None = None
    latency_p99_ms: float | None = None
    latency_p95_ms: float | None = None
    frames_concealed: int = 0
    stretched_ms: float = 0.0
    talk_streams: tuple[TalkStreamStatus, ...] = ()
    last_error: str | None = None
    backends: Mapping[str, str] = field(default_factory=dict)
    transmitting: bool = False
    receiving: bool = False
    group: str | None = None
    capture_levels: tuple[float, float, int] | None = None  # rms dBFS, peak dBFS, clipped
    playback_levels: tuple[float, float, int] | None = None


@dataclass
class Status:
    """Publishes our status and keeps the fleet view. The service calls :meth:`handle_message`
    for every message on the status topic and :meth:`poke` when something changed."""

    config: StatusConfig
    handle: _Publisher
    node_name: str
    peer_id: str
    figures: Callable[[], LocalFigures]
    on_error: Callable[[str], None] = lambda why: None
    view: FleetView = field(init=False)
    published: int = field(default=0, init=False)
    publish_errors: int = field(default=0, init=False)
    last_sent: StatusMessage | None = field(default=None, init=False)

    def __post_init__(self) -> None:
        self.view = FleetView.from_config(self.config, local_peer_id=self.peer_id)
        self._started = time.monotonic()
        self._seq = 0
        self._changed = trio.Event()
        self._reconfigured = trio.Event()
        self._last_key: tuple[Any, ...] | None = None

    @property
    def topic(self) -> str:
        return self.config.topic

    def poke(self) -> None:
        """Something changed: publish soon (coalesced) if the message would differ."""
        self._changed.set()

    def reconfigure(self, cfg: StatusConfig) -> None:
        """Apply a reloaded [status] table (the topic itself needs a restart: see the service)."""
        self.config = cfg.model_copy(update={"topic": self.config.topic})
        self.view.reconfigure(self.config)
        self._reconfigured.set()

    def handle_message(self, msg: Message) -> StatusMessage | None:
        # The fleet size we report is not a change worth a message of its own (see _change_key):
        # it goes out with the next one.
        if msg.topic != self.config.topic:
            return None
        return self.view.receive(msg.peer_id, msg.data, getattr(msg, "age_s", 0.0), getattr(msg, "seqno", 0))

    def build(self) -> StatusMessage:
        f = self.figures()
        err = f.last_error
        if err is not None and len(err) > MAX_ERROR_CHARS:
            err = err[: MAX_ERROR_CHARS - 3] + "..."
        return StatusMessage(
            node=self.node_name, peer_id=self.peer_id, version=__version__[:32], seq=self._seq,
            uptime_s=round(time.monotonic() - self._started, 1), state=f.state,
            peers=len(f.peers), connected_peers=listed_peers(f.peers, self.view.knows),
            fleet=self.view.fresh_count(), streams_in=f.streams_in, streams_out=f.streams_out,
            frames_sent=f.frames_sent, frames_received=f.frames_received, xruns=f.xruns,
            drops=f.drops, cpu_load=f.cpu_load, process_cpu=f.process_cpu, temp_c=f.temp_c,
            talk=f.talk, frames_late=f.frames_late, latency_p50_ms=_ms(f.latency_p50_ms),
            latency_p99_ms=_ms(f.latency_p99_ms), latency_p95_ms=_ms(f.latency_p95_ms),
            frames_concealed=f.frames_concealed,
            stretched_ms=round(float(f.stretched_ms), 1), talk_streams=list(f.talk_streams[:MAX_LISTED_STREAMS]),
            status_rejected=self.view.rejected, last_error=err,
            backends={k: str(v)[:16] for k, v in list(f.backends.items())[:4]},
            transmitting=f.transmitting, receiving=f.receiving, group=f.group,
            **_levels("capture", f.capture_levels), **_levels("playback", f.playback_levels),
            interval_s=round(self.interval(), 1))

    def interval(self) -> float:
        """This node's periodic interval now (grows with the fleet it sees)."""
        return fleet_interval(self.config.interval_s, len(self.view.entries()), FLEET_STATUS_RATE)

    @staticmethod
    def _change_key(m: StatusMessage) -> tuple[Any, ...]:
        """The fields whose change is published at once; counters, load and the counts of
        connections (`peers`) and of nodes seen (`fleet`) wait for the next message. Every
        message reaches every node (about D copies each), so what one node publishes on change
        costs the whole fleet: while a fleet starts, every node's `fleet` and `peers` change
        with every node that joins, and publishing those made each node send its status every
        0.1 interval (at N = 50 about 10 messages/s fleet-wide instead of 1, 20-40 kB/s per
        node, both cores of this machine busy with 50 nodes)."""
        return (m.state, m.streams_in, m.streams_out, m.last_error, m.talk, m.transmitting,
                m.receiving, m.group)

    async def publish_now(self) -> bool:
        msg = self.build()
        data = encode_status(msg)
        try:
            await self.handle.publish(self.config.topic, data)
        except AviP2pError as exc:
            self.publish_errors += 1
            level = logging.WARNING if self.publish_errors in (1, 10) or self.publish_errors % 100 == 0 \
                else logging.DEBUG
            log.log(level, "status publish failed (%d so far): %s", self.publish_errors, exc)
            self.on_error(f"status publish: {exc}")
            return False
        self._seq += 1
        self.published += 1
        self.last_sent = msg
        self._last_key = self._change_key(msg)
        return True

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Subscribe, then publish every ``interval_s`` and on change until cancelled."""
        await self.handle.subscribe(self.config.topic)
        task_status.started()
        # A node still starting waits (up to STARTING_GRACE_S) for its first message to say
        # "ok": the "starting" one, published before the node has peers, reached them only late
        # (GossipSub's replay), followed by "ok" a moment after; one message per node start
        # less for a fleet that starts together.
        starting = self.build().state == "starting"
        next_tick = trio.current_time() + (STARTING_GRACE_S if starting else 0.0)
        while True:
            with trio.move_on_at(next_tick):
                await _first_of(self._changed, self._reconfigured)
            if self._reconfigured.is_set():
                self._reconfigured = trio.Event()
                next_tick = min(next_tick, trio.current_time() + self.interval())
            if trio.current_time() >= next_tick:
                self._changed = trio.Event()
                await self.publish_now()
                next_tick = trio.current_time() + self.interval()
            elif self._changed.is_set():
                self._changed = trio.Event()
                if self._change_key(self.build()) != self._last_key:
                    first = self.published == 0
                    await self.publish_now()
                    if first:  # the first message is the first tick
                        next_tick = trio.current_time() + self.interval()
            # Coalesce bursts of changes (more so in a big fleet, where the fleet count changes
            # with every node that starts).
            await trio.sleep(max(MIN_PUBLISH_GAP_S, CHANGE_GAP_FRACTION * self.interval()))


def _levels(prefix: str, lv: tuple[float, float, int] | None) -> dict[str, Any]:
    if lv is None:
        return {}
    rms, peak, clipped = lv
    return {f"{prefix}_rms_dbfs": round(min(0.0, rms), 1), f"{prefix}_peak_dbfs": round(min(0.0, peak), 1),
            f"{prefix}_clipped": clipped}


async def _first_of(*events: trio.Event) -> None:
    async with trio.open_nursery() as n:
        async def wait(ev: trio.Event) -> None:
            await ev.wait()
            n.cancel_scope.cancel()
        for ev in events:
            n.start_soon(wait, ev)
