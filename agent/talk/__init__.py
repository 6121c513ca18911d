"""Push-to-talk: capture -> encode -> send; receive -> jitter buffer -> decode -> mix -> play.

The service builds ``Talk(config, handle, source, sink, button, led)``, runs it with
``await nursery.start(talk.run)``, forwards mesh events to ``await talk.handle_event(event)``
and reads ``talk.stats()``. The pure parts (codec, jitter buffer, mixer, groups) have no I/O.
"""

from .codec import PCM_S16LE, Codec, CodecError, PcmS16le, make_codec, register_codec
from .engine import Talk, TalkStats
from .groups import TOPIC
from .jitter import Frame, Gap, JitterBuffer, JitterStats, Push
from .mixer import Mixer, mix

__all__ = ["Talk", "TalkStats", "TOPIC", "Codec", "CodecError", "PcmS16le", "PCM_S16LE", "make_codec",
           "register_codec", "JitterBuffer", "JitterStats", "Frame", "Gap", "Push", "Mixer", "mix"]
