"""avi-p2p for Python: the audio mesh layer of avi-agent.

A library with no dependency on the rest of the agent. No py-libp2p type crosses this surface:
peers are `PeerId` strings, streams are `StreamId` integers, addresses are multiaddr strings. (The
one exception: the key pair of the identity helpers, an opaque value to pass from `new_identity`
or `read_identity` to `write_identity` or `peer_id_of`.) This module is the whole surface: the
modules behind it are private.
"""

from typing import TYPE_CHECKING

from ._clock import now_us
from ._config import AviP2pConfig, is_peer_id
from ._errors import (AviP2pError, ConfigError, DialError, IdentityError, LimitError,
                     NotAllowedError, NotRunningError, ProtocolError, PubSubError,
                     StreamRejectedError, TimeoutError, UnknownPeerError, UnknownStreamError)
from ._events import (AudioData, AudioStreamAccepted, AudioStreamClosed, AudioStreamRequested,
                     Event, Message, PeerConnected, PeerDisconnected, PeerDiscovered, PeerId,
                     Started, StreamId)

if TYPE_CHECKING:
    from ._audio_session import StreamStats
    from ._handle import AviP2pHandle
    from ._identity import load_or_create_identity, new_identity, peer_id_of, read_identity, write_identity
    from ._node import AviP2p, NodeStats

# The node pulls in py-libp2p (about 1 s and 70 MB); config, events and errors do not, so
# `check-config` and other light users stay fast. The node's names, and the identity helpers
# (their key pair is py-libp2p's, to pass on as it is), load on first use.
_LAZY = {"AviP2p": "_node", "AviP2pHandle": "_handle", "NodeStats": "_node", "StreamStats": "_audio_session",
         "new_identity": "_identity", "read_identity": "_identity", "write_identity": "_identity",
         "load_or_create_identity": "_identity", "peer_id_of": "_identity"}


def __getattr__(name: str) -> object:
    if name in _LAZY:
        import importlib

        value = getattr(importlib.import_module(f"{__name__}.{_LAZY[name]}"), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

__all__ = [
    "AviP2p", "AviP2pConfig", "AviP2pHandle", "NodeStats", "StreamStats", "PeerId", "StreamId",
    "Event", "Started", "PeerDiscovered", "PeerConnected", "PeerDisconnected", "Message",
    "AudioStreamRequested", "AudioStreamAccepted", "AudioData", "AudioStreamClosed",
    "AviP2pError", "ConfigError", "IdentityError", "NotRunningError", "DialError",
    "UnknownPeerError", "UnknownStreamError", "LimitError", "NotAllowedError", "ProtocolError",
    "StreamRejectedError", "TimeoutError", "PubSubError", "now_us",
    "new_identity", "read_identity", "write_identity", "load_or_create_identity", "peer_id_of", "is_peer_id",
]
