"""Audio codecs behind one small interface, looked up by the frame header's codec id.

A codec instance is per stream and per direction: decoders may keep state between frames
(a compressed codec's predictor, the concealment's memory of the last frame), so the
receiver makes one decoder per incoming stream and the sender one encoder per talk.

Two codecs: PCM S16LE (id 1, always there: a node of the first version knows only this one)
and Opus (id 2, `opuslib-next` over the system's libopus; registered only when that loads).
Which one a stream uses is decided per receiving peer by `choose_codec` (pure): the talker
encodes with the best codec the receiver announced (see groups.py), and the receiver decodes by
the codec id each frame carries, so nothing else needs negotiating.

Encoders may pack several capture frames into one payload (Opus with 40 ms packets):
`encode` then returns None until a packet is complete. Decoders return whatever duration the
payload holds (a whole number of capture frames).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import numpy as np

from hw.audio.base import AudioFormat

__all__ = ["Codec", "CodecError", "PcmS16le", "PCM_S16LE", "OPUS", "OpusCodec", "OpusSettings",
           "register_codec", "make_codec", "known_codecs", "codec_names", "codec_ids",
           "choose_codec", "common_codec", "opus_available", "CODEC_NAMES"]

PCM_S16LE = 1  # the frame header's codec field for raw PCM S16_LE
OPUS = 2       # Opus (RFC 6716), one Opus packet per payload
CODEC_NAMES = {PCM_S16LE: "pcm", OPUS: "opus"}


class CodecError(ValueError):
    """A payload this codec cannot decode (wrong size, corrupt)."""


@runtime_checkable
class Codec(Protocol):
    """One direction of one stream: PCM frames (S16_LE, the stream's format) in and out."""

    @property
    def id(self) -> int:
        """The codec id carried in the frame header."""
        ...

    def encode(self, pcm: bytes) -> bytes | None:
        """One capture frame of PCM in; a payload out, or None while a packet is incomplete."""
        ...

    def decode(self, payload: bytes) -> bytes:
        """One payload to PCM (one or more frames); raises `CodecError` for a bad payload."""
        ...

    def frames_in(self, payload: bytes) -> int:
        """How many capture frames ``payload`` holds (without decoding it)."""
        ...

    def conceal(self, next_payload: bytes | None = None) -> bytes:
        """PCM standing in for a lost frame (called once per missing frame period).
        ``next_payload`` is the payload after the lost one when it is already here (a codec
        with forward error correction recovers the lost frame from it)."""
        ...


class PcmS16le:
    """Raw S16_LE PCM: the payload is the frame. Concealment repeats the last frame, faded:
    the first missing frame fades from full to half level, the second from half to nothing,
    and any further ones are silence (a repeated 20 ms buzz is worse than a short gap)."""

    id = PCM_S16LE
    FADE_FRAMES = 2

    def __init__(self, fmt: AudioFormat | None = None) -> None:
        self.format = fmt or AudioFormat()
        self._silence = bytes(self.format.frame_bytes)
        self._last: np.ndarray | None = None
        self._run = 0
        n = self.format.frame_samples
        # gain ramps per concealed frame, one gain per sample (repeated over channels)
        steps = np.linspace(1.0, 0.0, self.FADE_FRAMES * n + 1)
        self._ramps = [np.repeat(steps[i * n:(i + 1) * n], self.format.channels)
                       for i in range(self.FADE_FRAMES)]

    def encode(self, pcm: bytes) -> bytes | None:
        if len(pcm) != self.format.frame_bytes:
            raise CodecError(f"a frame is {self.format.frame_bytes} bytes, got {len(pcm)}")
        return bytes(pcm)

    def decode(self, payload: bytes) -> bytes:
        if len(payload) != self.format.frame_bytes:
            raise CodecError(f"PCM payload of {len(payload)} bytes, expected {self.format.frame_bytes}")
        self._last = np.frombuffer(payload, dtype="<i2")
        self._run = 0
        return bytes(payload)

    def frames_in(self, payload: bytes) -> int:
        return max(1, len(payload) // self.format.frame_bytes)

    def conceal(self, next_payload: bytes | None = None) -> bytes:
        run, self._run = self._run, self._run + 1
        if self._last is None or run >= self.FADE_FRAMES:
            return self._silence
        faded = self._last.astype(np.float32) * self._ramps[run]
        return np.rint(faded).astype("<i2").tobytes()


@dataclass(frozen=True)
class OpusSettings:
    """Encoder settings (the decoder needs none: Opus packets describe themselves)."""

    bitrate: int = 24_000       # bit/s
    frame_ms: int = 20          # one packet per frame_ms (20 or 40; 40 halves the per-packet framing cost)
    fec: bool = True            # in-band forward error correction (LBRR)
    loss_percent: int = 10      # expected loss the FEC is sized for
    complexity: int = 10        # 0-10; 10 costs 0.4 ms per 40 ms packet on this x86 (0.9 % of a core)

    def __post_init__(self) -> None:
        if not 6_000 <= self.bitrate <= 510_000:
            raise ValueError(f"Opus bitrate {self.bitrate} outside 6000-510000 bit/s")
        if self.frame_ms not in (10, 20, 40, 60):
            raise ValueError(f"Opus frame_ms {self.frame_ms}: expected 10, 20, 40 or 60")
        if not 0 <= self.loss_percent <= 100 or not 0 <= self.complexity <= 10:
            raise ValueError("Opus loss_percent must be 0-100 and complexity 0-10")


try:  # the binding raises a bare Exception when libopus is missing
    import opuslib_next as _opus
except Exception as _exc:  # pragma: no cover - depends on the machine
    _opus = None
    _OPUS_MISSING = f"Opus unavailable: {_exc}"
else:
    _OPUS_MISSING = ""


def opus_available() -> bool:
    return _opus is not None


class OpusCodec:
    """Opus over libopus. The encoder packs ``frame_ms`` of capture frames into one packet;
    the decoder conceals with Opus's own PLC, or with in-band FEC from the next packet when that
    is already here. Payload lengths are checked before libopus sees them (the binding does not)."""

    id = OPUS
    MAX_PACKET = 1275  # RFC 6716: one Opus frame is at most 1275 bytes
    MAX_PAYLOAD = 3 * 1275 + 7  # up to 60 ms, code 3 packet

    def __init__(self, fmt: AudioFormat | None = None, settings: OpusSettings | None = None) -> None:
        if _opus is None:
            raise CodecError(_OPUS_MISSING)
        self.format = fmt or AudioFormat()
        if self.format.rate not in (8000, 12000, 16000, 24000, 48000) or self.format.channels not in (1, 2):
            raise CodecError(f"Opus cannot code {self.format.rate} Hz x {self.format.channels} channels")
        self.settings = settings or OpusSettings()
        fr = self.format.frame_samples
        self._packet_frames = max(1, self.settings.frame_ms * self.format.rate // 1000 // fr)
        self._pending: list[bytes] = []
        self._enc = None
        self._dec = None
        self._last_samples = fr  # duration of the last decoded packet, for FEC of a lost one

    # -- sending
    def _encoder(self):  # type: ignore[no-untyped-def]
        if self._enc is None:
            s = self.settings
            enc = _opus.Encoder(self.format.rate, self.format.channels, "voip")
            enc.bitrate = s.bitrate
            enc.complexity = s.complexity
            enc.inband_fec = int(s.fec)
            enc.packet_loss_perc = s.loss_percent if s.fec else 0
            self._enc = enc
        return self._enc

    def encode(self, pcm: bytes) -> bytes | None:
        if len(pcm) != self.format.frame_bytes:
            raise CodecError(f"a frame is {self.format.frame_bytes} bytes, got {len(pcm)}")
        self._pending.append(bytes(pcm))
        if len(self._pending) < self._packet_frames:
            return None
        block = b"".join(self._pending)
        self._pending.clear()
        return bytes(self._encoder().encode(block, self._packet_frames * self.format.frame_samples))

    # -- receiving
    def _decoder(self):  # type: ignore[no-untyped-def]
        if self._dec is None:
            self._dec = _opus.Decoder(self.format.rate, self.format.channels)
        return self._dec

    def frames_in(self, payload: bytes) -> int:
        """Capture frames of audio in ``payload`` (at least 1; raises `CodecError` when bad)."""
        return max(1, self._samples_in(payload) // self.format.frame_samples)

    def _samples_in(self, payload: bytes) -> int:
        """Samples per channel in an Opus packet (RFC 6716 section 3.1), checked."""
        if not 1 <= len(payload) <= self.MAX_PAYLOAD:
            raise CodecError(f"Opus payload of {len(payload)} bytes (expected 1-{self.MAX_PAYLOAD})")
        toc = payload[0]
        config, code = toc >> 3, toc & 3
        if config < 12:      # SILK-only: 10, 20, 40, 60 ms
            per_ms = (10.0, 20.0, 40.0, 60.0)[config & 3]
        elif config < 16:    # hybrid: 10, 20 ms
            per_ms = (10.0, 20.0)[config & 1]
        else:                # CELT-only: 2.5, 5, 10, 20 ms
            per_ms = (2.5, 5.0, 10.0, 20.0)[config & 3]
        if code == 0:
            count = 1
        elif code in (1, 2):
            count = 2
        else:
            if len(payload) < 2:
                raise CodecError("Opus code-3 packet without a frame count")
            count = payload[1] & 0x3F
            if count == 0:
                raise CodecError("Opus packet with zero frames")
        ms = per_ms * count
        if ms > 120:
            raise CodecError(f"Opus packet of {ms} ms (at most 120)")
        return int(round(ms * self.format.rate / 1000))

    def decode(self, payload: bytes) -> bytes:
        n = self._samples_in(payload)
        try:
            pcm = self._decoder().decode(bytes(payload), n)
        except _opus.OpusError as exc:
            raise CodecError(f"Opus: {exc}") from None
        self._last_samples = n
        return bytes(pcm)

    def conceal(self, next_payload: bytes | None = None) -> bytes:
        fr = self.format.frame_samples
        if next_payload is not None and self.settings.fec:
            try:
                n = self._samples_in(next_payload)
                return bytes(self._decoder().decode(bytes(next_payload), n, True))
            except (CodecError, _opus.OpusError):
                pass  # fall back to PLC
        try:
            return bytes(self._decoder().decode(b"", fr))
        except _opus.OpusError:  # pragma: no cover - PLC does not fail on a valid state
            return bytes(self.format.frame_bytes)


CodecFactory = Callable[[AudioFormat], Codec]
_REGISTRY: dict[int, CodecFactory] = {PCM_S16LE: PcmS16le}
if _opus is not None:
    _REGISTRY[OPUS] = OpusCodec


def register_codec(codec_id: int, factory: CodecFactory) -> None:
    """Make `codec_id` decodable/encodable; `factory(format)` builds a fresh instance."""
    if not 0 <= codec_id <= 255:
        raise ValueError(f"codec id {codec_id} does not fit the header's u8")
    _REGISTRY[codec_id] = factory


def make_codec(codec_id: int, fmt: AudioFormat) -> Codec:
    """A new codec instance for `codec_id`; raises `CodecError` when none is registered."""
    try:
        factory = _REGISTRY[codec_id]
    except KeyError:
        raise CodecError(f"no codec registered for id {codec_id}") from None
    return factory(fmt)


def known_codecs() -> tuple[int, ...]:
    return tuple(sorted(_REGISTRY))


def codec_names(ids: tuple[int, ...] | list[int]) -> list[str]:
    """Names for announcing (unknown ids are left out)."""
    return [CODEC_NAMES[i] for i in ids if i in CODEC_NAMES]


def codec_ids(names: object) -> tuple[int, ...]:
    """The ids of the codec names a peer announced; unknown names are ignored (a newer peer may
    know more), and PCM is always there (every version decodes it)."""
    by_name = {v: k for k, v in CODEC_NAMES.items()}
    ids = [by_name[n] for n in names if isinstance(n, str) and n in by_name] if isinstance(names, list) else []
    return tuple(dict.fromkeys([*ids, PCM_S16LE]))


def choose_codec(preferred: tuple[int, ...] | list[int], peer_decodes: tuple[int, ...] | None,
                 local: tuple[int, ...] | None = None) -> int:
    """The codec to send a peer: the first of ``preferred`` that this node can encode
    (``local``, default: registered codecs) and the peer announced it decodes. A peer that
    announced no codecs (a node of the first version) gets PCM S16LE, which every node decodes."""
    have = set(known_codecs() if local is None else local)
    theirs = set(peer_decodes) if peer_decodes else {PCM_S16LE}
    for c in preferred:
        if c in have and c in theirs:
            return c
    return PCM_S16LE


def common_codec(preferred: tuple[int, ...] | list[int], peers_decode: list[tuple[int, ...] | None],
                 local: tuple[int, ...] | None = None) -> int:
    """The codec for frames that several peers will all decode (relayed frames are forwarded
    unchanged): the first of ``preferred`` that this node encodes and every peer decodes."""
    have = set(known_codecs() if local is None else local)
    for theirs in peers_decode:
        have &= set(theirs) if theirs else {PCM_S16LE}
    for c in preferred:
        if c in have:
            return c
    return PCM_S16LE
