"""avi-agent: a Raspberry Pi audio-mesh node."""

__version__ = "0.1.0"
