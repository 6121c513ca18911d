"""avi-p2p for Python: the audio mesh layer of avi-agent.

A library with no dependency on the rest of the agent. No py-libp2p type crosses this surface:
peers are `PeerId` strings, streams are `StreamId` integers, addresses are multiaddr strings.
"""

from .audio_session import StreamStats
from .config import AviP2pConfig
from .errors import (AviP2pError, ConfigError, DialError, IdentityError, LimitError,
                     NotAllowedError, NotRunningError, ProtocolError, PubSubError,
                     StreamRejectedError, TimeoutError, UnknownPeerError, UnknownStreamError)
from .events import (AudioData, AudioStreamAccepted, AudioStreamClosed, AudioStreamRequested,
                     Event, Message, PeerConnected, PeerDisconnected, PeerDiscovered, PeerId,
                     Started, StreamId)
from .node import AviP2p, AviP2pHandle, NodeStats

__all__ = [
    "AviP2p", "AviP2pConfig", "AviP2pHandle", "NodeStats", "StreamStats", "PeerId", "StreamId",
    "Event", "Started", "PeerDiscovered", "PeerConnected", "PeerDisconnected", "Message",
    "AudioStreamRequested", "AudioStreamAccepted", "AudioData", "AudioStreamClosed",
    "AviP2pError", "ConfigError", "IdentityError", "NotRunningError", "DialError",
    "UnknownPeerError", "UnknownStreamError", "LimitError", "NotAllowedError", "ProtocolError",
    "StreamRejectedError", "TimeoutError", "PubSubError",
]
