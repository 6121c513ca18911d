"""Starting a node: a taken port is a clear DialError, not a node that listens nowhere."""

from __future__ import annotations

import socket

import pytest

from agent.mesh import AviP2p, DialError
from tests.mesh.meshutil import cfg


async def test_port_held_by_another_program_is_a_dial_error():
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        with pytest.raises(DialError, match=f"127.0.0.1:{port}.*in use"):
            async with AviP2p.start(cfg(listen_port=port)):
                pass


async def test_second_node_on_the_same_port_is_refused_not_sharing_it():
    # py-libp2p listens with SO_REUSEPORT: without our check both nodes would bind.
    async with AviP2p.start(cfg()) as (first, _):
        port = int(first.handle().listen_addresses()[0].split("/tcp/")[1].split("/")[0])
        with pytest.raises(DialError, match="in use"):
            async with AviP2p.start(cfg(listen_port=port)):
                pass
