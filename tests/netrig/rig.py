"""The rig: N hosts, each in its own network namespace, on one bridge in a namespace of its own.

    bridge ns:  br0 ── vh0 ─┐        host ns h0:  lo, eth0 10.77.0.1/24, default dev eth0
                   ── vh1 ─┼─ veth ─ host ns h1:  lo, eth0 10.77.0.2/24, default dev eth0
                   ...     ┘

Every link is created inside a namespace (the veth pair is made in the bridge namespace
with its far end placed straight into the host's), so nothing of the rig ever appears in
the machine's own namespace, and deleting the namespaces deletes every link. The subnet
exists only inside these namespaces, so two rigs may use the same one.
"""

from __future__ import annotations

import ipaddress
import json
import signal
import subprocess
import sys
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from . import faults, lifecycle
from ._sh import RigError, nft, sh
from .procs import kill_group, read_line

TOOLS = str(Path(__file__).with_name("tools.py"))
RELAY = str(Path(__file__).with_name("relay.py"))
PYTHON = sys.executable

Direction = Literal["both", "in", "out"]


@dataclass(frozen=True)
class Impairment:
    """Delay and jitter (milliseconds) the relay applies to one direction of a connection."""

    delay_ms: float = 0.0
    jitter_ms: float = 0.0


@dataclass
class RelayHandle:
    """A running impairment relay: connect to `address` to reach the target through it."""

    host: "Host"
    proc: subprocess.Popen
    address: tuple[str, int]

    def close(self) -> None:
        self.host.kill(self.proc)


class Host:
    """One host of the rig: a network namespace with `eth0` on the bridge.

    `ip` is its address, `ns` the namespace name (usable with `ip netns exec`), `port`
    the name of its bridge port in the bridge namespace.
    """

    ifname = "eth0"

    def __init__(self, rig: "Rig", index: int, ns: str, ip: str) -> None:
        self.rig = rig
        self.index = index
        self.name = f"h{index}"
        self.ns = ns
        self.ip = ip
        self.port = f"vh{index}"
        self._procs: list[subprocess.Popen] = []
        self._specs: dict[int, tuple[list[str], dict[str, Any]]] = {}

    def __repr__(self) -> str:
        return f"Host({self.name}, {self.ip}, ns={self.ns})"

    # -- processes --------------------------------------------------------------------

    def exec(self, argv: Sequence[str], **popen_kwargs: Any) -> subprocess.Popen:
        """Start `argv` inside this host's namespace; returns the Popen.

        The process leads a new session (its own process group), so `kill()` and the
        rig's teardown reach its children too. `popen_kwargs` go to subprocess.Popen.
        """
        if not self.rig.is_up:
            raise RigError(f"{self.name}: rig is not up")
        if popen_kwargs.get("start_new_session") is False or "process_group" in popen_kwargs:
            raise ValueError("the rig needs start_new_session=True to clean up")
        popen_kwargs["start_new_session"] = True
        proc = subprocess.Popen(["ip", "netns", "exec", self.ns, *argv], **popen_kwargs)
        self._procs.append(proc)
        self._specs[proc.pid] = (list(argv), dict(popen_kwargs))
        return proc

    def run(
        self,
        argv: Sequence[str],
        *,
        timeout: float = 30.0,
        check: bool = True,
        input: str | None = None,
    ) -> subprocess.CompletedProcess[str]:
        """Run a short command inside this host's namespace to completion (text output)."""
        return sh(["ip", "netns", "exec", self.ns, *argv], timeout=timeout, check=check, input=input)

    def tool(self, command: str, *args: str, **popen_kwargs: Any) -> subprocess.Popen:
        """Start a traffic tool (tests/netrig/tools.py) here, stdout piped as text."""
        popen_kwargs.setdefault("stdout", subprocess.PIPE)
        popen_kwargs.setdefault("text", True)
        return self.exec([PYTHON, TOOLS, command, *args], **popen_kwargs)

    def run_tool(self, command: str, *args: str, timeout: float = 30.0) -> dict[str, Any]:
        """Run a traffic tool to completion and return the JSON object it prints last."""
        res = self.run([PYTHON, TOOLS, command, *args], timeout=timeout, check=False)
        return parse_result(res.stdout, res.returncode, res.stderr)

    def kill(self, proc: subprocess.Popen, sig: int = signal.SIGKILL, timeout: float = 5.0) -> int | None:
        """Send `sig` to `proc`'s whole process group and wait for it; returns its exit code."""
        return kill_group(proc, sig, timeout)

    def restart(self, proc: subprocess.Popen, sig: int = signal.SIGKILL) -> subprocess.Popen:
        """Kill `proc` (process group, `sig`) and start it again with the same arguments."""
        if proc.pid not in self._specs:
            raise ValueError(f"process {proc.pid} was not started by {self.name}")
        argv, kwargs = self._specs[proc.pid]
        self.kill(proc, sig)
        return self.exec(argv, **kwargs)

    @property
    def processes(self) -> list[subprocess.Popen]:
        """Every process started here through exec(), running or not."""
        return list(self._procs)

    def _kill_all(self) -> list[str]:
        problems = []
        for proc in self._procs:
            if kill_group(proc, signal.SIGKILL, timeout=5.0) is None:
                problems.append(f"{self.name}: pid {proc.pid} survived SIGKILL")
            for pipe in (proc.stdin, proc.stdout, proc.stderr):
                if pipe is not None:
                    pipe.close()
        return problems

    # -- faults -------------------------------------------------------------------------

    def set_loss(
        self,
        percent: float,
        *,
        direction: Direction = "both",
        peers: Iterable["Host | str"] | None = None,
    ) -> None:
        """Drop `percent` % of the packets on this host's link, at random (0 clears).

        "in" is traffic arriving at the host, "out" traffic it sends; "both" applies
        `percent` to each (so a round trip is lost with 1-(1-p)^2). With `peers`, only
        IPv4 traffic to/from those hosts is affected. Packets are dropped on arrival off the
        wire, so senders see no error (see faults.py).
        """
        permille = round(percent * 10)
        addrs = None if peers is None else [p.ip if isinstance(p, Host) else p for p in peers]
        if direction in ("both", "in"):
            match = "" if addrs is None else "ip saddr { " + ", ".join(addrs) + " }"
            nft(self.ns, faults.loss_script("loss_in", self.ifname, permille, match))
        if direction in ("both", "out"):
            match = "" if addrs is None else "ip daddr { " + ", ".join(addrs) + " }"
            nft(self.rig.bridge_ns, faults.loss_script(f"loss_{self.name}", self.port, permille, match))

    def set_rate(self, kbit: int | None, *, direction: Direction = "both", burst_bytes: int | None = None) -> None:
        """Limit this host's link to `kbit` kbit/s with a tbf qdisc (None removes the limit)."""
        targets = []
        if direction in ("both", "out"):
            targets.append((self.ns, self.ifname))
        if direction in ("both", "in"):
            targets.append((self.rig.bridge_ns, self.port))
        for ns, dev in targets:
            if kbit is None:
                res = sh(["ip", "netns", "exec", ns, *faults.tbf_clear_argv(dev)], check=False)
                benign = ("No such file", "Cannot find", "handle of zero")  # no qdisc to remove
                if res.returncode != 0 and not any(b in res.stderr for b in benign):
                    raise RigError(f"clearing rate on {dev}: {res.stderr.strip()}")
            else:
                sh(["ip", "netns", "exec", ns, *faults.tbf_argv(dev, kbit, burst_bytes)])

    def link_down(self, *, mode: Literal["carrier", "admin"] = "carrier") -> None:
        """Take this host's link down.

        "carrier" (default) is a pulled cable: the bridge end goes down, the host keeps
        its address and routes, its packets vanish silently and connects time out.
        "admin" is `ip link set eth0 down` on the host: its routes go and sends fail at
        once with ENETUNREACH.
        """
        if mode == "carrier":
            sh(["ip", "-n", self.rig.bridge_ns, "link", "set", self.port, "down"])
        elif mode == "admin":
            sh(["ip", "-n", self.ns, "link", "set", self.ifname, "down"])
        else:
            raise ValueError(f"unknown mode {mode!r}")

    def link_up(self) -> None:
        """Bring this host's link back (either mode) and restore its default route."""
        sh(["ip", "-n", self.rig.bridge_ns, "link", "set", self.port, "up"])
        sh(["ip", "-n", self.ns, "link", "set", self.ifname, "up"])
        sh(["ip", "-n", self.ns, "route", "replace", "default", "dev", self.ifname])

    def clear_faults(self) -> None:
        """Loss 0, no rate limit, link up."""
        self.set_loss(0)
        self.set_rate(None)
        self.link_up()

    # -- impairment relay ---------------------------------------------------------------

    def start_relay(
        self,
        target: "tuple[str, int] | tuple[Host, int]",
        *,
        port: int = 0,
        delay_ms: float = 0.0,
        jitter_ms: float = 0.0,
        up: Impairment | None = None,
        down: Impairment | None = None,
        seed: int | None = None,
        ready_timeout: float = 10.0,
    ) -> RelayHandle:
        """Start a TCP impairment relay listening on this host's address.

        Connections to the returned `address` are forwarded to `target` with `delay_ms`
        +- `jitter_ms` (uniform) added to each chunk, per direction ("up" is towards the
        target, "down" back); `up`/`down` override one direction. Byte order is kept.
        """
        thost, tport = target
        tip = thost.ip if isinstance(thost, Host) else thost
        up = up or Impairment(delay_ms, jitter_ms)
        down = down or Impairment(delay_ms, jitter_ms)
        argv = [
            PYTHON, RELAY,
            "--listen", f"{self.ip}:{port}",
            "--target", f"{tip}:{tport}",
            "--up-delay-ms", str(up.delay_ms), "--up-jitter-ms", str(up.jitter_ms),
            "--down-delay-ms", str(down.delay_ms), "--down-jitter-ms", str(down.jitter_ms),
        ]
        if seed is not None:
            argv += ["--seed", str(seed)]
        proc = self.exec(argv, stdout=subprocess.PIPE, text=True)
        try:
            line = read_line(proc, ready_timeout)
        except (TimeoutError, EOFError) as exc:
            self.kill(proc)
            raise RigError(f"relay on {self.name} did not start: {exc}") from exc
        word, addr = line.split()
        if word != "ready":
            self.kill(proc)
            raise RigError(f"relay on {self.name}: unexpected output {line!r}")
        ip, p = addr.rsplit(":", 1)
        return RelayHandle(self, proc, (ip, int(p)))


def parse_result(stdout: str, returncode: int, stderr: str = "") -> dict[str, Any]:
    """The JSON object a tool printed on its last non-empty line, plus its exit code."""
    lines = [ln for ln in stdout.splitlines() if ln.strip()]
    if not lines:
        raise RigError(f"tool printed nothing (exit {returncode}): {stderr.strip()}")
    try:
        result = json.loads(lines[-1])
    except json.JSONDecodeError as exc:
        raise RigError(f"tool output is not JSON: {lines[-1]!r} ({stderr.strip()})") from exc
    result["returncode"] = returncode
    return result


class Rig:
    """N hosts on a bridge, each in its own network namespace. Use as a context manager.

    `with Rig(4) as rig: rig[0].exec([...])`. Leaving the block (also on an exception,
    Ctrl-C, SIGTERM or normal interpreter exit) kills every process the rig started and
    deletes its namespaces and links.
    """

    def __init__(self, n_hosts: int, subnet: str = "10.77.0.0/24", *, prefix: str | None = None) -> None:
        self.network = ipaddress.IPv4Network(subnet)
        if n_hosts < 1:
            raise ValueError("a rig needs at least one host")
        if n_hosts > self.network.num_addresses - 2:
            raise ValueError(f"{subnet} has no room for {n_hosts} hosts")
        self.n_hosts = n_hosts
        self.manual = prefix is not None
        self.prefix = prefix or lifecycle.new_prefix()
        self.bridge_ns = f"{self.prefix}-br"
        addrs = self.network.hosts()
        self.hosts = [Host(self, i, f"{self.prefix}-h{i}", str(next(addrs))) for i in range(n_hosts)]
        self._created: list[str] = []
        self.is_up = False

    # -- life cycle ---------------------------------------------------------------------

    def up(self) -> "Rig":
        """Create the namespaces, bridge and links. Cleans leftovers of dead runs first."""
        if self.is_up:
            return self
        lifecycle.cleanup_stale()
        if not self.manual:
            lifecycle.register(self)
        self.is_up = True
        try:
            self._build()
        except BaseException:
            self.down()
            raise
        return self

    def _add_ns(self, name: str) -> None:
        sh(["ip", "netns", "add", name])
        self._created.append(name)

    def _build(self) -> None:
        plen = self.network.prefixlen
        self._add_ns(self.bridge_ns)
        br = [
            "link set lo up",
            "link add br0 type bridge stp_state 0 forward_delay 0 mcast_snooping 0",
            "link set br0 up",
        ]
        sh(["ip", "-n", self.bridge_ns, "-batch", "-"], input="\n".join(br) + "\n")
        for h in self.hosts:
            self._add_ns(h.ns)
            sh(["ip", "-n", self.bridge_ns, "link", "add", h.port, "type", "veth",
                "peer", "name", h.ifname, "netns", h.ns])
            sh(["ip", "-n", self.bridge_ns, "link", "set", h.port, "master", "br0", "up"])
            cmds = [
                "link set lo up",
                f"addr add {h.ip}/{plen} dev {h.ifname}",
                f"link set {h.ifname} up",
                # mDNS needs a route: without one, multicast sends fail with ENETUNREACH.
                f"route add default dev {h.ifname}",
            ]
            sh(["ip", "-n", h.ns, "-batch", "-"], input="\n".join(cmds) + "\n")

    def down(self) -> None:
        """Kill every process the rig started, delete its namespaces (and so its links).

        Idempotent. Does everything it can, then raises RigError listing what failed.
        """
        if not self.is_up:
            return
        problems: list[str] = []
        for h in self.hosts:
            problems += h._kill_all()
        problems += lifecycle.destroy_namespaces(list(reversed(self._created)))
        self._created.clear()
        self.is_up = False
        lifecycle.unregister(self)
        if problems:
            raise RigError("teardown: " + "; ".join(problems))

    def __enter__(self) -> "Rig":
        return self.up()

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        try:
            self.down()
        except RigError:
            if exc_type is None:
                raise  # otherwise the test's own error is the one to see

    # -- access -------------------------------------------------------------------------

    def __getitem__(self, i: int) -> Host:
        return self.hosts[i]

    def __iter__(self) -> Iterator[Host]:
        return iter(self.hosts)

    def __len__(self) -> int:
        return len(self.hosts)

    @property
    def namespaces(self) -> list[str]:
        return [self.bridge_ns, *(h.ns for h in self.hosts)]

    def processes(self) -> list[subprocess.Popen]:
        return [p for h in self.hosts for p in h.processes]

    def _host(self, h: "Host | int") -> Host:
        return self.hosts[h] if isinstance(h, int) else h

    # -- fleet-wide faults --------------------------------------------------------------

    def partition(self, *groups: Iterable["Host | int"]) -> None:
        """Cut all traffic between hosts of different groups (e.g. two halves).

        Hosts in no group still reach everyone. Replaces any earlier partition.
        """
        if len(groups) < 2:
            raise ValueError("a partition needs at least two groups")
        ports = [[self._host(h).port for h in g] for g in groups]
        seen = [p for g in ports for p in g]
        if len(seen) != len(set(seen)):
            raise ValueError("a host is in more than one group")
        nft(self.bridge_ns, faults.partition_script(ports))

    def heal(self) -> None:
        """Remove the partition."""
        nft(self.bridge_ns, faults.partition_script([]))

    def reset_faults(self) -> None:
        """Heal, and clear loss, rate limits and link state on every host."""
        self.heal()
        for h in self.hosts:
            h.clear_faults()
