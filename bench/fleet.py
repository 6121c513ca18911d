"""Fleet benchmark: N `avi-agent run` processes, one per network namespace, shipped defaults.

For each N it prints: start-to-full-view (after the last of N nodes started 1 s apart),
connections per node, idle CPU % and RSS per node, idle bytes/s per node, log lines/min/node,
and for a 5 s talk by the last node: listeners that heard it (FFT of their WAVs) / N-1, frames
lost and late, mouth-to-ear p50/p99, the talker's CPU and upload, the whole fleet's upload
during the talk (airtime), and SIGTERM-to-exit with every node stopped at once.

    sudo .venv/bin/python bench/fleet.py                  # N = 10, 25, 50 (≈ 10 min)
    .venv/bin/python bench/fleet.py --sizes 10 --baseline # also N=10 with the old full-mesh settings
    git worktree add --detach /tmp/base COMMIT            # another commit's code as the baseline:
    .venv/bin/python bench/fleet.py --sizes 10 --baseline-code /tmp/base

Bounded in time (each N: N s of starts + 30 s + 20 s + 13 s + 20 s at most); the rig removes
every namespace and process it made, also on Ctrl-C. Needs root (namespaces).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.netrig.fleet import FleetResult, Schedule, run_fleet  # noqa: E402

# The settings of the full mesh this replaced (a baseline in the same run, at a small N).
BASELINE = {"mesh": {"max_peers": 32, "target_peers": 32}, "talk": {"relay_fanout": 32}}


def table(rows: list[tuple[str, FleetResult]]) -> str:
    cells = [{"run": name, **r.row()} for name, r in rows]
    keys = list(cells[0])
    widths = {k: max(len(k), *(len(c[k]) for c in cells)) for k in keys}
    lines = ["  ".join(k.ljust(widths[k]) for k in keys)]
    lines += ["  ".join(c[k].ljust(widths[k]) for k in keys) for c in cells]
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", default="10,25,50", help="comma-separated fleet sizes")
    ap.add_argument("--baseline", action="store_true", help="also run the smallest N with full-mesh settings")
    ap.add_argument("--out", type=Path, default=None, help="keep logs/WAVs here (default: a temp dir)")
    ap.add_argument("--variant", action="append", default=[], metavar="SECTION.FIELD=VALUE",
                    help="also run each N with these settings changed (JSON values), e.g. mesh.gossip_heartbeat_s=3")
    ap.add_argument("--no-defaults", action="store_true", help="run the variant only")
    ap.add_argument("--baseline-code", type=Path, default=None, metavar="DIR",
                    help="also run the smallest N with the agent of this checkout (e.g. a worktree of "
                         "an older commit; same venv), before this tree's runs")
    args = ap.parse_args()
    sizes = [int(s) for s in args.sizes.split(",") if s]
    rows: list[tuple[str, FleetResult]] = []
    with tempfile.TemporaryDirectory(prefix="avi-fleet-") as tmp:
        out = args.out or Path(tmp)
        runs: list[tuple[str, int, dict | None]] = []
        if args.baseline_code is not None:
            if not (args.baseline_code / "agent" / "__main__.py").exists():
                ap.error(f"--baseline-code {args.baseline_code}: no agent package there")
            runs.append(("baseline-code", min(sizes), None))
        if args.baseline:
            runs.append(("baseline", min(sizes), BASELINE))
        variant: dict[str, dict[str, object]] = {}
        for item in args.variant:
            key, value = item.split("=", 1)
            section, fld = key.rsplit(".", 1)
            variant.setdefault(section, {})[fld] = json.loads(value)
        for n in sizes:
            if not args.no_defaults:
                runs.append(("defaults", n, None))
            if variant:
                runs.append(("variant", n, variant))
        for name, n, extra in runs:
            code = {"code": args.baseline_code.resolve()} if name == "baseline-code" else {}
            res = run_fleet(n, out / f"{name}-{n}", schedule=Schedule(), extra=extra,
                            log=lambda s: print(s, file=sys.stderr, flush=True), **code)
            rows.append((name, res))
            for note in res.notes:
                print(f"  {name} N={n}: {note}", file=sys.stderr)
            print(table(rows[-1:]), file=sys.stderr, flush=True)
    print(table(rows))
    print("goals at N=50: full view <= 10 s, 49/49 heard, p99 <= 300 ms, lost <= 1 %, "
          "idle <= 1 % CPU and <= 2 kB/s per node, <= 2 log lines/min/node, SIGTERM exit <= 2 s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
