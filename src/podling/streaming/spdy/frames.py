"""SPDY/3(.1) frames, sans-I/O: constants, frame objects, an encoder and an
incremental decoder, covering the subset moby/spdystream (the Kubernetes client)
uses. No flow control, no server push, no priorities.

Wire layout (big-endian): a control frame starts `1 | version(15) | type(16)`,
a DATA frame `0 | stream-id(31)`; both continue `flags(8) | length(24)` and
`length` payload bytes. Reserved top bits of ids are written 0 and masked on read.

The encoder owns the sending zlib context and the decoder the receiving one
(see headers.py), so each connection needs exactly one of each.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field

from podling.errors import InvalidArgument
from podling.streaming.spdy.headers import (
    HeaderCompressor,
    HeaderDecompressor,
    ProtocolError,
)

VERSION = 3

# control frame types
SYN_STREAM = 1
SYN_REPLY = 2
RST_STREAM = 3
SETTINGS = 4
PING = 6
GOAWAY = 7
HEADERS = 8
WINDOW_UPDATE = 9

# flags
FLAG_FIN = 0x01
FLAG_UNIDIRECTIONAL = 0x02  # SYN_STREAM only
FLAG_SETTINGS_CLEAR = 0x01  # SETTINGS only

# RST_STREAM status codes
PROTOCOL_ERROR = 1
INVALID_STREAM = 2
REFUSED_STREAM = 3
UNSUPPORTED_VERSION = 4
CANCEL = 5
INTERNAL_ERROR = 6
FLOW_CONTROL_ERROR = 7
STREAM_IN_USE = 8
STREAM_ALREADY_CLOSED = 9
INVALID_CREDENTIALS = 10
FRAME_TOO_LARGE = 11

# GOAWAY status codes
GOAWAY_OK = 0
GOAWAY_PROTOCOL_ERROR = 1
GOAWAY_INTERNAL_ERROR = 2

MAX_STREAM_ID = 0x7FFFFFFF
MAX_FRAME_LENGTH = 0xFFFFFF
# Control frames carry a few small fields or one compressed header block;
# refusing bigger ones bounds what a hostile peer makes us buffer.
MAX_CONTROL_LENGTH = 1 << 20
# A DATA frame longer than this is handed out in pieces of exactly this size (the
# last may be shorter), so the decoder never buffers a whole 16 MiB frame.
DATA_PIECE = 64 * 1024

_HEAD = struct.Struct(">IBBH")  # word0, flags, length high byte, length low 16 bits
_U32 = struct.Struct(">I")
_U32x2 = struct.Struct(">II")


@dataclass(frozen=True, slots=True)
class DataFrame:
    """DATA. The decoder may split one wire frame into several of these (FIN only on
    the last piece); the encoder writes one wire frame per object."""

    stream_id: int
    data: bytes = b""
    flags: int = 0

    @property
    def fin(self) -> bool:
        return bool(self.flags & FLAG_FIN)


@dataclass(frozen=True, slots=True)
class SynStream:
    stream_id: int
    headers: dict[str, str] = field(default_factory=dict)
    flags: int = 0
    assoc_stream_id: int = 0
    priority: int = 0  # 3 bits
    slot: int = 0

    @property
    def fin(self) -> bool:
        return bool(self.flags & FLAG_FIN)


@dataclass(frozen=True, slots=True)
class SynReply:
    stream_id: int
    headers: dict[str, str] = field(default_factory=dict)
    flags: int = 0

    @property
    def fin(self) -> bool:
        return bool(self.flags & FLAG_FIN)


@dataclass(frozen=True, slots=True)
class Headers:
    stream_id: int
    headers: dict[str, str] = field(default_factory=dict)
    flags: int = 0

    @property
    def fin(self) -> bool:
        return bool(self.flags & FLAG_FIN)


@dataclass(frozen=True, slots=True)
class RstStream:
    stream_id: int
    status: int


@dataclass(frozen=True, slots=True)
class Settings:
    """`entries` are (flags, id, value) triples."""

    entries: tuple[tuple[int, int, int], ...] = ()
    flags: int = 0


@dataclass(frozen=True, slots=True)
class Ping:
    ping_id: int


@dataclass(frozen=True, slots=True)
class GoAway:
    last_good_stream_id: int
    status: int = GOAWAY_OK


@dataclass(frozen=True, slots=True)
class WindowUpdate:
    stream_id: int
    delta: int


Frame = (
    DataFrame | SynStream | SynReply | Headers | RstStream | Settings | Ping | GoAway | WindowUpdate
)


def _control(ftype: int, flags: int, payload: bytes) -> bytes:
    if len(payload) > MAX_FRAME_LENGTH:
        raise InvalidArgument(f"SPDY frame payload of {len(payload)} bytes exceeds 2^24-1")
    word0 = 0x80000000 | (VERSION << 16) | ftype
    return _HEAD.pack(word0, flags, len(payload) >> 16, len(payload) & 0xFFFF) + payload


def encode_data(stream_id: int, data: bytes, flags: int = 0) -> bytes:
    """One DATA frame; `data` must fit the 24-bit length field."""
    _check_id(stream_id)
    if len(data) > MAX_FRAME_LENGTH:
        raise InvalidArgument(f"SPDY DATA payload of {len(data)} bytes exceeds 2^24-1")
    return _HEAD.pack(stream_id, flags, len(data) >> 16, len(data) & 0xFFFF) + data


def _check_id(stream_id: int) -> None:
    if not 0 < stream_id <= MAX_STREAM_ID:
        raise InvalidArgument(f"SPDY stream id {stream_id} is outside 1..2^31-1")


class FrameEncoder:
    """Serialises frames; owns this direction's header compression context, so
    frames must be written to the wire in the order they are encoded."""

    def __init__(self) -> None:
        self._headers = HeaderCompressor()

    def encode(self, frame: Frame) -> bytes:
        match frame:
            case DataFrame(sid, data, flags):
                return encode_data(sid, data, flags)
            case SynStream():
                return self._syn_stream(frame)
            case SynReply(sid, headers, flags):
                return self._with_block(SYN_REPLY, flags, sid, b"", headers)
            case Headers(sid, headers, flags):
                return self._with_block(HEADERS, flags, sid, b"", headers)
            case RstStream(sid, status):
                _check_id(sid)
                return _control(RST_STREAM, 0, _U32x2.pack(sid, status))
            case Settings(entries, flags):
                return _control(SETTINGS, flags, _settings_payload(entries))
            case Ping(pid):
                return _control(PING, 0, _U32.pack(pid & 0xFFFFFFFF))
            case GoAway(last, status):
                return _control(GOAWAY, 0, _U32x2.pack(last & MAX_STREAM_ID, status))
            case WindowUpdate(sid, delta):
                return _control(WINDOW_UPDATE, 0, _U32x2.pack(sid & MAX_STREAM_ID, delta))
        raise InvalidArgument(f"not a SPDY frame: {frame!r}")

    def _syn_stream(self, f: SynStream) -> bytes:
        head = _U32x2.pack(f.assoc_stream_id & MAX_STREAM_ID, 0)[:4]
        head += bytes([(f.priority & 0x7) << 5, f.slot & 0xFF])
        return self._with_block(SYN_STREAM, f.flags, f.stream_id, head, f.headers)

    def _with_block(
        self, ftype: int, flags: int, sid: int, extra: bytes, headers: Mapping[str, str]
    ) -> bytes:
        _check_id(sid)
        block = self._headers.compress(headers)
        return _control(ftype, flags, _U32.pack(sid) + extra + block)


def _settings_payload(entries: tuple[tuple[int, int, int], ...]) -> bytes:
    parts = [_U32.pack(len(entries))]
    parts += [_U32x2.pack(((fl & 0xFF) << 24) | (sid & 0xFFFFFF), v) for fl, sid, v in entries]
    return b"".join(parts)


class FrameDecoder:
    """Incremental decoder: `feed()` bytes as they arrive, then call `next_frame()`
    until it returns None (more input needed). Malformed input raises ProtocolError,
    after which the decoder (and its zlib context) must be discarded.

    Memory: the buffer holds at most one incomplete control frame (capped at
    MAX_CONTROL_LENGTH) or one DATA piece (DATA_PIECE), plus what the caller feeds.
    Unknown control frame types are skipped; header blocks are inflated here, in
    arrival order, even for frames the session will reject.
    """

    def __init__(self, max_header_block: int | None = None) -> None:
        self._buf = bytearray()
        self._headers = (
            HeaderDecompressor(max_header_block) if max_header_block else HeaderDecompressor()
        )
        # (stream id, flags, bytes still to come) while inside a DATA frame
        self._data: tuple[int, int, int] | None = None

    def feed(self, data: bytes) -> None:
        self._buf += data

    def __iter__(self) -> Iterator[Frame]:
        """Every frame decodable from the bytes fed so far."""
        while (frame := self.next_frame()) is not None:
            yield frame

    def next_frame(self) -> Frame | None:
        while True:
            if self._data is not None:
                return self._data_piece()
            if len(self._buf) < 8:
                return None
            word0, flags, len_hi, len_lo = _HEAD.unpack_from(self._buf, 0)
            length = (len_hi << 16) | len_lo
            if not word0 & 0x80000000:
                self._start_data(word0, flags, length)
                continue
            _check_control_head(word0, length)
            if len(self._buf) < 8 + length:
                return None
            payload = bytes(self._buf[8 : 8 + length])
            del self._buf[: 8 + length]
            frame = _parse_control(self._headers, word0 & 0xFFFF, flags, payload)
            if frame is not None:
                return frame

    def _start_data(self, sid: int, flags: int, length: int) -> None:
        if sid == 0:
            raise ProtocolError("DATA frame on stream 0")
        del self._buf[:8]
        self._data = (sid, flags, length)

    def _data_piece(self) -> DataFrame | None:
        assert self._data is not None
        sid, flags, left = self._data
        take = min(left, len(self._buf), DATA_PIECE)
        if take < left and take < DATA_PIECE:
            return None
        chunk = bytes(self._buf[:take])
        del self._buf[:take]
        left -= take
        self._data = (sid, flags, left) if left else None
        # FIN belongs to the last piece of the wire frame only
        return DataFrame(sid, chunk, flags if not left else flags & ~FLAG_FIN)


def _check_control_head(word0: int, length: int) -> None:
    version = (word0 >> 16) & 0x7FFF
    if version != VERSION:
        raise ProtocolError(f"unsupported SPDY version {version}")
    if length > MAX_CONTROL_LENGTH:
        raise ProtocolError(f"control frame of {length} bytes exceeds our limit")


def _sid(payload: bytes, what: str) -> int:
    if len(payload) < 4:
        raise ProtocolError(f"{what} frame too short")
    sid: int = _U32.unpack_from(payload, 0)[0] & MAX_STREAM_ID
    if sid == 0:
        raise ProtocolError(f"{what} frame on stream 0")
    return sid


def _exact(payload: bytes, size: int, what: str) -> None:
    if len(payload) != size:
        raise ProtocolError(f"{what} frame has length {len(payload)}, expected {size}")


def _parse_control(
    zctx: HeaderDecompressor, ftype: int, flags: int, payload: bytes
) -> Frame | None:
    """One complete control frame; None for types we skip."""
    if ftype == SYN_STREAM:
        if len(payload) < 10:
            raise ProtocolError("SYN_STREAM frame too short")
        sid = _sid(payload, "SYN_STREAM")
        assoc = _U32.unpack_from(payload, 4)[0] & MAX_STREAM_ID
        headers = zctx.decompress(payload[10:])
        return SynStream(sid, headers, flags, assoc, payload[8] >> 5, payload[9])
    if ftype in (SYN_REPLY, HEADERS):
        sid = _sid(payload, "SYN_REPLY" if ftype == SYN_REPLY else "HEADERS")
        headers = zctx.decompress(payload[4:])
        return (SynReply if ftype == SYN_REPLY else Headers)(sid, headers, flags)
    return _parse_simple(ftype, flags, payload)


def _parse_simple(ftype: int, flags: int, payload: bytes) -> Frame | None:
    if ftype == RST_STREAM:
        _exact(payload, 8, "RST_STREAM")
        status = _U32.unpack_from(payload, 4)[0]
        if status == 0:
            raise ProtocolError("RST_STREAM with status 0")
        return RstStream(_sid(payload, "RST_STREAM"), status)
    if ftype == SETTINGS:
        return _parse_settings(flags, payload)
    if ftype == PING:
        _exact(payload, 4, "PING")
        (pid,) = _U32.unpack(payload)
        if pid == 0:
            raise ProtocolError("PING with id 0")
        return Ping(pid)
    if ftype == GOAWAY:
        _exact(payload, 8, "GOAWAY")
        last, status = _U32x2.unpack(payload)
        return GoAway(last & MAX_STREAM_ID, status)
    if ftype == WINDOW_UPDATE:
        _exact(payload, 8, "WINDOW_UPDATE")
        sid, delta = _U32x2.unpack(payload)
        return WindowUpdate(sid & MAX_STREAM_ID, delta & MAX_STREAM_ID)
    return None  # unknown or obsolete type (NOOP, CREDENTIAL): skipped


def _parse_settings(flags: int, payload: bytes) -> Settings:
    if len(payload) < 4:
        raise ProtocolError("SETTINGS frame too short")
    (count,) = _U32.unpack_from(payload, 0)
    _exact(payload, 4 + 8 * count, "SETTINGS")
    entries = []
    for i in range(count):
        head, value = _U32x2.unpack_from(payload, 4 + 8 * i)
        entries.append((head >> 24, head & 0xFFFFFF, value))
    return Settings(tuple(entries), flags)
