"""The error hierarchy of the mesh layer: every handle call succeeds or raises one of these."""

from __future__ import annotations


class AviP2pError(Exception):
    """Base of every error the mesh layer raises."""


class ConfigError(AviP2pError):
    """The node's configuration is invalid (bad multiaddr, unusable identity file, ...)."""


class IdentityError(ConfigError):
    """The identity key file is unreadable, corrupt or readable by others."""


class NotRunningError(AviP2pError):
    """The node is not running (not started yet, or shut down)."""


class DialError(AviP2pError):
    """Connecting to a peer failed."""


class UnknownPeerError(AviP2pError):
    """The peer is not connected (or not known at all)."""


class UnknownStreamError(AviP2pError):
    """No audio stream with that id exists (any more)."""


class LimitError(AviP2pError):
    """A configured limit (max_peers, max_audio_streams, frame size) was reached."""


class NotAllowedError(AviP2pError):
    """The peer is not in `allowed_peers`."""


class ProtocolError(AviP2pError):
    """The remote side broke the audio protocol, or refused it."""


class StreamRejectedError(ProtocolError):
    """The remote side rejected an audio stream request; `reason` says why."""

    def __init__(self, reason: str) -> None:
        super().__init__(f"audio stream rejected: {reason}")
        self.reason = reason


class TimeoutError(AviP2pError):  # noqa: A001 - deliberate: agent.mesh.TimeoutError
    """An operation did not complete in time."""


class PubSubError(AviP2pError):
    """Subscribing or publishing failed."""
