"""``avi-agent``: run the node service, check a config file, or watch the fleet.

    avi-agent run [--config FILE]            the service systemd runs (Type=notify)
    avi-agent check-config [FILE]            validate and print the effective config (exit 0 / 78)
    avi-agent monitor [--config FILE] [--dial ADDR] [--json] [--duration S]
                                             join the mesh listen-only and show the fleet live
    avi-agent simulate [--out DIR] [--duration S]
                                             the demo: 3 agents with fake hardware on this machine

Exit status: 0 = clean stop, 78 (EX_CONFIG) = configuration error (systemd does not restart),
2 = bad command line, 1 = anything else.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from agent import __version__
from agent.config import DEFAULT_CONFIG_PATH, EX_CONFIG, AgentConfig, ConfigError, env_overrides, \
    load_config, render_toml

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
    sim = sub.add_parser("simulate", help="run a simulated 3-node mesh with fake hardware (the demo)")
    sim.add_argument("--out", type=Path, default=Path("simulation"),
                     help="directory for configs, identities, logs and recorded WAVs (default ./simulation)")
    sim.add_argument("--duration", type=float, default=16.0, metavar="S",
                     help="seconds to run (default 16: a talks twice, b once)")
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
    cfg = _load(args.file)
    if cfg is None:
        return EX_CONFIG
    overrides = env_overrides()
    if overrides:
        print("# environment overrides applied: " + ", ".join(sorted(overrides)))
    sys.stdout.write(render_toml(cfg))
    print(f"avi-agent: {args.file or DEFAULT_CONFIG_PATH}: OK", file=sys.stderr)
    return 0


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
    return trio.run(Service(cfg, args.config).run)


def cmd_monitor(args: argparse.Namespace) -> int:
    cfg = _load(args.config)
    if cfg is None:
        return EX_CONFIG
    import trio

    from agent.logs import setup_logging
    from agent.monitor import Monitor

    # The table owns stdout; log only warnings (to stderr) so it stays readable.
    setup_logging(cfg.logging.model_copy(update={"level": "WARNING", "journal": "never"}), cfg.node.name)
    mon = Monitor(cfg, dial=args.dial, json_lines=args.json, refresh_s=args.refresh,
                  duration_s=args.duration)
    return trio.run(mon.run)


def cmd_simulate(args: argparse.Namespace) -> int:
    from agent.simulate import run

    return run(args.out.resolve(), args.duration)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    commands = {"run": cmd_run, "check-config": cmd_check_config, "monitor": cmd_monitor,
                "simulate": cmd_simulate}
    try:
        return commands[args.command](args)
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
