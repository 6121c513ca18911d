"""Runnable examples of the mesh API, ports of avi-p2p's examples.

    python -m agent.mesh.examples.audio_chat --help
    python -m agent.mesh.examples.discovery_monitor --help
    python -m agent.mesh.examples.resilient_pubsub --help

Each prints ``listening: <multiaddr>`` first, so another process (or a test) can dial it, and
stops cleanly on Ctrl-C or SIGTERM. Like the rest of `agent.mesh`, they import nothing from
`hw` or the rest of `agent`.
"""
