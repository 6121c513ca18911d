"""Push-to-talk: capture -> encode -> send; receive -> adaptive playout -> mix -> play.

The service builds ``Talk(config, handle, source, sink, button, led)``, runs it with
``await nursery.start(talk.run)``, forwards mesh events to ``await talk.handle_event(event)``
and reads ``talk.stats()``: :class:`TalkLike` is that surface, :data:`TalkFactory` how the
service gets one (``Service(..., talk_class=Talk)``; a test hands a stand-in). The pure parts
(codecs and their negotiation, the adaptive playout with its delay estimator and
time-stretching, mixer, groups) have no I/O.
"""

from .codec import (OPUS, PCM_S16LE, Codec, CodecError, OpusCodec, OpusSettings, PcmS16le, choose_codec,
                    make_codec, register_codec)
from .engine import StreamStatus, Talk, TalkFactory, TalkLike, TalkStats
from .groups import TOPIC
from .mixer import Mixer, mix
from .playout import AdaptivePlayout, DelayEstimator, PlayoutStats, Pulled, Push

__all__ = ["Talk", "TalkLike", "TalkFactory", "TalkStats", "StreamStatus", "TOPIC", "Codec", "CodecError", "PcmS16le", "OpusCodec",
           "OpusSettings", "PCM_S16LE", "OPUS", "make_codec", "register_codec", "choose_codec",
           "AdaptivePlayout", "DelayEstimator", "PlayoutStats", "Pulled", "Push", "Mixer", "mix"]
