"""Drive a rig by hand.

    python -m tests.netrig up 4 [--subnet 10.77.0.0/24]   # build netrig-manual-*
    python -m tests.netrig status                          # list rig namespaces, owners
    python -m tests.netrig down                            # remove the manual rig
    python -m tests.netrig clean                           # remove leftovers of dead runs

Then e.g. `ip netns exec netrig-manual-h0 bash`. A manual rig outlives this command.
"""

from __future__ import annotations

import argparse
import sys

from . import lifecycle
from .rig import Rig


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m tests.netrig", description="network namespace test rig")
    sub = ap.add_subparsers(dest="command", required=True)
    p = sub.add_parser("up", help="build a rig that stays until `down`")
    p.add_argument("hosts", type=int)
    p.add_argument("--subnet", default="10.77.0.0/24")
    sub.add_parser("down", help="remove the manual rig and kill what runs in it")
    sub.add_parser("status", help="list rig namespaces")
    sub.add_parser("clean", help="remove rigs whose owning process is dead")
    a = ap.parse_args(argv)

    manual = [n for n in lifecycle.list_namespaces() if n.startswith(lifecycle.MANUAL_PREFIX + "-")]
    if a.command == "up":
        if manual:
            print(f"a manual rig is already up ({', '.join(manual)}): run `down` first", file=sys.stderr)
            return 1
        rig = Rig(a.hosts, a.subnet, prefix=lifecycle.MANUAL_PREFIX).up()
        print(f"bridge namespace {rig.bridge_ns} (br0, ports vh0..vh{len(rig) - 1})")
        for h in rig:
            print(f"{h.name}  {h.ip:<15}  ip netns exec {h.ns} bash")
        return 0
    if a.command == "down":
        problems = lifecycle.destroy_namespaces(manual)
        for p_ in problems:
            print(p_, file=sys.stderr)
        print(f"removed {len(manual)} namespace(s)")
        return 1 if problems else 0
    if a.command == "status":
        for n in lifecycle.list_namespaces():
            if n.startswith(lifecycle.PREFIX):
                pids = lifecycle.namespace_pids(n)
                if n.startswith(lifecycle.MANUAL_PREFIX):
                    state = "manual"
                else:
                    state = "owner alive" if lifecycle.owner_alive(n) else "STALE (owner dead)"
                print(f"{n}  {state}  processes: {len(pids)}")
        return 0
    if a.command == "clean":
        removed = lifecycle.cleanup_stale()
        print(f"removed {len(removed)} stale namespace(s)")
        return 0
    return 2


if __name__ == "__main__":
    sys.exit(main())
