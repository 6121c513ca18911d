"""A multi-host network test rig: network namespaces on a bridge, with fault injection.

    from tests.netrig import Rig
    with Rig(4) as rig:
        server = rig[1].exec(["python", "-m", "http.server", "--bind", rig[1].ip, "8000"])
        rig[0].set_loss(5)
        rig.partition([rig[0], rig[1]], [rig[2], rig[3]])
        ...

See rig.py for the topology, faults.py for where each fault lives, relay.py for delay and
jitter, fixtures.py for pytest. By hand: `python -m tests.netrig up 4` / `down`.
"""

from ._sh import RigError
from .availability import SKIP_PREFIX, netns_unavailable_reason
from .lifecycle import cleanup_stale, list_namespaces
from .procs import is_running, kill_group, read_line
from .relay import Delay, Relay
from .rig import Host, Impairment, RelayHandle, Rig, parse_result

__all__ = [
    "Delay",
    "Host",
    "Impairment",
    "Relay",
    "RelayHandle",
    "Rig",
    "RigError",
    "SKIP_PREFIX",
    "cleanup_stale",
    "is_running",
    "kill_group",
    "list_namespaces",
    "netns_unavailable_reason",
    "parse_result",
    "read_line",
]
