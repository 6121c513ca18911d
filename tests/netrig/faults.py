"""nftables and tc text for the rig's faults (pure functions, no side effects).

Where each fault lives, and why:
- Loss is applied where a packet arrives off the wire: the netdev *ingress* hook of the
  host's `eth0` (traffic to the host) and of its bridge port `vhN` in the bridge namespace
  (traffic from the host). Dropping on the sending side instead is not wire loss: an
  `inet output` drop returns EPERM to a UDP sender (measured), and a netdev egress drop is
  reported to TCP as local congestion, which retransmits at once instead of after a
  timeout.
- A partition is a bridge-family forward filter in the bridge namespace: it cuts every
  frame (ARP, IPv4, IPv6, multicast) between the groups, as a split switch would.
- A rate limit is a tbf qdisc on the egress of `eth0` (from the host) and of `vhN`
  (to the host).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

LOSS_TABLE = "netrig_loss"
PARTITION_TABLE = "netrig_partition"


def _quote_set(items: Iterable[str]) -> str:
    return "{ " + ", ".join(f'"{i}"' for i in items) + " }"


def loss_script(chain: str, device: str, permille: int, match: str = "") -> str:
    """Replace the rules of ingress chain `chain` on `device` with random drop at `permille`/1000.

    `match` is an optional nft match (e.g. `ip saddr { 10.77.0.2 }`) limiting the loss
    to some traffic. permille 0 leaves the chain empty.
    """
    if not 0 <= permille <= 1000:
        raise ValueError(f"permille out of range: {permille}")
    lines = [
        f"add table netdev {LOSS_TABLE}",
        f"add chain netdev {LOSS_TABLE} {chain} "
        f'{{ type filter hook ingress device "{device}" priority 0; policy accept; }}',
        f"flush chain netdev {LOSS_TABLE} {chain}",
    ]
    if permille > 0:
        chance = "" if permille == 1000 else f"numgen random mod 1000 < {permille}"
        words = ["add rule netdev", LOSS_TABLE, chain, match, chance, "drop"]
        lines.append(" ".join(w for w in words if w))
    return "\n".join(lines) + "\n"


def partition_script(groups: Sequence[Sequence[str]]) -> str:
    """Replace the partition rules: drop every frame between ports of different groups.

    `groups` are lists of bridge port names. An empty `groups` heals.
    """
    lines = [
        f"add table bridge {PARTITION_TABLE}",
        f"add chain bridge {PARTITION_TABLE} cut "
        "{ type filter hook forward priority 0; policy accept; }",
        f"flush chain bridge {PARTITION_TABLE} cut",
    ]
    for i, a in enumerate(groups):
        for j, b in enumerate(groups):
            if i != j and a and b:
                lines.append(
                    f"add rule bridge {PARTITION_TABLE} cut "
                    f"iifname {_quote_set(a)} oifname {_quote_set(b)} drop"
                )
    return "\n".join(lines) + "\n"


def tbf_argv(device: str, kbit: int, burst_bytes: int | None = None) -> list[str]:
    """`tc` arguments that replace `device`'s root qdisc with a token bucket at `kbit`.

    The queue holds 200 ms at that rate but at least two 64 kB GSO bursts: a smaller
    queue drops most of every TSO burst, and TCP then stalls in timeout back-off (seen
    as a 30 s hang at 1 Mbit/s with a 31 kB queue).
    """
    if kbit <= 0:
        raise ValueError(f"rate must be positive, got {kbit} kbit")
    rate_bytes = kbit * 1000 // 8
    # At least a few full frames; otherwise about 20 ms worth of tokens.
    burst = burst_bytes or max(4 * 1514, rate_bytes // 50)
    limit = max(2 * 65536 + burst, rate_bytes // 5)
    return [
        "tc", "qdisc", "replace", "dev", device, "root",
        "tbf", "rate", f"{kbit}kbit", "burst", str(burst), "limit", str(limit),
    ]


def tbf_clear_argv(device: str) -> list[str]:
    return ["tc", "qdisc", "del", "dev", device, "root"]
