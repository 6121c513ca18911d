"""Can this machine run the rig? One probe per process, with a reason when it cannot."""

from __future__ import annotations

import functools
import os
import shutil

from . import lifecycle
from ._sh import RigError, sh

SKIP_PREFIX = "netrig: network namespaces unavailable"


@functools.cache
def netns_unavailable_reason() -> str | None:
    """None when the rig can run here, else why not (not root, a tool or kernel feature missing).

    Checks by doing: creates a throw-away namespace with a bridge, a veth pair, a netdev
    nftables table and a tbf qdisc, then deletes it.
    """
    if os.geteuid() != 0:
        return "not root (network namespaces need CAP_SYS_ADMIN)"
    for tool in ("ip", "nft", "tc"):
        if shutil.which(tool) is None:
            return f"`{tool}` not found on PATH"
    ns = lifecycle.new_prefix() + "-probe"
    try:
        sh(["ip", "netns", "add", ns])
    except RigError as exc:
        return f"cannot create a network namespace: {exc}"
    try:
        steps = [
            ["ip", "-n", ns, "link", "add", "b0", "type", "bridge"],
            ["ip", "-n", ns, "link", "add", "v0", "type", "veth", "peer", "name", "v1"],
            ["ip", "netns", "exec", ns, "nft", "add", "table", "netdev", "probe"],
            ["ip", "netns", "exec", ns, "tc", "qdisc", "add", "dev", "v0", "root",
             "tbf", "rate", "1mbit", "burst", "10k", "latency", "50ms"],
        ]
        for argv in steps:
            try:
                sh(argv)
            except RigError as exc:
                return f"kernel or tool refused: {exc}"
        return None
    finally:
        sh(["ip", "netns", "delete", ns], check=False)
