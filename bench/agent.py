"""The agent as systemd sees it: process start -> READY=1, idle RSS and CPU, SIGTERM -> exit.

Starts ``python -m agent run`` (fake audio and GPIO, mDNS/DHT off, 127.0.0.1) with a notify
socket this script binds, ``--runs`` times. Each run: time from ``Popen`` to READY=1, then
``--idle`` seconds of idle (alone, or with a second agent connected when ``--pair``) to read RSS
and CPU from /proc, then SIGTERM and the time to exit. Goal: start -> READY under 3 s.

    /work/main/.venv/bin/python bench/agent.py [--runs 5] [--idle 10] [--pair]
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # the repository's agent package, not this file (bench/agent.py)

from agent.config import local_only, to_toml  # noqa: E402
TICK = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK  # utime + stime


def rss_mb(pid: int) -> float:
    return int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * PAGE / 2**20


def start_agent(tmp: Path, name: str, env_extra: dict[str, str]) -> tuple[subprocess.Popen[str], float, str]:
    """Start an agent; returns (process, seconds to READY=1, listen address)."""
    cfg = tmp / f"{name}.toml"
    cfg.write_text(to_toml(local_only(name, status={"interval_s": 5.0})))
    sock_path = tmp / f"{name}.sock"
    sock_path.unlink(missing_ok=True)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(sock_path))
    sock.settimeout(30)
    env = {k: v for k, v in os.environ.items() if not k.startswith("AVI_")}
    env.update(NOTIFY_SOCKET=str(sock_path), PYTHONUNBUFFERED="1", **env_extra)
    t0 = time.monotonic()
    proc = subprocess.Popen([sys.executable, "-m", "agent", "run", "--config", str(cfg)], cwd=ROOT, env=env,
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True)
    lines: list[str] = []

    def read() -> None:
        assert proc.stderr is not None
        for line in proc.stderr:
            lines.append(line)

    threading.Thread(target=read, daemon=True).start()
    try:
        while True:
            if sock.recv(4096) == b"READY=1":
                ready = time.monotonic() - t0
                break
    finally:
        sock.close()
    addr = ""
    for _ in range(50):
        m = next((re.search(r"mesh listening: (\S+)", ln) for ln in lines if "mesh listening" in ln), None)
        if m:
            addr = m.group(1)
            break
        time.sleep(0.05)
    return proc, ready, addr


def stop(proc: subprocess.Popen[str]) -> float:
    t0 = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        return float("inf")
    return time.monotonic() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--idle", type=float, default=10.0, help="seconds of idle measured per run")
    ap.add_argument("--pair", action="store_true", help="measure idle with a second agent connected")
    args = ap.parse_args()

    ready_s, rss, cpu, stop_s = [], [], [], []
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        for _ in range(args.runs):
            proc, ready, addr = start_agent(tmp, "bench-a", {})
            other = None
            try:
                if args.pair:
                    other, _, _ = start_agent(tmp, "bench-b", {"AVI_MESH__BOOTSTRAP_PEERS": addr})
                time.sleep(2.0)  # let start-up work (first publications, gossip mesh) settle
                c0, w0 = cpu_seconds(proc.pid), time.monotonic()
                time.sleep(args.idle)
                c1, w1 = cpu_seconds(proc.pid), time.monotonic()
                ready_s.append(ready)
                rss.append(rss_mb(proc.pid))
                cpu.append(100.0 * (c1 - c0) / (w1 - w0))
            finally:
                if other is not None:
                    stop(other)
                stop_s.append(stop(proc))

    def row(name: str, vals: list[float], unit: str, fmt: str = "{:.2f}") -> str:
        med = statistics.median(vals)
        return (f"| {name:<28} | {fmt.format(med):>8} | {fmt.format(min(vals)):>8} | "
                f"{fmt.format(max(vals)):>8} | {unit:<5} |")

    mode = "with 1 peer" if args.pair else "alone"
    print(f"avi-agent, {args.runs} runs, fake devices, idle {args.idle:g} s {mode}, {os.cpu_count()} CPUs")
    print("| measure                      |   median |      min |      max | unit  |")
    print("|------------------------------|----------|----------|----------|-------|")
    print(row("process start -> READY=1", ready_s, "s"))
    print(row("idle RSS", rss, "MiB", "{:.1f}"))
    print(row("idle CPU", cpu, "% core", "{:.2f}"))
    print(row("SIGTERM -> exit", stop_s, "s"))
    verdict = "meets" if statistics.median(ready_s) < 3.0 else "MISSES"
    print(f"start -> READY=1 goal < 3 s: {verdict}")


if __name__ == "__main__":
    main()
