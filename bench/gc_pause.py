"""How long a full garbage collection stalls an agent process, with and without gc.freeze().

The agent's modules imported and an AviP2p node up (loopback only), then gc.collect() five times
before and after freezing the heap, as agent/service.py does once its first mesh node is up.
A stall of that length inside a talk is concealed by the listener's playout.

    .venv/bin/python bench/gc_pause.py
"""
from __future__ import annotations

import gc
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # 'agent' is the package, not bench/agent.py

import trio  # noqa: E402

import agent.service  # noqa: E402,F401
import agent.talk  # noqa: E402,F401
from agent.mesh import AviP2p, AviP2pConfig  # noqa: E402


def full_collection_ms(n: int = 5) -> tuple[float, float]:
    took = []
    for _ in range(n):
        t = time.perf_counter()
        gc.collect()
        took.append((time.perf_counter() - t) * 1e3)
    return min(took), max(took)


async def main() -> None:
    async with AviP2p.start(AviP2pConfig.local_only()):
        await trio.sleep(0.5)
        objects = len(gc.get_objects())
        lo, hi = full_collection_ms()
        gc.freeze()
        flo, fhi = full_collection_ms()
    print("| heap | tracked objects | full collection ms (min–max of 5) |")
    print("|---|---|---|")
    print(f"| not frozen (baseline) | {objects:,} | {lo:.1f}–{hi:.1f} |")
    print(f"| frozen | {gc.get_freeze_count():,} frozen | {flo:.2f}–{fhi:.2f} |")


if __name__ == "__main__":
    trio.run(main)
