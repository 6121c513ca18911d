"""The agent service: wires config, devices, mesh, status and talk in one trio nursery.

Lifecycle (``avi-agent run``)::

    audio task ──── opens source + sink (reopened with back-off while missing) ──┐
    gpio task ───── opens button + LED  (reopened with back-off while missing) ──┤
    mesh loop ───── AviP2p.start(cfg.mesh) (retried with back-off)               │
                      ├─ dispatcher: the ONLY reader of the mesh event channel   │
                      ├─ Status.run: subscribe, publish every interval/on change │
                      │    then READY=1 (once the devices were tried: open, or    │
                      │    faulted -> "degraded: no sound card (...)")           │
                      └─ talk (when agent.talk provides Talk) ◄──────────────────┘ once both are open
    watchdog ────── WATCHDOG=1 from the loop itself
    status line ─── STATUS=... whenever the readable summary changes; LED error pattern on faults
    signals ─────── SIGTERM/SIGINT: STOPPING=1 and a clean exit; SIGHUP: reload
    metrics ─────── GET /metrics (Prometheus) and /status (JSON) on metrics.listen

A device or network fault is logged, shown in STATUS= (``degraded: ...``), in the status message
and on the LED (when the LED itself works), and retried; READY=1 does not wait for a missing
device (systemd would otherwise time the start out and restart for ever). Only a configuration
error (exit 78) ends the process on its own.
"""

from __future__ import annotations

import functools
import importlib
import logging
import os
import signal
import time
from collections.abc import Mapping
from contextlib import AsyncExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import trio

from agent import __version__
from agent import identify as ident
from agent.config import DEFAULT_METRICS_LISTEN, AgentConfig, ConfigError, EX_CONFIG, load_config
from agent.health import ProcessCpu, load_average, soc_temperature
from agent.logs import adopt_libp2p_logging, current_summarizer, setup_logging
from agent.mesh.errors import AviP2pError, DialError
from agent.mesh.errors import ConfigError as MeshConfigError
from agent.mesh.events import (AudioData, AudioStreamAccepted, AudioStreamClosed, AudioStreamRequested,
                               Event, Message, PeerConnected, PeerDisconnected, PeerDiscovered, Started)
from agent.sdnotify import Notifier, run_watchdog
from agent.status import LocalFigures, Status, TalkStreamStatus, fake_devices
from hw.config import open_audio_sink, open_audio_source, open_button, open_led

__all__ = ["Service", "Devices", "Faults", "TalkLike", "load_talk_class", "EX_OK"]

log = logging.getLogger("agent.service")

EX_OK = 0
STATUS_LINE_PERIOD_S = 1.0  # how often the summary is recomputed (sent only when it changed)
MESH_RETRY_MAX_S = 30.0
DEVICE_RETRY_MAX_S = 30.0
# Fault texts of the device groups (the status line and message show them as they are).
DEVICE_AREAS = {"audio": "no sound card", "gpio": "no GPIO"}
TALK_RETRY_S = 2.0
# Settings SIGHUP applies live; everything else is reported as needing a restart.
RELOADABLE = ("logging.", "status.interval_s", "status.stale_after_s", "status.max_message_bytes",
              "status.max_nodes", "audio.capture_gain_db", "audio.playback_gain_db")
METRICS_RETRY_S = 30.0


class TalkStats(Protocol):
    streams_in: int
    streams_out: int
    frames_sent: int
    frames_received: int
    frames_dropped: int


class TalkLike(Protocol):
    """What the service expects of ``agent.talk.Talk`` (built by another part of the project)."""

    async def run(self, *, task_status: trio.TaskStatus[Any] = ...) -> None: ...

    async def handle_event(self, event: Event) -> None: ...

    def stats(self) -> TalkStats: ...


def load_talk_class() -> tuple[type | None, str]:
    """``agent.talk.Talk`` when it exists, plus a sentence for the log explaining the outcome."""
    try:
        mod = importlib.import_module("agent.talk")
    except ModuleNotFoundError as exc:
        if exc.name in ("agent.talk",):
            return None, "push-to-talk is not installed (no agent.talk): running without talk"
        return None, f"push-to-talk cannot be loaded ({exc}): running without talk"
    except Exception as exc:  # a broken talk module must not stop status and the mesh
        return None, f"push-to-talk failed to import ({type(exc).__name__}: {exc}): running without talk"
    cls = getattr(mod, "Talk", None)
    if cls is None:
        return None, "agent.talk has no Talk class yet: running without talk"
    return cls, "push-to-talk enabled (agent.talk.Talk)"


@dataclass(frozen=True, slots=True)
class Devices:
    source: Any  # hw.audio.AudioSource
    sink: Any  # hw.audio.AudioSink
    button: Any  # hw.gpio.Button
    led: Any  # hw.gpio.Led


class Faults:
    """Current faults by area (``devices``, ``audio``, ``mesh``, ``status``, ``talk``, ``config``)
    and the most recent error text (kept after the fault clears, for the status message)."""

    def __init__(self) -> None:
        self.active: dict[str, str] = {}
        self.last_error: str | None = None
        self.last_error_at: float | None = None
        self.count = 0

    def set(self, area: str, text: str) -> bool:
        """Record a fault; True when it is new or its text changed."""
        self.last_error = f"{area}: {text}"
        self.last_error_at = time.time()
        if self.active.get(area) == text:
            return False
        self.count += 1
        self.active[area] = text
        return True

    def clear(self, area: str) -> bool:
        return self.active.pop(area, None) is not None

    def summary(self) -> str:
        """``no sound card (...); mesh: ...``: device texts say what they are, others get their area."""
        return "; ".join(t if a in DEVICE_AREAS else f"{a}: {t}" for a, t in sorted(self.active.items()))


def _leaves(exc: BaseException) -> list[BaseException]:
    """The leaf exceptions of a (possibly nested) exception group."""
    if isinstance(exc, BaseExceptionGroup):
        return [leaf for sub in exc.exceptions for leaf in _leaves(sub)]
    return [exc]


def _describe(exc: BaseException) -> str:
    """A short, readable text for an exception or group (``TimeoutError: ...; OSError: ...``)."""
    texts = []
    for leaf in _leaves(exc):
        text = str(leaf) or type(leaf).__name__
        if not isinstance(leaf, (AviP2pError,)) and type(leaf).__name__ not in text:
            text = f"{type(leaf).__name__}: {text}"
        if text not in texts:
            texts.append(text)
    return "; ".join(texts)


def _flatten(data: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in data.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping):
            out.update(_flatten(v, key + "."))
        else:
            out[key] = v
    return out


def config_changes(old: AgentConfig, new: AgentConfig) -> tuple[list[str], list[str]]:
    """(reloadable, needs-restart) dotted names of the settings that differ."""
    a, b = _flatten(old.model_dump(mode="json")), _flatten(new.model_dump(mode="json"))
    changed = sorted(k for k in a.keys() | b.keys() if a.get(k) != b.get(k))
    live = [k for k in changed if any(k == r or (r.endswith(".") and k.startswith(r)) for r in RELOADABLE)]
    return live, [k for k in changed if k not in live]


class Service:
    """One node's agent. ``await Service(cfg, path).run()`` returns the exit status."""

    def __init__(self, config: AgentConfig, config_path: Path | None = None, *,
                 notifier: Notifier | None = None, env: Mapping[str, str] | None = None) -> None:
        self.config = config
        self.config_path = config_path
        self.env = os.environ if env is None else env
        self.notifier = notifier or Notifier(self.env)
        self.faults = Faults()
        self.phase = "starting"
        self.restart_needed: list[str] = []
        self.devices: Devices | None = None
        self.devices_open = trio.Event()  # replaced by a fresh one whenever the devices close
        self._audio: tuple[Any, Any] | None = None  # (source, sink) while open
        self._gpio: tuple[Any, Any] | None = None  # (button, led) while open
        self._tried: dict[str, trio.Event] = {a: trio.Event() for a in DEVICE_AREAS}
        self._drain_stop: trio.Event | None = None
        self._drain_done: trio.Event | None = None
        self.node: Any = None  # AviP2p while the mesh runs
        self.handle: Any = None
        self.status: Status | None = None
        self.talk: Any = None
        self.talk_class, self._talk_note = load_talk_class()
        self.ready_sent = False
        self.peer_id: str | None = None
        self.listen_addresses: list[str] = []
        self._changed = trio.Event()
        self._cpu = ProcessCpu()
        self._last_line: str | None = None
        self._led_pattern: str | None = None
        self._exit_code = EX_OK
        self._root: trio.Nursery | None = None
        self.identify_policy = ident.IdentifyPolicy(config.mesh.allowed_peers)
        self.metrics_address: tuple[str, int] | None = None

    # --- entry point --------------------------------------------------------------------------
    async def run(self) -> int:
        log.info("avi-agent starting: node %s, config %s", self.config.node.name,
                 self.config_path or "(defaults)", extra={"node": self.config.node.name})
        log.info(self._talk_note)
        fakes = fake_devices(self.backends())
        if fakes:
            log.warning("running with %s: simulated devices record nothing, play nothing and have no "
                        "button (set [audio] backend = \"alsa\" and [gpio] backend = \"rpi\" in %s for "
                        "a real node)", " and ".join(fakes), self.config_path or "the config")
        with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGHUP) as signals:
            async with trio.open_nursery() as nursery:
                self._root = nursery
                nursery.start_soon(self._signals, signals)
                interval = await nursery.start(run_watchdog, self.notifier)
                if interval is not None:
                    log.info("systemd watchdog: pinging every %.2f s", interval)
                nursery.start_soon(self._status_line)
                nursery.start_soon(self._device_group, "audio")
                nursery.start_soon(self._device_group, "gpio")
                nursery.start_soon(self._mesh_loop)
                nursery.start_soon(self._metrics_task)
        log.info("avi-agent stopped (exit %d)", self._exit_code)
        return self._exit_code

    def stop(self, exit_code: int = EX_OK) -> None:
        if self.phase != "stopping":
            self.phase = "stopping"
            self.notifier.stopping()
            self.notifier.status(f"{self.config.node.name}: stopping")
        self._exit_code = exit_code
        if self._root is not None:
            self._root.cancel_scope.cancel()

    def changed(self) -> None:
        """Something a person (STATUS=) or the fleet (status topic) would notice has changed."""
        self._changed.set()
        if self.status is not None:
            self.status.poke()

    def fault(self, area: str, text: str) -> None:
        if self.faults.set(area, text):
            log.error("fault: %s: %s", area, text, extra={"area": area})
            self.changed()

    def clear_fault(self, area: str) -> None:
        if self.faults.clear(area):
            log.info("recovered: %s", area, extra={"area": area})
            self.changed()

    # --- signals and reload -------------------------------------------------------------------
    async def _signals(self, signals: Any) -> None:
        async for signum in signals:
            if signum == signal.SIGHUP:
                await self.reload()
                continue
            log.info("%s received: stopping", signal.Signals(signum).name)
            self.stop(EX_OK)
            return

    async def reload(self) -> None:
        """SIGHUP: re-read the config; apply logging and status timing; report the rest."""
        self.notifier.reloading()
        try:
            new = load_config(self.config_path, self.env)
        except ConfigError as exc:
            for line in exc.problems:
                log.error("reload: %s", line)
            self.fault("config", f"reload failed ({len(exc.problems)} problem(s)), still running "
                                 "the previous config")
            self.notifier.ready()
            return
        self.clear_fault("config")
        live, restart = config_changes(self.config, new)
        if any(k.startswith("logging.") for k in live):
            setup_logging(new.logging, self.config.node.name)
        status_cfg = new.status.model_copy(update={"topic": self.config.status.topic})
        if self.status is not None:
            self.status.reconfigure(status_cfg)
        gains = {k: getattr(new.audio, k) for k in ("capture_gain_db", "playback_gain_db")}
        applied = self.config.model_copy(update={"logging": new.logging, "status": status_cfg,
                                                 "audio": self.config.audio.model_copy(update=gains)})
        if self.talk is not None and callable(getattr(self.talk, "set_gains", None)):
            self.talk.set_gains(gains["capture_gain_db"], gains["playback_gain_db"])
        if "talk" in {k.split(".")[0] for k in restart} and self.talk is not None \
                and callable(getattr(self.talk, "reconfigure", None)):
            self.talk.reconfigure(new)
            restart = [k for k in restart if not k.startswith("talk.")]
            applied = applied.model_copy(update={"talk": new.talk})
        self.config = applied
        self.restart_needed = restart
        if live:
            log.info("reload: applied %s", ", ".join(live))
        if restart:
            log.warning("reload: %s changed but cannot be applied while running; "
                        "restart the service (systemctl restart avi-agent)", ", ".join(restart))
        if not live and not restart:
            log.info("reload: configuration unchanged")
        self.notifier.ready()
        self.changed()

    # --- devices ------------------------------------------------------------------------------
    async def _device_group(self, area: str) -> None:
        """Open one device group (``audio``: source + sink, ``gpio``: button + LED) and hold it
        open; while it cannot open, the fault is shown and it is retried with back-off."""
        cfg = self.config
        delay = first = cfg.audio.reopen_interval_s
        while True:
            async with AsyncExitStack() as stack:
                try:
                    if area == "audio":
                        source = await stack.enter_async_context(open_audio_source(cfg.audio))
                        sink = await stack.enter_async_context(open_audio_sink(cfg.audio))
                    else:
                        led = await stack.enter_async_context(open_led(cfg.gpio))
                        button = await stack.enter_async_context(open_button(cfg.gpio))
                except Exception as exc:  # device errors are many types (ALSA, GPIO, OS)
                    # (the text stays the same from one retry to the next: logged once)
                    self.fault(area, f"{DEVICE_AREAS[area]} ({_describe(exc)}); retrying with back-off")
                    self._tried[area].set()
                else:
                    delay = first
                    self.clear_fault(area)
                    if area == "audio":
                        self._audio = (source, sink)
                        log.debug("audio open: %s (capture %s, playback %s)", cfg.audio.backend,
                                 cfg.audio.capture_device, cfg.audio.playback_device)
                    else:
                        self._gpio = (button, led)
                        self._led_pattern = None
                        log.debug("gpio open: %s (button %d, LED %d)", cfg.gpio.backend,
                                 cfg.gpio.button_pin, cfg.gpio.led_pin)
                    self._tried[area].set()
                    self._devices_changed()
                    try:
                        if area == "audio":
                            await self._keep_capture_drained(source)
                        await trio.sleep_forever()
                    finally:
                        if area == "audio":
                            self._audio = None
                        else:
                            self._gpio = None
                        self._devices_changed()
            await trio.sleep(delay)
            delay = min(delay * 2, DEVICE_RETRY_MAX_S)

    def _devices_changed(self) -> None:
        """Both groups open -> ``devices`` for talk; either closed -> None (and a new event)."""
        if self._audio is not None and self._gpio is not None:
            if self.devices is None:
                self.devices = Devices(self._audio[0], self._audio[1], self._gpio[0], self._gpio[1])
                log.info("devices open: audio %s, gpio %s", self.config.audio.backend, self.config.gpio.backend)
                self.devices_open.set()
        elif self.devices is not None:
            self.devices = None
            self.devices_open = trio.Event()
        self.changed()

    async def _devices_tried(self) -> None:
        """Until every device group has been tried once (open, or faulted)."""
        for ev in self._tried.values():
            await ev.wait()

    async def _keep_capture_drained(self, source: Any) -> None:
        """Read (and discard) captured audio until push-to-talk takes the source over, so the
        capture device does not overrun while the mesh starts (those would count as drops)."""
        if self.talk_class is None:
            return  # nobody will read it: its overruns are real and counted
        self._drain_stop, self._drain_done = trio.Event(), trio.Event()
        try:
            while not self._drain_stop.is_set():
                await source.read()
        except Exception as exc:  # the device's own fault path reports it
            log.debug("capture drain ended: %s", exc)
        finally:
            self._drain_done.set()

    async def _take_capture(self) -> None:
        """Stop the drain before push-to-talk reads the source (one reader at a time)."""
        if self._drain_stop is not None and self._drain_done is not None:
            self._drain_stop.set()
            await self._drain_done.wait()

    def _device_health(self) -> None:
        a = self._audio
        if a is None:
            return
        problems = []
        for name, dev in (("capture", a[0]), ("playback", a[1])):
            try:
                st = dev.stats()
            except Exception as exc:
                problems.append(f"{name} stats failed: {exc}")
                continue
            if st.state == "recovering":
                problems.append(f"{name} device lost, reopening")
        if problems:
            self.fault("audio", "; ".join(problems))
        else:
            self.clear_fault("audio")

    # --- mesh ---------------------------------------------------------------------------------
    async def _mesh_loop(self) -> None:
        # py-libp2p takes about 1 s to import: do it on a worker thread, so the event loop (the
        # watchdog, the capture device being drained) is not blocked meanwhile.
        import importlib

        # abandon_on_cancel: SIGTERM during the import must not wait for it (on a loaded machine
        # it can take many seconds, and systemd would SIGKILL us); the thread is a daemon.
        await trio.to_thread.run_sync(importlib.import_module, "agent.mesh.node", abandon_on_cancel=True)
        adopt_libp2p_logging()  # its import set its logger to bypass ours
        from agent.mesh import AviP2p

        delay = 1.0
        while True:
            started = False
            try:
                async with AviP2p.start(self.mesh_config()) as (node, events):
                    started = True
                    delay = 1.0
                    self.clear_fault("mesh")
                    await self._with_mesh(node, events)
                    reason = "the mesh node stopped"
            except Exception as exc:  # noqa: BLE001 - a network fault must not end the service
                leaves = _leaves(exc)
                bad_config = [e for e in leaves if isinstance(e, MeshConfigError)]
                if bad_config:
                    log.critical("mesh configuration error: %s", bad_config[0])
                    self.stop(EX_CONFIG)
                    return
                if not all(isinstance(e, (AviP2pError, OSError, trio.TooSlowError)) for e in leaves):
                    log.exception("unexpected error in the mesh layer")
                reason = _describe(exc)
            finally:
                self.node = self.handle = self.status = self.talk = None
            self.fault("mesh", f"{reason}; retrying in {delay:g} s" if not started else
                       f"{reason}; restarting in {delay:g} s")
            await trio.sleep(delay)
            delay = min(delay * 2, MESH_RETRY_MAX_S)

    def mesh_config(self) -> Any:
        """The mesh settings, with the status and talk topics retained: a node that connects
        gets every node's latest status and talk groups from its neighbour at once."""
        from agent.talk.groups import TOPIC as TALK_TOPIC

        cfg = self.config.mesh
        retained = list(dict.fromkeys([*cfg.retained_topics, self.config.status.topic, TALK_TOPIC]))
        return cfg.model_copy(update={"retained_topics": retained})

    async def _with_mesh(self, node: Any, events: trio.MemoryReceiveChannel[Event]) -> None:
        handle = node.handle()
        if not handle.listen_addresses():
            # py-libp2p 0.8.1 logs a failed bind ("Address already in use") and starts anyway,
            # listening nowhere; READY=1 promises that the mesh listens, so retry instead.
            cfg = self.config.mesh
            raise DialError(f"cannot listen on {cfg.listen_host}:{cfg.listen_port} "
                            "(address in use or not available)")
        self.node, self.handle = node, handle
        self.peer_id = handle.local_peer_id
        self.listen_addresses = [a if "/p2p/" in a else f"{a}/p2p/{self.peer_id}"
                                 for a in handle.listen_addresses()]
        log.info("mesh listening: %s", " ".join(self.listen_addresses), extra={"peer": self.peer_id})
        self.status = Status(self.config.status, handle, self.config.node.name, self.peer_id,
                             self._figures, on_error=lambda why: self.fault("status", why))
        async with trio.open_nursery() as n:
            n.start_soon(self._dispatch, events, n)
            await n.start(self._keep_status, self.status)
            try:
                await handle.subscribe(ident.TOPIC)
            except AviP2pError as exc:
                log.info("identify requests will not be heard: %s", exc)
            await self._devices_tried()
            if self.talk_class is not None:
                if self.devices is not None:
                    await n.start(self._run_talk, handle)
                else:  # starts once the devices open; the mesh and status run meanwhile
                    n.start_soon(functools.partial(self._run_talk, handle))
            if not self.ready_sent:
                self.ready_sent = True
                self.phase = "ready"
                self.notifier.ready()
                if self.devices is not None:
                    log.info("ready: mesh listening, devices open")
                else:
                    log.warning("ready, degraded: mesh listening, %s; push-to-talk starts once the "
                                "devices open", self.faults.summary() or "devices not open")
            self.changed()

    async def _keep_status(self, status: Status, *, task_status: trio.TaskStatus[None]) -> None:
        """Run the status publisher; a failed subscribe is retried, not fatal."""
        first = True
        while True:
            try:
                async with trio.open_nursery() as n:
                    await n.start(status.run)
                    self.clear_fault("status")
                    if first:
                        first = False
                        task_status.started()
            except* Exception as group:  # retried; the fault is shown
                self.fault("status", f"status topic: {_describe(group)}")
                if first:
                    first = False
                    task_status.started()
                await trio.sleep(2.0)

    async def _run_talk(self, handle: Any, *,
                        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Run ``Talk`` (restarting it after a crash); reports started after the first attempt
        either way, so a broken talk does not hold back READY=1 (the fault is shown instead)."""
        first = True
        while True:
            d = self.devices
            if d is None:
                if first:
                    first = False
                    task_status.started()
                await self.devices_open.wait()
                continue
            try:
                await self._take_capture()
                talk = self.talk_class(self.config, handle, d.source, d.sink, d.button, d.led)
                if hasattr(talk, "on_change"):
                    talk.on_change = self.changed  # talking/hearing/group: published at once
                async with trio.open_nursery() as n:
                    await n.start(talk.run)
                    self.talk = talk
                    self.clear_fault("talk")
                    log.info("push-to-talk running")
                    if first:
                        first = False
                        task_status.started()
            except* Exception as group:
                # except*: a device error that lands together with our own cancellation (the
                # devices close while talk stops) must not turn a clean stop into a crash.
                log.error("push-to-talk failed", exc_info=group)
                self.fault("talk", f"{_describe(group)}; restarting")
            finally:
                self.talk = None
            if first:
                first = False
                task_status.started()
            await trio.sleep(TALK_RETRY_S)

    async def _dispatch(self, events: trio.MemoryReceiveChannel[Event], nursery: trio.Nursery) -> None:
        """The one reader of the mesh events: status messages to Status, the rest to talk."""
        async for event in events:
            talk = self.talk
            match event:
                case Message(topic=topic) if self.status is not None and topic == self.status.topic:
                    self.status.handle_message(event)
                    continue
                case Message(topic=ident.TOPIC, from_peer=p, data=data):
                    self._on_identify(p, data)
                    continue
                case Started():
                    continue
                case PeerConnected(peer_id=p, address=a):
                    log.info("peer connected: %s at %s", p, a, extra={"peer": p, "_summary": "peers"})
                    self.changed()
                case PeerDisconnected(peer_id=p):
                    log.info("peer disconnected: %s", p, extra={"peer": p, "_summary": "peers"})
                    self.changed()
                case PeerDiscovered(peer_id=p):
                    log.debug("peer discovered: %s", p, extra={"peer": p})
                case AudioStreamRequested(from_peer=p, stream_id=s) if talk is None:
                    nursery.start_soon(self._refuse_stream, p, s)
                    continue
                case AudioStreamAccepted() | AudioStreamClosed():
                    self.changed()
                case AudioData() if talk is None:
                    continue
            if talk is not None:
                try:
                    await talk.handle_event(event)
                except Exception as exc:
                    log.exception("push-to-talk could not handle %s", type(event).__name__)
                    self.fault("talk", f"event handling: {type(exc).__name__}: {exc}")
        # The channel closes when the node stops: let the mesh loop restart it.
        nursery.cancel_scope.cancel()

    def _on_identify(self, from_peer: str, data: bytes) -> None:
        """An identify request on the mesh: chime and blink when it names us and may be obeyed."""
        target = ident.parse_request(data)
        if target is None or target != self.peer_id:
            return
        result = self.identify_policy.decide(from_peer, time.monotonic())
        if result == "refused":
            log.info("identify refused: %s is not in mesh.allowed_peers", from_peer, extra={"peer": from_peer})
        elif result == "rate_limited":
            log.info("identify from %s ignored: at most one per %g s", from_peer,
                     self.identify_policy.min_interval_s, extra={"peer": from_peer})
        else:
            log.info("identify requested by %s: chiming and blinking", from_peer, extra={"peer": from_peer})
            self.identify()

    def identify(self) -> None:
        """Chime (through push-to-talk's playback) and blink, or only blink without talk."""
        talk = self.talk
        if talk is not None and callable(getattr(talk, "identify", None)):
            talk.identify()
            return
        g = self._gpio
        if g is not None:
            from agent.talk.engine import IDENTIFY_PATTERN, IDENTIFY_S

            try:
                g[1].set_pattern(IDENTIFY_PATTERN)
                self._led_pattern = "identify"  # the status-line task puts idle/error back
            except Exception as exc:
                log.debug("identify LED failed: %s", exc)
            if self._root is not None:
                async def back() -> None:
                    await trio.sleep(IDENTIFY_S)
                    self._led_pattern = None
                    self._update_led()
                self._root.start_soon(back)

    async def _refuse_stream(self, peer: str, stream_id: int) -> None:
        try:
            await self.handle.reject_audio_stream(stream_id, "push-to-talk is not running on this node")
        except (AviP2pError, AttributeError) as exc:
            log.debug("could not refuse stream %x from %s: %s", stream_id, peer, exc)
        log.info("refused audio stream %x from %s: push-to-talk is not running", stream_id, peer,
                 extra={"peer": peer, "stream": f"{stream_id:x}"})

    # --- figures, STATUS= and LED -------------------------------------------------------------
    def _stream_counts(self) -> tuple[int, int]:
        if self.node is None:
            return 0, 0
        streams = self.node.stats().streams
        live = [s for s in streams if s.state != "closed"]
        return (sum(1 for s in live if s.direction == "in"), sum(1 for s in live if s.direction == "out"))

    def _figures(self) -> LocalFigures:
        peers = list(self.handle.connected_peers()) if self.handle is not None else []
        s_in, s_out = self._stream_counts()
        sent = received = drops = xruns = late = concealed = 0
        stretched = 0.0
        streams: tuple[TalkStreamStatus, ...] = ()
        p50 = p95 = p99 = None
        tx = rx = False
        group = self.config.talk.active_group
        cap_lv = play_lv = None
        if self.node is not None:
            st = self.node.stats()
            drops += st.audio_frames_dropped
            sent = sum(s.frames_sent for s in st.streams)
            received = sum(s.frames_received for s in st.streams)
        if self.talk is not None:
            try:
                ts = self.talk.stats()
                sent, received = ts.frames_sent, ts.frames_received
                drops += ts.frames_dropped
                late = getattr(ts, "frames_late", 0)
                p50, p99 = getattr(ts, "latency_p50_ms", None), getattr(ts, "latency_p99_ms", None)
                p95 = getattr(ts, "latency_p95_ms", None)
                concealed = getattr(ts, "frames_concealed", 0)
                stretched = getattr(ts, "stretched_ms", 0.0)
                streams = tuple(TalkStreamStatus(peer=str(x.peer), codec=x.codec, delay_ms=float(x.delay_ms),
                                                 target_ms=float(x.target_ms), concealed=x.concealed,
                                                 stretched_ms=float(x.stretched_ms), late=x.late)
                                for x in getattr(ts, "streams", ()))
                s_in, s_out = max(s_in, ts.streams_in), max(s_out, ts.streams_out)
                tx, rx = ts.transmitting, getattr(ts, "receiving", False)
                group = ts.group
                if hasattr(ts, "capture_levels"):
                    c, p = ts.capture_levels, ts.playback_levels
                    cap_lv = (c.rms_dbfs, c.peak_dbfs, c.clipped)
                    play_lv = (p.rms_dbfs, p.peak_dbfs, p.clipped)
            except Exception as exc:
                log.debug("talk.stats() failed: %s", exc)
        d = self.devices
        if d is not None:
            for dev in (d.source, d.sink):
                try:
                    a = dev.stats()
                    xruns += a.xruns
                    drops += a.dropped
                except Exception as exc:
                    log.debug("device stats failed: %s", exc)
        state = "starting" if self.phase == "starting" else ("degraded" if self.faults.active else "ok")
        return LocalFigures(state=state, peers=peers, streams_in=s_in, streams_out=s_out,
                            frames_sent=sent, frames_received=received, xruns=xruns, drops=drops,
                            cpu_load=load_average(), process_cpu=self._cpu.sample(),
                            temp_c=soc_temperature(), talk=self.talk is not None,
                            frames_late=late, latency_p50_ms=p50, latency_p99_ms=p99, latency_p95_ms=p95,
                            frames_concealed=concealed, stretched_ms=stretched, talk_streams=streams,
                            last_error=self.faults.last_error, backends=self.backends(),
                            transmitting=tx, receiving=rx, group=group,
                            capture_levels=cap_lv, playback_levels=play_lv)

    def backends(self) -> dict[str, str]:
        return {"audio": self.config.audio.backend, "gpio": self.config.gpio.backend}

    # --- /metrics and /status -------------------------------------------------------------------
    async def _metrics_task(self) -> None:
        """Serve /metrics and /status on ``metrics.listen`` (retried while the address is busy)."""
        addr = self.config.metrics.address
        if addr is None:
            return
        # prometheus_client takes a while to import: on a worker thread, so the event loop (the
        # capture device, the watchdog) is not held up meanwhile.
        await trio.to_thread.run_sync(importlib.import_module, "prometheus_client", abandon_on_cancel=True)
        from agent.httpd import serve_http
        from agent.metrics import metrics_handler

        handler = metrics_handler(self.metrics_snapshot)
        default = self.config.metrics.listen == DEFAULT_METRICS_LISTEN
        while True:
            why = None
            try:
                async with trio.open_nursery() as n:
                    self.metrics_address = await n.start(serve_http, handler, addr[0], addr[1])
                    self.clear_fault("metrics")
                    log.info("metrics: http://%s:%d/metrics and /status", *self.metrics_address[:2])
            except* OSError as group:
                self.metrics_address = None
                why = _describe(group)
            if why is not None and default:
                # Several agents on one machine (tests, the demo): the first one serves it.
                log.info("metrics: cannot listen on %s (%s); /metrics is not served",
                         self.config.metrics.listen, why)
                return
            if why is not None:
                self.fault("metrics", f"cannot listen on {self.config.metrics.listen}: {why}")
            await trio.sleep(METRICS_RETRY_S)

    def metrics_snapshot(self) -> Any:
        """The figures /metrics and /status show, read now."""
        from agent.metrics import NodeMetrics

        f = self._figures()
        st = self.node.stats() if self.node is not None else None
        fs = self.status.view.stats() if self.status is not None else None
        talk = self.talk
        levels = {}
        if f.capture_levels is not None:
            levels["capture"] = f.capture_levels
        if f.playback_levels is not None:
            levels["playback"] = f.playback_levels
        xruns = {}
        if self._audio is not None:
            for name, dev in (("capture", self._audio[0]), ("playback", self._audio[1])):
                try:
                    xruns[name] = dev.stats().xruns
                except Exception:  # a device fault is reported by the health check
                    pass
        a = self.config.audio
        msg: dict[str, Any] = {}
        if self.status is not None:
            try:
                msg = self.status.build().model_dump(mode="json")
            except Exception as exc:  # /status must answer even when a figure is odd
                msg = {"error": f"{type(exc).__name__}: {exc}"}
        status = {"node": self.config.node.name, "peer_id": self.peer_id, "phase": self.phase,
                  "summary": self.status_line(), "listen_addresses": self.listen_addresses,
                  "faults": dict(self.faults.active), "restart_needed": self.restart_needed,
                  "backends": self.backends(),
                  "gains_db": {"capture": a.capture_gain_db, "playback": a.playback_gain_db},
                  "status": msg}
        return NodeMetrics(
            node=self.config.node.name, peer_id=self.peer_id or "", version=__version__, state=f.state,
            backends=self.backends(), peers=len(f.peers),
            fleet_fresh=(fs.nodes - fs.stale) if fs else 0, fleet_stale=fs.stale if fs else 0,
            streams_in=f.streams_in, streams_out=f.streams_out, frames_sent=f.frames_sent,
            frames_received=f.frames_received, frames_late=f.frames_late,
            frames_concealed=f.frames_concealed, frames_dropped=f.drops,
            bytes_sent=st.bytes_out if st else 0, bytes_received=st.bytes_in if st else 0,
            messages_published=st.messages_published if st else 0,
            messages_received=st.messages_received if st else 0, xruns=xruns,
            latency=getattr(talk, "latency_histogram", None), levels=levels,
            gains_db={"capture": a.capture_gain_db, "playback": a.playback_gain_db},
            transmitting=f.transmitting, receiving=f.receiving, group=f.group,
            groups=tuple(self.config.talk.groups), load=f.cpu_load, temp_c=f.temp_c,
            faults=len(self.faults.active), status_rejected=fs.rejected if fs else 0,
            identify=dict(self.identify_policy.counts), status=status)

    def status_line(self) -> str:
        """One line for ``systemctl status``: phase, peers, fleet, streams, talk, errors. Once
        ready, a fault puts ``degraded: <what>`` first (it is what the admin needs to see)."""
        n_peers = len(self.handle.connected_peers()) if self.handle is not None else 0
        s_in, s_out = self._stream_counts()
        degraded = self.phase == "ready" and bool(self.faults.active)
        parts = [f"degraded: {self.faults.summary()}"] if degraded else []
        parts.append(f"{self.config.node.name} {self.phase}")
        parts.append(f"{n_peers} peer{'s' if n_peers != 1 else ''}")
        if self.status is not None:
            fs = self.status.view.stats()
            parts.append(f"fleet {fs.nodes - fs.stale} seen" + (f", {fs.stale} stale" if fs.stale else ""))
            if fs.rejected:
                parts.append(f"{fs.rejected} bad status msgs")
        parts.append(f"streams {s_in} in/{s_out} out")
        parts.append("talk on" if self.talk is not None else "talk off")
        parts.extend(fake_devices(self.backends()))
        if self.restart_needed:
            parts.append("restart needed for " + ", ".join(self.restart_needed[:4])
                         + (" ..." if len(self.restart_needed) > 4 else ""))
        if not degraded:
            parts.append(f"ERROR {self.faults.summary()}" if self.faults.active else "no errors")
        return "; ".join(parts)

    def _update_led(self) -> None:
        g = self._gpio
        if g is None:
            return
        if self._led_pattern == "identify":
            return  # identify blinks for a few seconds, then the normal pattern comes back
        want = "error" if self.faults.active else "idle"
        # Talk drives the LED while it transmits/receives; the service only switches between
        # idle and error, and only when its own choice changes.
        if want != self._led_pattern:
            try:
                g[1].set_pattern(want)
                self._led_pattern = want
            except Exception as exc:
                log.debug("LED pattern %s failed: %s", want, exc)

    async def _status_line(self) -> None:
        while True:
            with trio.move_on_after(STATUS_LINE_PERIOD_S):
                await self._changed.wait()
            self._changed = trio.Event()
            summarizer = current_summarizer()
            if summarizer is not None:
                summarizer.flush()  # repeated log lines: their count, once a minute
            self._device_health()
            self._update_led()
            if self.phase == "stopping":
                return
            line = self.status_line()
            if line != self._last_line:
                self._last_line = line
                self.notifier.status(line)
                log.debug("status: %s", line)
            await trio.sleep(0.1)  # coalesce bursts
