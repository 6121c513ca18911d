"""What the service shows (agent/presentation.py) and its fault book (agent/faults.py), read from
a service state built by hand: no mesh, no devices open. The running service's STATUS= lines and
LED are checked end to end in test_service.py."""

from __future__ import annotations

from dataclasses import dataclass, field

from agent.config import AgentConfig
from agent.devices import DeviceSupervisor
from agent.faults import Faults, describe
from agent.identify import IdentifyPolicy
from agent.mesh import DialError
from agent.presentation import ServiceView


class _Reporter:
    def fault(self, area: str, text: str) -> None: ...

    def clear_fault(self, area: str) -> None: ...

    def changed(self) -> None: ...


@dataclass
class _State:
    config: AgentConfig
    phase: str = "starting"
    faults: Faults = field(default_factory=Faults)
    restart_needed: list[str] = field(default_factory=list)
    node: None = None
    handle: None = None
    status: None = None
    talk: None = None
    peer_id: str | None = None
    listen_addresses: list[str] = field(default_factory=list)
    identify_policy: IdentifyPolicy = field(default_factory=IdentifyPolicy)

    def __post_init__(self) -> None:
        self.hw = DeviceSupervisor(self.config, _Reporter(), drain_capture=False)


def _state() -> _State:
    return _State(AgentConfig(node={"name": "pi-a"}, audio={"backend": "fake"}, gpio={"backend": "fake"}))


def test_status_line_names_phase_faults_and_restarts() -> None:
    s = _state()
    view = ServiceView(s)
    assert view.status_line() == ("pi-a starting; 0 peers; streams 0 in/0 out; talk off; fake audio; "
                                  "fake gpio; no errors")
    assert view.led_pattern() == "idle"
    s.faults.set("audio", "no sound card (hw:0 missing)")
    s.faults.set("mesh", "cannot listen")
    # before READY the fault comes last; once ready it comes first (what the admin needs)
    assert view.status_line().endswith("; ERROR no sound card (hw:0 missing); mesh: cannot listen")
    s.phase = "ready"
    s.restart_needed = ["mesh.listen_port", "a.b", "c.d", "e.f", "g.h"]
    line = view.status_line()
    assert line.startswith("degraded: no sound card (hw:0 missing); mesh: cannot listen; pi-a ready; ")
    assert "restart needed for mesh.listen_port, a.b, c.d, e.f ..." in line and "ERROR" not in line
    assert view.led_pattern() == "error"


def test_figures_and_metrics_without_mesh_talk_or_devices() -> None:
    s = _state()
    s.phase = "ready"
    s.faults.set("gpio", "no GPIO (x)")
    f = ServiceView(s).figures()
    assert (f.state, f.peers, f.talk, f.frames_sent, f.drops) == ("degraded", [], False, 0, 0)
    assert f.last_error == "gpio: no GPIO (x)" and f.backends == {"audio": "fake", "gpio": "fake"}
    m = ServiceView(s).metrics_snapshot()
    assert (m.node, m.state, m.faults, m.latency) == ("pi-a", "degraded", 1, None)
    assert m.status["faults"] == {"gpio": "no GPIO (x)"} and m.status["summary"].startswith("degraded: ")


def test_faults_book_and_exception_texts() -> None:
    faults = Faults()
    assert faults.set("mesh", "down") and not faults.set("mesh", "down")  # same text: not new
    assert faults.set("mesh", "still down") and faults.count == 2
    assert faults.clear("mesh") and not faults.clear("mesh")
    assert faults.last_error == "mesh: still down" and faults.active == {}
    group = ExceptionGroup("x", [OSError("boom"), ExceptionGroup("y", [DialError("no route"), OSError("boom")])])
    assert describe(group) == "OSError: boom; no route"  # mesh errors speak for themselves; no repeats
    assert describe(TimeoutError()) == "TimeoutError"
