"""The agent service: supervises config, devices, mesh, status and talk in one trio nursery.

Lifecycle (``avi-agent run``)::

    devices ─────── audio (source + sink) and gpio (button + LED) groups, each reopened with
                    back-off while missing (agent/devices.py) ─────────────────────┐
    mesh loop ───── AviP2p.start(cfg.mesh) (retried with back-off)               │
                      ├─ dispatcher: the ONLY reader of the mesh event channel   │
                      ├─ Status.run: subscribe, publish every interval/on change │
                      │    then READY=1 (once the devices were tried: open, or    │
                      │    faulted -> "degraded: no sound card (...)")           │
                      └─ talk (agent.talk.Talk, unless built without) ◄─────────┘ once both are open
    watchdog ────── WATCHDOG=1 from the loop itself
    status line ─── STATUS=... whenever the readable summary changes; LED error pattern on faults
    signals ─────── SIGTERM/SIGINT: STOPPING=1 and a clean exit; SIGHUP: reload (agent/reload.py)
    metrics ─────── GET /metrics (Prometheus) and /status (JSON) on metrics.listen

A device or network fault is logged, shown in STATUS= (``degraded: ...``), in the status message
and on the LED (when the LED itself works), and retried; READY=1 does not wait for a missing
device (systemd would otherwise time the start out and restart for ever). Only a configuration
error (exit 78) ends the process on its own. What is shown is computed by agent/presentation.py.
"""

from __future__ import annotations

import functools
import gc
import logging
import os
import signal
import time
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import trio

import agent.mesh as mesh
from agent import identify as ident
from agent.config import AgentConfig, ConfigError, EX_CONFIG, load_config
from agent.devices import Devices, DeviceSupervisor
from agent.faults import Faults, describe, leaves
from agent.logs import adopt_libp2p_logging, current_summarizer, setup_logging
from agent.mesh import (AudioData, AudioStreamAccepted, AudioStreamClosed, AudioStreamRequested, AviP2pError,
                        DialError, Event, Message, PeerConnected, PeerDisconnected, PeerDiscovered, PeerId,
                        Started, StreamId)
from agent.mesh import ConfigError as MeshConfigError
from agent.metrics import serve_metrics
from agent.presentation import ServiceView, backends
from agent.reload import plan_reload
from agent.sdnotify import Notifier, run_watchdog
from agent.status import Status, fake_devices
from agent.talk import TOPIC as TALK_TOPIC
from agent.talk import Talk, TalkFactory, TalkLike
from agent.talk.engine import IDENTIFY_PATTERN, IDENTIFY_S

if TYPE_CHECKING:  # the mesh node's module loads py-libp2p: imported on a worker thread at run
    from agent.mesh import AviP2p, AviP2pConfig, AviP2pHandle

__all__ = ["Service", "EX_OK"]

log = logging.getLogger("agent.service")

EX_OK = 0
STATUS_LINE_PERIOD_S = 1.0  # how often the summary is recomputed (sent only when it changed)
MESH_RETRY_MAX_S = 30.0
TALK_RETRY_S = 2.0


class Service:
    """One node's agent. ``await Service(cfg, path).run()`` returns the exit status.

    ``talk_class`` builds push-to-talk once the mesh runs and the devices are open
    (:class:`agent.talk.Talk`; a test may hand a stand-in); None runs without push-to-talk
    (incoming streams are refused)."""

    def __init__(self, config: AgentConfig, config_path: Path | None = None, *,
                 notifier: Notifier | None = None, env: Mapping[str, str] | None = None,
                 talk_class: TalkFactory | None = Talk) -> None:
        self.config = config
        self.config_path = config_path
        self.env = os.environ if env is None else env
        self.notifier = notifier or Notifier(self.env)
        self.faults = Faults()
        self.phase = "starting"
        self.restart_needed: list[str] = []
        self.talk_class = talk_class
        # The capture is drained until push-to-talk reads it; without talk nobody will.
        self.hw = DeviceSupervisor(config, self, drain_capture=talk_class is not None)
        self.node: AviP2p | None = None  # while the mesh runs
        self.handle: AviP2pHandle | None = None
        self.status: Status | None = None
        self.talk: TalkLike | None = None  # while push-to-talk runs
        self.ready_sent = False
        self.heap_frozen = False  # gc.freeze() done once the first mesh node is up
        self.peer_id: str | None = None
        self.listen_addresses: list[str] = []
        self.view = ServiceView(self)
        self._changed = trio.Event()
        self._last_line: str | None = None
        self._exit_code = EX_OK
        self._root: trio.Nursery | None = None
        self.identify_policy = ident.IdentifyPolicy(config.mesh.allowed_peers)

    @property
    def devices(self) -> Devices | None:
        """All four devices while both groups are open."""
        return self.hw.devices

    # --- entry point --------------------------------------------------------------------------
    async def run(self) -> int:
        log.info("avi-agent starting: node %s, config %s", self.config.node.name,
                 self.config_path or "(defaults)", extra={"node": self.config.node.name})
        if self.talk_class is None:
            log.info("push-to-talk is off: running without talk")
        else:
            log.info("push-to-talk enabled (%s)", "agent.talk.Talk" if self.talk_class is Talk else
                     getattr(self.talk_class, "__qualname__", repr(self.talk_class)))
        fakes = fake_devices(backends(self.config))
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
                nursery.start_soon(self.hw.run)
                nursery.start_soon(self._mesh_loop)
                nursery.start_soon(serve_metrics, self.config.metrics, self.view.metrics_snapshot, self)
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
        """SIGHUP: re-read the config; apply what can be applied live (agent.reload); report the rest."""
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
        plan = plan_reload(self.config, new, talk_running=self.talk is not None)
        if plan.logging_changed:
            setup_logging(plan.config.logging, self.config.node.name)
        if self.status is not None:
            self.status.reconfigure(plan.config.status)
        if self.talk is not None:
            self.talk.set_gains(plan.config.audio.capture_gain_db, plan.config.audio.playback_gain_db)
            if plan.talk_config is not None:
                self.talk.reconfigure(plan.talk_config)
        self.config = plan.config
        self.restart_needed = plan.restart
        if plan.live:
            log.info("reload: applied %s", ", ".join(plan.live))
        if plan.restart:
            log.warning("reload: %s changed but cannot be applied while running; "
                        "restart the service (systemctl restart avi-agent)", ", ".join(plan.restart))
        if not plan.live and not plan.restart:
            log.info("reload: configuration unchanged")
        self.notifier.ready()
        self.changed()

    # --- mesh ---------------------------------------------------------------------------------
    async def _mesh_loop(self) -> None:
        # py-libp2p takes about 1 s to import: do it on a worker thread, so the event loop (the
        # watchdog, the capture device being drained) is not blocked meanwhile.
        # abandon_on_cancel: SIGTERM during the import must not wait for it (on a loaded machine
        # it can take many seconds, and systemd would SIGKILL us); the thread is a daemon.
        node_class: type[AviP2p] = await trio.to_thread.run_sync(getattr, mesh, "AviP2p", abandon_on_cancel=True)
        adopt_libp2p_logging()  # its import set its logger to bypass ours

        delay = 1.0
        while True:
            started = False
            try:
                async with node_class.start(self.mesh_config()) as (node, events):
                    started = True
                    delay = 1.0
                    if not self.heap_frozen:
                        # A full (generation-2) garbage collection walks every object: ~110,000
                        # once py-libp2p is imported and the node is up, 50 ms on this x86 and
                        # about three times that on a Pi: a stall the playout must conceal when it
                        # falls inside a talk. What exists now lives as long as the process, so
                        # it leaves the collector's reach (once: a restarted node's leftovers
                        # must stay collectable).
                        gc.freeze()
                        self.heap_frozen = True
                    self.clear_fault("mesh")
                    await self._with_mesh(node, events)
                    reason = "the mesh node stopped"
            except Exception as exc:  # noqa: BLE001 - a network fault must not end the service
                errors = leaves(exc)
                bad_config = [e for e in errors if isinstance(e, MeshConfigError)]
                if bad_config:
                    log.critical("mesh configuration error: %s", bad_config[0])
                    self.stop(EX_CONFIG)
                    return
                if not all(isinstance(e, (AviP2pError, OSError, trio.TooSlowError)) for e in errors):
                    log.exception("unexpected error in the mesh layer")
                reason = describe(exc)
            finally:
                self.node = self.handle = self.status = self.talk = None
            self.fault("mesh", f"{reason}; retrying in {delay:g} s" if not started else
                       f"{reason}; restarting in {delay:g} s")
            await trio.sleep(delay)
            delay = min(delay * 2, MESH_RETRY_MAX_S)

    def mesh_config(self) -> AviP2pConfig:
        """The mesh settings, with the status and talk topics retained: a node that connects
        gets every node's latest status and talk groups from its neighbour at once."""
        cfg = self.config.mesh
        retained = list(dict.fromkeys([*cfg.retained_topics, self.config.status.topic, TALK_TOPIC]))
        return cfg.model_copy(update={"retained_topics": retained})

    async def _with_mesh(self, node: AviP2p, events: trio.MemoryReceiveChannel[Event]) -> None:
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
                             self.view.figures, on_error=lambda why: self.fault("status", why))
        async with trio.open_nursery() as n:
            n.start_soon(self._dispatch, events, n)
            await n.start(self._keep_status, self.status)
            try:
                await handle.subscribe(ident.TOPIC)
            except AviP2pError as exc:
                log.info("identify requests will not be heard: %s", exc)
            await self.hw.tried()
            if self.talk_class is not None:
                if self.devices is not None:
                    await n.start(self._run_talk, handle, self.talk_class)
                else:  # starts once the devices open; the mesh and status run meanwhile
                    n.start_soon(functools.partial(self._run_talk, handle, self.talk_class))
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
                self.fault("status", f"status topic: {describe(group)}")
                if first:
                    first = False
                    task_status.started()
                await trio.sleep(2.0)

    async def _run_talk(self, handle: AviP2pHandle, talk_class: TalkFactory, *,
                        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Run push-to-talk (restarting it after a crash); reports started after the first attempt
        either way, so a broken talk does not hold back READY=1 (the fault is shown instead)."""
        first = True
        while True:
            d = self.hw.devices
            if d is None:
                if first:
                    first = False
                    task_status.started()
                await self.hw.opened.wait()
                continue
            try:
                await self.hw.take_capture()
                talk = talk_class(self.config, handle, d.source, d.sink, d.button, d.led)
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
                self.fault("talk", f"{describe(group)}; restarting")
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
                case Message(topic=ident.TOPIC, peer_id=p, data=data):
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
                case AudioStreamRequested(peer_id=p, stream_id=s) if talk is None:
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
        if ident.obey(self.identify_policy, self.peer_id, from_peer, data, time.monotonic()):
            self.identify()

    def identify(self) -> None:
        """Chime (through push-to-talk's playback) and blink, or only blink without talk."""
        if self.talk is not None:
            self.talk.identify()
            return
        if self.hw.hold(IDENTIFY_PATTERN) and self._root is not None:
            async def back() -> None:
                await trio.sleep(IDENTIFY_S)
                self.hw.release()
                self.hw.show(self.view.led_pattern())
            self._root.start_soon(back)

    async def _refuse_stream(self, peer: PeerId, stream_id: StreamId) -> None:
        try:
            if self.handle is not None:
                await self.handle.reject_audio_stream(stream_id, "push-to-talk is not running on this node")
        except AviP2pError as exc:
            log.debug("could not refuse stream %x from %s: %s", stream_id, peer, exc)
        log.info("refused audio stream %x from %s: push-to-talk is not running", stream_id, peer,
                 extra={"peer": peer, "stream": f"{stream_id:x}"})

    # --- STATUS= and the LED ------------------------------------------------------------------
    async def _status_line(self) -> None:
        while True:
            with trio.move_on_after(STATUS_LINE_PERIOD_S):
                await self._changed.wait()
            self._changed = trio.Event()
            summarizer = current_summarizer()
            if summarizer is not None:
                summarizer.flush()  # repeated log lines: their count, once a minute
            self.hw.check_health()
            self.hw.show(self.view.led_pattern())
            if self.phase == "stopping":
                return
            line = self.view.status_line()
            if line != self._last_line:
                self._last_line = line
                self.notifier.status(line)
                log.debug("status: %s", line)
            await trio.sleep(0.1)  # coalesce bursts
