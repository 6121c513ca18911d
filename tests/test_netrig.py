"""The network rig proves itself with real traffic between real namespaces (no libp2p).

Run: .venv/bin/python -m pytest tests/test_netrig.py -q
"""

from __future__ import annotations

import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from pathlib import Path

import pytest

from tests.netrig import (
    Delay,
    Host,
    Impairment,
    Relay,
    Rig,
    cleanup_stale,
    is_running,
    list_namespaces,
    parse_result,
    read_line,
)
from tests.netrig.marks import requires_netns, skip_unless_netns

pytest_plugins = ["tests.netrig.fixtures"]

REPO = Path(__file__).resolve().parents[1]
PY = sys.executable


# -- fixtures and helpers -------------------------------------------------------------------


@pytest.fixture(scope="module")
def rig4():
    skip_unless_netns()
    with Rig(4) as rig:
        yield rig


@pytest.fixture
def rig(rig4: Rig):
    """The shared 4-host rig; after each test: faults cleared, the test's processes killed."""
    before = {id(p) for p in rig4.processes()}
    yield rig4
    for h in rig4:
        for p in h.processes:
            if id(p) not in before:
                h.kill(p)
    rig4.reset_faults()


def serve(host: Host, tool: str, port: int) -> tuple[str, int]:
    """Start a tools.py server on host:port, wait until it listens; returns its address."""
    proc = host.tool(tool, "--bind", f"{host.ip}:{port}")
    line = read_line(proc, timeout=10)
    assert line == f"ready {host.ip}:{port}", line
    return host.ip, port


def ping_all(pairs: list[tuple[Host, Host]], timeout: float = 1.0) -> dict[tuple[str, str], bool]:
    """Ping every (src, dst) pair at once; True where dst answered."""
    procs = {(s.name, d.name): s.tool("ping", "--to", d.ip, "--count", "1", "--timeout", str(timeout))
             for s, d in pairs}
    out = {}
    for key, proc in procs.items():
        stdout, _ = proc.communicate(timeout=timeout + 15)
        out[key] = parse_result(stdout, proc.returncode)["received"] == 1
    return out


def pgroup_members(pgid: int) -> list[int]:
    """Pids whose process group is `pgid` (running or zombie)."""
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_bytes()
            except OSError:
                continue
            fields = stat[stat.rindex(b")") + 2 :].split()
            if int(fields[2]) == pgid:
                pids.append(int(entry))
    return pids


def root_links() -> set[str]:
    out = subprocess.run(["ip", "-o", "link", "show"], capture_output=True, text=True, check=True).stdout
    return {line.split(":")[1].strip().split("@")[0] for line in out.splitlines()}


# -- basic connectivity ---------------------------------------------------------------------


@requires_netns
def test_hosts_have_own_addresses_and_ping_each_other(rig: Rig) -> None:
    ips = [h.ip for h in rig]
    assert len(set(ips)) == 4 and all(ip.startswith("10.77.0.") for ip in ips)
    routes = rig[0].run(["ip", "route"]).stdout
    assert "default dev eth0" in routes
    pairs = [(s, d) for s in rig for d in rig if s is not d]
    result = ping_all(pairs)
    assert all(result.values()), result
    # each host has its own loopback
    assert rig[2].run_tool("ping", "--to", "127.0.0.1")["received"] == 1


@requires_netns
def test_subnet_exists_only_inside_the_rig(rig: Rig) -> None:
    assert "10.77.0." not in subprocess.run(["ip", "-4", "addr"], capture_output=True, text=True).stdout
    assert "10.77.0." not in subprocess.run(["ip", "route"], capture_output=True, text=True).stdout


@requires_netns
def test_tcp_echo_between_two_hosts(rig: Rig) -> None:
    server_code = textwrap.dedent(f"""
        import socket
        s = socket.create_server(("{rig[1].ip}", 7100))
        print("ready", flush=True)
        c, _ = s.accept()
        while data := c.recv(4096):
            c.sendall(data.upper())
    """)
    server = rig[1].exec([PY, "-c", server_code], stdout=subprocess.PIPE, text=True)
    assert read_line(server, timeout=10) == "ready"
    client_code = textwrap.dedent(f"""
        import socket
        c = socket.create_connection(("{rig[1].ip}", 7100), timeout=5)
        c.sendall(b"hello from h0")
        c.shutdown(socket.SHUT_WR)
        got = b""
        while chunk := c.recv(4096):
            got += chunk
        print(got.decode(), c.getsockname()[0])
    """)
    out = rig[0].run([PY, "-c", client_code], timeout=15).stdout.split()
    assert out == ["HELLO", "FROM", "H0", rig[0].ip]
    assert server.wait(timeout=5) == 0


# -- faults ---------------------------------------------------------------------------------


def udp_burst(src: Host, dst: Host, port: int, count: int = 1000) -> tuple[dict, dict]:
    # The receiver stops once the burst has been silent for --idle s. The sender pauses 2 ms
    # every 50 datagrams, so 2 s of silence means it is done, even if a busy machine
    # deschedules it for a while mid-burst (0.7 s was the whole margin before).
    recv = dst.tool("udp-recv", "--bind", f"{dst.ip}:{port}", "--idle", "2.0")
    assert read_line(recv, timeout=10).startswith("ready")
    sent = src.run_tool("udp-send", "--to", f"{dst.ip}:{port}", "--count", str(count))
    stdout, _ = recv.communicate(timeout=20)
    return sent, parse_result(stdout, recv.returncode)


@requires_netns
def test_random_loss_drops_about_that_share(rig: Rig) -> None:
    src, dst = rig[0], rig[1]
    sent, got = udp_burst(src, dst, 7200)
    assert sent == {"sent": 1000, "errors": 0, "returncode": 0}
    assert got["received"] == 1000, "no loss configured, none expected"

    dst.set_loss(30)  # arriving at dst
    sent, got = udp_burst(src, dst, 7201)
    assert sent["errors"] == 0, "loss is on the wire: the sender sees no error"
    print(f"30% loss in: {got['received']}/1000 received")
    assert 550 <= got["received"] <= 850, got

    dst.set_loss(0)
    src.set_loss(30, direction="out")  # leaving src
    sent, got = udp_burst(src, dst, 7202)
    assert sent["errors"] == 0
    print(f"30% loss out: {got['received']}/1000 received")
    assert 550 <= got["received"] <= 850, got

    src.set_loss(0)
    sent, got = udp_burst(src, dst, 7203)
    assert got["received"] == 1000


@requires_netns
def test_loss_can_target_one_peer(rig: Rig) -> None:
    rig[1].set_loss(100, peers=[rig[0]])
    result = ping_all([(rig[0], rig[1]), (rig[2], rig[1])])
    assert result == {("h0", "h1"): False, ("h2", "h1"): True}


@requires_netns
def test_rate_limit_slows_a_bulk_transfer(rig: Rig) -> None:
    addr = serve(rig[1], "tcp-sink", 7300)
    nbytes = str(200_000)
    fast = rig[0].run_tool("tcp-send", "--to", f"{addr[0]}:{addr[1]}", "--bytes", nbytes)
    rig[0].set_rate(1000)  # 1 Mbit/s: 200 kB takes ~1.6 s
    slow = rig[0].run_tool("tcp-send", "--to", f"{addr[0]}:{addr[1]}", "--bytes", nbytes)
    print(f"200 kB: {fast['seconds']:.3f} s unlimited, {slow['seconds']:.3f} s at 1000 kbit")
    assert slow["seconds"] >= 1.0
    assert slow["seconds"] > 4 * fast["seconds"]
    rig[0].set_rate(None)
    again = rig[0].run_tool("tcp-send", "--to", f"{addr[0]}:{addr[1]}", "--bytes", nbytes)
    assert again["seconds"] < slow["seconds"] / 2


def probe_until(src: Host, addr: tuple[str, int], want: bool, tries: int = 10) -> dict:
    """Probe a TCP connect up to `tries` times (1 s timeout each) until it matches `want`."""
    for _ in range(tries):
        r = src.run_tool("tcp-probe", "--to", f"{addr[0]}:{addr[1]}", "--timeout", "1")
        if r["connected"] == want:
            return r
        time.sleep(0.2)
    return r


@requires_netns
def test_link_down_fails_connects_and_link_up_restores(rig: Rig) -> None:
    addr = serve(rig[1], "tcp-echo", 7400)
    assert probe_until(rig[0], addr, True)["connected"]

    rig[1].link_down()  # cable pulled at the switch: connects time out
    r = rig[0].run_tool("tcp-probe", "--to", f"{addr[0]}:{addr[1]}", "--timeout", "1")
    assert not r["connected"] and "timed out" in r["error"], r
    rig[1].link_up()
    assert probe_until(rig[0], addr, True)["connected"]

    rig[0].link_down(mode="admin")  # interface down on the host: no route, fails at once
    r = rig[0].run_tool("tcp-probe", "--to", f"{addr[0]}:{addr[1]}", "--timeout", "1")
    assert not r["connected"] and "unreachable" in r["error"].lower(), r
    rig[0].link_up()
    assert probe_until(rig[0], addr, True)["connected"]


@requires_netns
def test_partition_blocks_across_halves_only_and_heals(rig: Rig) -> None:
    h0, h1, h2, h3 = rig
    rig.partition([h0, h1], [h2, h3])
    result = ping_all([(h0, h1), (h2, h3), (h0, h2), (h1, h3), (h3, h0)])
    assert result == {("h0", "h1"): True, ("h2", "h3"): True,
                      ("h0", "h2"): False, ("h1", "h3"): False, ("h3", "h0"): False}
    rig.heal()
    for _ in range(3):  # neighbour entries may need a moment after the cut
        result = ping_all([(h0, h2), (h1, h3), (h3, h0)])
        if all(result.values()):
            break
    assert all(result.values()), result


@requires_netns
def test_process_killed_and_restarted(rig: Rig) -> None:
    server = rig[1].tool("tcp-echo", "--bind", f"{rig[1].ip}:7450")
    assert read_line(server, timeout=10).startswith("ready")
    addr = (rig[1].ip, 7450)
    assert probe_until(rig[0], addr, True)["connected"]
    assert rig[1].kill(server) == -signal.SIGKILL
    r = rig[0].run_tool("tcp-probe", "--to", f"{addr[0]}:{addr[1]}", "--timeout", "1")
    assert not r["connected"] and "refused" in r["error"].lower(), r
    again = rig[1].restart(server)
    assert again.pid != server.pid
    assert read_line(again, timeout=10).startswith("ready")
    assert probe_until(rig[0], addr, True)["connected"]


def test_two_rigs_with_one_subnet_do_not_collide(netrig) -> None:
    """Parallel runs may use the same subnet: each rig's addresses live in its own namespaces."""
    a, b = netrig(2), netrig(2)
    assert a.prefix != b.prefix and not set(a.namespaces) & set(b.namespaces)
    assert a[1].ip == b[1].ip
    serve(b[1], "tcp-echo", 7600)  # only rig b has a listener on 10.77.0.2:7600
    r_b = b[0].run_tool("tcp-probe", "--to", f"{b[1].ip}:7600", "--timeout", "2")
    r_a = a[0].run_tool("tcp-probe", "--to", f"{a[1].ip}:7600", "--timeout", "2")
    assert r_b["connected"]
    assert not r_a["connected"] and "refused" in r_a["error"].lower()


# -- delay relay ----------------------------------------------------------------------------


@requires_netns
def test_relay_adds_delay_and_keeps_the_stream_intact(rig: Rig) -> None:
    echo = serve(rig[1], "tcp-echo", 7500)
    relay = rig[2].start_relay(echo, delay_ms=40, jitter_ms=10, seed=7)
    to_relay = f"{relay.address[0]}:{relay.address[1]}"
    direct = rig[0].run_tool("tcp-rtt", "--to", f"{echo[0]}:{echo[1]}", "--count", "10")
    via = rig[0].run_tool("tcp-rtt", "--to", to_relay, "--count", "10")
    d, v = statistics.median(direct["rtt_ms"]), statistics.median(via["rtt_ms"])
    print(f"RTT median direct {d:.2f} ms, through 40+-10 ms relay {v:.1f} ms")
    assert v - d >= 60, (d, v)  # 2 x (40 - 10) at the least
    assert v < 1000
    rt = rig[0].run_tool("tcp-roundtrip", "--to", to_relay, "--bytes", str(1 << 20))
    assert rt["ok"] and rt["received"] == 1 << 20, rt

    one_way = rig[3].start_relay(echo, up=Impairment(0, 0), down=Impairment(50, 0))
    r = rig[0].run_tool("tcp-rtt", "--to", f"{one_way.address[0]}:{one_way.address[1]}", "--count", "5")
    assert 45 <= statistics.median(r["rtt_ms"]) < 500, r


def _echo_server(sock: socket.socket, stop: threading.Event) -> None:
    sock.settimeout(0.2)
    while not stop.is_set():
        try:
            conn, _ = sock.accept()
        except OSError:
            continue
        with conn:
            conn.settimeout(10)
            while data := conn.recv(65536):
                conn.sendall(data)


def test_relay_jitter_never_reorders_bytes() -> None:
    """In-process on 127.0.0.1 (no namespace needed): heavy jitter, many small writes."""
    server = socket.create_server(("127.0.0.1", 0))
    stop = threading.Event()
    t = threading.Thread(target=_echo_server, args=(server, stop), daemon=True)
    t.start()
    relay = Relay(("127.0.0.1", 0), server.getsockname(), Delay(20, 20), Delay(20, 20), seed=3).start()
    try:
        c = socket.create_connection(relay.address, timeout=10)
        c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        want = b"".join(i.to_bytes(4, "big") for i in range(2000))
        for i in range(0, len(want), 40):
            c.sendall(want[i : i + 40])
            if i % 800 == 0:
                time.sleep(0.002)
        c.shutdown(socket.SHUT_WR)
        got = bytearray()
        while chunk := c.recv(65536):
            got += chunk
        assert bytes(got) == want
    finally:
        relay.close()
        stop.set()
        t.join(5)
        server.close()


def test_relay_passes_a_reset_through() -> None:
    server = socket.create_server(("127.0.0.1", 0))
    relay = Relay(("127.0.0.1", 0), server.getsockname(), Delay(5, 0), Delay(5, 0)).start()
    try:
        c = socket.create_connection(relay.address, timeout=5)
        conn, _ = server.accept()
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, (1).to_bytes(4, "little") * 2)
        conn.close()  # RST towards the relay
        c.settimeout(5)
        try:
            data = c.recv(100)
        except ConnectionResetError:
            data = None
        assert data in (None, b""), "the client must see the far end go away"
    finally:
        relay.close()
        server.close()


# -- multicast: the mDNS path ---------------------------------------------------------------


@requires_netns
def test_multicast_reaches_other_hosts_like_mdns(rig: Rig) -> None:
    receivers = [h.tool("mcast-recv", "--iface-ip", h.ip, "--count", "1", "--timeout", "5") for h in rig[1:3]]
    for r in receivers:
        assert read_line(r, timeout=10) == "ready 224.0.0.251:5353"
    sent = rig[0].run_tool("mcast-send", "--iface-ip", rig[0].ip, "--count", "10", "--message", "hello-mdns")
    assert sent["sent"] == 10
    for r in receivers:
        stdout, _ = r.communicate(timeout=15)
        res = parse_result(stdout, r.returncode)
        assert res["senders"] == [rig[0].ip]
        assert res["messages"][0].startswith("hello-mdns")


# -- teardown -------------------------------------------------------------------------------


@requires_netns
def test_teardown_leaves_no_namespace_link_or_process() -> None:
    links_before = root_links()
    with Rig(2) as rig:
        names = rig.namespaces
        assert set(names) <= set(list_namespaces())
        procs = [h.exec(["sh", "-c", "sleep 60 & sleep 60 & wait"]) for h in rig]
        relay = rig[0].start_relay((rig[1].ip, 9))
        time.sleep(0.3)
        pids = [pid for p in [*procs, relay.proc] for pid in pgroup_members(p.pid)]
        assert len(pids) >= 7  # 2 x (sh + 2 sleeps) + the relay
        assert root_links() == links_before, "the rig made links outside its namespaces"
    assert not set(names) & set(list_namespaces())
    alive = [p for p in pids if is_running(p)]
    assert alive == []
    assert root_links() == links_before


@requires_netns
def test_teardown_happens_when_the_test_body_raises() -> None:
    with pytest.raises(ZeroDivisionError):
        with Rig(1) as rig:
            names = rig.namespaces
            proc = rig[0].exec(["sleep", "60"])
            1 / 0
    assert proc.poll() is not None
    assert not set(names) & set(list_namespaces())


CHILD = textwrap.dedent("""
    import json, subprocess, time
    from tests.netrig import Rig
    rig = Rig(2).up()
    p = rig[0].exec(["sleep", "60"])
    print(json.dumps({"names": rig.namespaces, "pid": p.pid}), flush=True)
    time.sleep(60)
""")


def _child_rig() -> tuple[subprocess.Popen, list[str], int]:
    child = subprocess.Popen([PY, "-c", CHILD], cwd=REPO, stdout=subprocess.PIPE, text=True)
    info = json.loads(read_line(child, timeout=20))
    return child, info["names"], info["pid"]


@requires_netns
def test_sigterm_tears_the_rig_down() -> None:
    child, names, pid = _child_rig()
    assert set(names) <= set(list_namespaces()) and is_running(pid)
    child.send_signal(signal.SIGTERM)
    assert child.wait(timeout=15) == -signal.SIGTERM
    assert not set(names) & set(list_namespaces())
    assert not is_running(pid)


@requires_netns
def test_cleanup_stale_removes_what_a_killed_run_left() -> None:
    child, names, pid = _child_rig()
    child.kill()  # SIGKILL: no handler runs, the rig is left behind
    child.wait(timeout=10)
    assert set(names) <= set(list_namespaces()) and is_running(pid)
    removed = cleanup_stale()
    assert set(names) <= set(removed)
    assert not set(names) & set(list_namespaces())
    assert not is_running(pid)


# -- skip reporting -------------------------------------------------------------------------

SKIPPING_TEST = textwrap.dedent("""
    import pytest
    from tests.netrig.marks import requires_netns
    pytest_plugins = ["tests.netrig.fixtures"]

    @requires_netns
    def test_needs_a_rig():
        raise AssertionError("must not run without namespaces")

    @pytest.mark.netns
    def test_marked(netrig):
        raise AssertionError("must not run without namespaces")

    def test_plain():
        pass
""")


@requires_netns
@pytest.mark.parametrize(
    ("how", "reason"),
    [("no-tools", "`nft` not found on PATH"), ("no-cap", "cannot create a network namespace")],
)
def test_unavailable_namespaces_skip_with_reason_and_count(how: str, reason: str) -> None:
    """Run a small test file in a child pytest where the rig cannot work, two ways:
    without nft on PATH, and as root without CAP_SYS_ADMIN (as in an unprivileged container)."""
    env = dict(os.environ, PYTHONPATH=str(REPO))
    prefix: list[str] = []
    if how == "no-tools":
        env["PATH"] = "/usr/bin"
        assert not Path("/usr/bin/nft").exists()
    else:
        prefix = ["setpriv", "--bounding-set", "-sys_admin", "--inh-caps", "-sys_admin", "--"]
    with tempfile.TemporaryDirectory() as d:
        Path(d, "test_skipping.py").write_text(SKIPPING_TEST)
        res = subprocess.run(
            [*prefix, PY, "-m", "pytest", "-p", "no:cacheprovider", "--rootdir", d, "-ra", d],
            cwd=d, env=env, capture_output=True, text=True, timeout=60,
        )
    out = res.stdout
    assert res.returncode == 0, out + res.stderr
    assert "1 passed, 2 skipped" in out, out
    assert f"netrig: 2 test(s) skipped because network namespaces are unavailable ({reason}" in out, out
