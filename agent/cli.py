"""``avi-agent``: run the node service, check a config file, or watch the fleet.

    avi-agent run [--config FILE]            the service systemd runs (Type=notify)
    avi-agent check-config [FILE | --config FILE]
                                             validate and print the effective config (exit 0 / 78)
    avi-agent status [--config FILE] [--json]
                                             one-shot query of the service running on this machine
    avi-agent monitor [--config FILE] [--dial ADDR] [--json] [--web [ADDR:PORT] [--lan]]
                      [--identify NODE] [--identity FILE] [--duration S]
                                             join the mesh listen-only and show the fleet live
    avi-agent selftest [--config FILE] [--seconds S]
                                             play a tone, record it back, report level/frequency/latency
    avi-agent simulate [--out DIR] [--duration S]
                                             the demo: 3 agents with fake hardware on this machine

Exit status: 0 = clean stop, 78 (EX_CONFIG) = configuration error (systemd does not restart),
2 = bad command line, 1 = anything else (selftest: the test failed; status: no service answered),
130 = interrupted (Ctrl-C).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from agent import __version__
from agent.config import DEFAULT_CONFIG_PATH, EX_CONFIG, AgentConfig, ConfigError, env_overrides, \
    load_config, parse_host_port, render_toml

__all__ = ["main", "build_parser"]

log = logging.getLogger("agent.cli")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="avi-agent", description="Raspberry Pi audio-mesh node.")
    p.add_argument("--version", action="version", version=f"avi-agent {__version__}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = sub.add_parser("run", help="run the node service (what systemd starts)")
    run.add_argument("--config", type=Path, default=None,
                     help=f"config file (default {DEFAULT_CONFIG_PATH}; missing default = built-in defaults)")

    chk = sub.add_parser("check-config", help="validate a config file and print the effective config")
    chk.add_argument("file", nargs="?", type=Path, default=None,
                     help=f"config file (default {DEFAULT_CONFIG_PATH})")
    chk.add_argument("--config", dest="config", type=Path, default=None, metavar="FILE",
                     help="the same as FILE (as for run and monitor)")

    st = sub.add_parser("status", help="one-shot status of the agent running on this machine")
    st.add_argument("--config", type=Path, default=None,
                    help="config file whose metrics.listen the agent serves /status on (default: as for run)")
    st.add_argument("--json", action="store_true", help="the full status as JSON")

    sft = sub.add_parser("selftest", help="play a tone and record it back; level, frequency, latency")
    sft.add_argument("--config", type=Path, default=None, help="config file (default: as for run)")
    sft.add_argument("--seconds", type=float, default=2.0, metavar="S", help="tone length (default 2 s)")
    sft.add_argument("--frequency", type=float, default=1000.0, metavar="HZ", help="tone (default 1000 Hz)")

    mon = sub.add_parser("monitor", help="watch the fleet's status live (listen-only mesh node)")
    mon.add_argument("--config", type=Path, default=None,
                     help="config file for mesh/status settings (default: as for run)")
    mon.add_argument("--dial", action="append", default=[], metavar="ADDR",
                     help="multiaddr of a node to connect to (/ip4/.../tcp/.../p2p/...); repeatable")
    mon.add_argument("--json", action="store_true", help="one JSON line per update instead of a table")
    mon.add_argument("--duration", type=float, default=None, metavar="S",
                     help="exit (status 0) after S seconds; default: run until Ctrl-C")
    mon.add_argument("--refresh", type=float, default=1.0, metavar="S",
                     help="table refresh / stale check period (default 1 s)")
    mon.add_argument("--web", nargs="?", const="127.0.0.1:8080", default=None, metavar="ADDR:PORT",
                     help="also serve a live web page of the fleet (default 127.0.0.1:8080)")
    mon.add_argument("--lan", action="store_true",
                     help="with --web: listen on every interface (0.0.0.0), so the LAN can open the page")
    mon.add_argument("--identify", action="append", default=[], metavar="NODE",
                     help="ask NODE (name or peer id) to chime and blink its LED; repeatable")
    mon.add_argument("--identity", type=Path, default=None, metavar="FILE",
                     help="the monitor's identity key (a fleet with allowed_peers must list its peer id)")
    sim = sub.add_parser("simulate", help="run a simulated 3-node mesh with fake hardware (the demo)")
    sim.add_argument("--out", type=Path, default=Path("simulation"),
                     help="directory for configs, identities, logs and recorded WAVs (default ./simulation)")
    sim.add_argument("--duration", type=float, default=16.0, metavar="S",
                     help="seconds to run (default 16: a talks twice, b once; at least 14)")
    return p


def _load(path: Path | None) -> AgentConfig | None:
    try:
        return load_config(path)
    except ConfigError as exc:
        where = path or DEFAULT_CONFIG_PATH
        print(f"avi-agent: configuration error ({len(exc.problems)} problem(s)) in {where}:",
              file=sys.stderr)
        for line in exc.problems:
            print(f"  {line}", file=sys.stderr)
        return None


def cmd_check_config(args: argparse.Namespace) -> int:
    if args.file is not None and args.config is not None and args.file != args.config:
        print(f"avi-agent: check-config: two files given ({args.file}, --config {args.config}); "
              "give one", file=sys.stderr)
        return 2
    path = args.file or args.config
    cfg = _load(path)
    if cfg is None:
        return EX_CONFIG
    problems = _identity_problems(cfg)
    if problems:
        print(f"avi-agent: configuration error ({len(problems)} problem(s)) in {path or DEFAULT_CONFIG_PATH}:",
              file=sys.stderr)
        for line in problems:
            print(f"  {line}", file=sys.stderr)
        return EX_CONFIG
    overrides = env_overrides()
    if overrides:
        print("# environment overrides applied: " + ", ".join(sorted(overrides)))
    sys.stdout.write(render_toml(cfg))
    if path is None and not DEFAULT_CONFIG_PATH.exists():
        print(f"avi-agent: {DEFAULT_CONFIG_PATH}: not found: built-in defaults (OK)", file=sys.stderr)
    else:
        print(f"avi-agent: {path or DEFAULT_CONFIG_PATH}: OK", file=sys.stderr)
    return 0


def _identity_problems(cfg: AgentConfig) -> list[str]:
    """The identity key ``run`` would load: readable, private, a valid Ed25519 key (a missing
    one is fine: run creates it)."""
    path = cfg.mesh.identity_path
    if path is None:
        return []
    if not path.exists():
        if not path.parent.is_dir():
            return [f"mesh.identity_path: {path}: the directory {path.parent} does not exist, "
                    "so run cannot create the key"]
        print(f"# mesh.identity_path: {path} does not exist yet: run creates it", file=sys.stderr)
        return []
    from agent.mesh import IdentityError, peer_id_of, read_identity

    try:
        kp = read_identity(path)
    except IdentityError as exc:
        return [f"mesh.identity_path: {exc}"]
    print(f"# identity: {path}: peer id {peer_id_of(kp)}", file=sys.stderr)
    return []


def cmd_status(args: argparse.Namespace) -> int:
    import json

    import trio

    from agent.httpd import http_get

    cfg = _load(args.config)
    if cfg is None:
        return EX_CONFIG
    addr = cfg.metrics.address
    if addr is None:
        print(f"avi-agent status: metrics.listen is off in {args.config or DEFAULT_CONFIG_PATH}; the status "
              "query uses that address (set it, e.g. \"127.0.0.1:9464\", and restart the agent)", file=sys.stderr)
        return 1
    host = "127.0.0.1" if addr[0] in ("0.0.0.0", "") else ("::1" if addr[0] == "::" else addr[0])
    try:
        code, body = trio.run(http_get, host, addr[1], "/status")
    except (OSError, trio.TooSlowError) as exc:
        print(f"avi-agent status: no agent answers on {host}:{addr[1]} ({getattr(exc, 'strerror', None) or exc}); "
              "is it running? (systemctl status avi-agent)", file=sys.stderr)
        return 1
    if code != 200:
        print(f"avi-agent status: {host}:{addr[1]} answered HTTP {code}: not an avi-agent?", file=sys.stderr)
        return 1
    try:
        data = json.loads(body)
    except ValueError:
        print(f"avi-agent status: {host}:{addr[1]} did not answer JSON: not an avi-agent?", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(data, indent=2))
        return 0
    print(format_status(data))
    return 0


def format_status(d: dict) -> str:
    """The /status JSON as a few readable lines."""
    m = d.get("status") or {}
    lines = [f"{d.get('node')}  {d.get('peer_id')}", f"  {d.get('summary')}"]
    b = d.get("backends") or {}
    lines.append(f"  devices: audio {b.get('audio')}, gpio {b.get('gpio')}; gains: capture "
                 f"{d.get('gains_db', {}).get('capture')} dB, playback {d.get('gains_db', {}).get('playback')} dB")
    if m:
        talk = "transmitting" if m.get("transmitting") else ("receiving" if m.get("receiving") else "idle")
        lines.append(f"  talk: group {m.get('group')}, {talk}; streams {m.get('streams_in')} in/"
                     f"{m.get('streams_out')} out; frames sent {m.get('frames_sent')}, received "
                     f"{m.get('frames_received')}, dropped {m.get('drops')}, late {m.get('frames_late')}")
        lat = (f"{m['latency_p50_ms']}/{m['latency_p99_ms']} ms" if m.get("latency_p50_ms") is not None else "-")
        lines.append(f"  levels (dBFS): mic {m.get('capture_rms_dbfs')} rms / {m.get('capture_peak_dbfs')} peak, "
                     f"{m.get('capture_clipped')} clipped; speaker {m.get('playback_rms_dbfs')} rms / "
                     f"{m.get('playback_peak_dbfs')} peak, {m.get('playback_clipped')} clipped; latency p50/p99 {lat}")
        lines.append(f"  fleet: {m.get('fleet')} other node(s) fresh; uptime {m.get('uptime_s')} s; "
                     f"temp {m.get('temp_c')} °C; version {m.get('version')}")
    for a in d.get("listen_addresses") or []:
        lines.append(f"  listening: {a}")
    if d.get("faults"):
        lines += [f"  FAULT {k}: {v}" for k, v in d["faults"].items()]
    if d.get("restart_needed"):
        lines.append("  restart needed for: " + ", ".join(d["restart_needed"]))
    return "\n".join(lines)


def cmd_selftest(args: argparse.Namespace) -> int:
    cfg = _load(args.config)
    if cfg is None:
        return EX_CONFIG
    import trio

    from agent.selftest import run_selftest

    return trio.run(run_selftest, cfg, args.seconds, args.frequency)


def cmd_run(args: argparse.Namespace) -> int:
    cfg = _load(args.config)
    if cfg is None:
        return EX_CONFIG
    import trio

    from agent.logs import setup_logging
    from agent.service import Service

    setup_logging(cfg.logging, cfg.node.name)
    overrides = env_overrides()
    if overrides:
        log.info("environment overrides: %s", ", ".join(f"{k}={v}" for k, v in sorted(overrides.items())))
    code = trio.run(Service(cfg, args.config).run)
    # The service has stopped cleanly (streams closed, peers told, STOPPING=1 sent). Tearing
    # down the interpreter after that (py-libp2p's and zeroconf's objects, thousands of modules)
    # took ≈ 3 s of CPU here, which made SIGTERM-to-exit slow in a busy fleet: skip it.
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def cmd_monitor(args: argparse.Namespace) -> int:
    cfg = _load(args.config)
    if cfg is None:
        return EX_CONFIG
    import trio

    from agent.logs import setup_logging
    from agent.monitor import Monitor, dial_address_problem

    bad = [why for why in map(dial_address_problem, args.dial) if why is not None]
    if bad:
        for why in bad:
            print(f"avi-agent monitor: --dial {why}", file=sys.stderr)
        return 2
    web = None
    if args.web is not None:
        try:
            web = parse_host_port(args.web)
        except ValueError as exc:
            print(f"avi-agent monitor: --web {exc}", file=sys.stderr)
            return 2
        if args.lan:
            web = ("0.0.0.0", web[1])
    elif args.lan:
        print("avi-agent monitor: --lan goes with --web", file=sys.stderr)
        return 2
    # The table owns stdout; log only warnings (to stderr) so it stays readable.
    setup_logging(cfg.logging.model_copy(update={"level": "WARNING", "journal": "never"}), cfg.node.name)
    mon = Monitor(cfg, dial=args.dial, json_lines=args.json, refresh_s=args.refresh,
                  duration_s=args.duration, web=web, identify=args.identify, identity_path=args.identity,
                  on_web_started=lambda url: print(f"avi-agent monitor: fleet page at {url}", file=sys.stderr))
    try:
        return trio.run(mon.run)
    except OSError as exc:
        print(f"avi-agent monitor: {exc.strerror or exc}", file=sys.stderr)
        return 1


def cmd_simulate(args: argparse.Namespace) -> int:
    from agent.simulate import min_duration, run

    need = min_duration()
    if not args.duration >= need:  # also NaN
        print(f"avi-agent simulate: --duration {args.duration:g} is too short: the scripted presses run "
              f"until {need - 1:g} s, so the run needs at least {need:g} s (default 16)", file=sys.stderr)
        return 2
    return run(args.out.resolve(), args.duration)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    commands = {"run": cmd_run, "check-config": cmd_check_config, "monitor": cmd_monitor,
                "simulate": cmd_simulate, "status": cmd_status, "selftest": cmd_selftest}
    try:
        return commands[args.command](args)
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
