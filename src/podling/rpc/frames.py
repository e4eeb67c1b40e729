"""HTTP/2 framing (RFC 9113 section 4 and 6): the constants, and frames to and from bytes.

Only what a gRPC server needs. Header blocks are (de)compressed with the `hpack` library;
this module never keeps compression state of its own: every block it encodes uses literal
fields that are never indexed, so encoding is the same on every connection and can be done
once (`encode_block`).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

from hpack import Encoder, NeverIndexedHeaderTuple

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"

# frame types
DATA = 0x0
HEADERS = 0x1
PRIORITY = 0x2
RST_STREAM = 0x3
SETTINGS = 0x4
PUSH_PROMISE = 0x5
PING = 0x6
GOAWAY = 0x7
WINDOW_UPDATE = 0x8
CONTINUATION = 0x9

# flags
END_STREAM = 0x1
ACK = 0x1
END_HEADERS = 0x4
PADDED = 0x8
PRIORITY_FLAG = 0x20

# settings
HEADER_TABLE_SIZE = 0x1
ENABLE_PUSH = 0x2
MAX_CONCURRENT_STREAMS = 0x3
INITIAL_WINDOW_SIZE = 0x4
MAX_FRAME_SIZE = 0x5
MAX_HEADER_LIST_SIZE = 0x6

# error codes
NO_ERROR = 0x0
PROTOCOL_ERROR = 0x1
INTERNAL_ERROR = 0x2
FLOW_CONTROL_ERROR = 0x3
STREAM_CLOSED = 0x5
FRAME_SIZE_ERROR = 0x6
REFUSED_STREAM = 0x7
CANCEL = 0x8
COMPRESSION_ERROR = 0x9

DEFAULT_MAX_FRAME = 16384  # SETTINGS_MAX_FRAME_SIZE until a peer says otherwise
DEFAULT_WINDOW = 65535  # every flow-control window starts here
MAX_WINDOW = 2**31 - 1


class ConnectionError_(Exception):
    """The peer broke the protocol: the connection ends with GOAWAY(`code`)."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason


def frame(kind: int, flags: int, stream: int, payload: bytes = b"") -> bytes:
    """One frame: its 9-byte header, then `payload`."""
    return (
        len(payload).to_bytes(3, "big") + bytes((kind, flags)) + stream.to_bytes(4, "big") + payload
    )


def settings(values: dict[int, int]) -> bytes:
    """A SETTINGS frame carrying `values`."""
    body = b"".join(k.to_bytes(2, "big") + v.to_bytes(4, "big") for k, v in values.items())
    return frame(SETTINGS, 0, 0, body)


def parse_settings(payload: bytes) -> Iterator[tuple[int, int]]:
    """The (identifier, value) pairs of a SETTINGS payload."""
    if len(payload) % 6:
        raise ConnectionError_(FRAME_SIZE_ERROR, "SETTINGS payload is not a multiple of 6")
    for i in range(0, len(payload), 6):
        yield int.from_bytes(payload[i : i + 2], "big"), int.from_bytes(payload[i + 2 : i + 6])


def window_update(stream: int, increment: int) -> bytes:
    return frame(WINDOW_UPDATE, 0, stream, increment.to_bytes(4, "big"))


def rst_stream(stream: int, code: int) -> bytes:
    return frame(RST_STREAM, 0, stream, code.to_bytes(4, "big"))


def goaway(last_stream: int, code: int, reason: str = "") -> bytes:
    body = last_stream.to_bytes(4, "big") + code.to_bytes(4, "big") + reason.encode()
    return frame(GOAWAY, 0, 0, body)


def unpad(flags: int, payload: bytes) -> bytes:
    """`payload` without its padding (DATA and HEADERS frames with PADDED set)."""
    if not flags & PADDED:
        return payload
    if not payload or payload[0] >= len(payload):
        raise ConnectionError_(PROTOCOL_ERROR, "padding is longer than the frame")
    return payload[1 : len(payload) - payload[0]]


def header_fragment(flags: int, payload: bytes) -> bytes:
    """The header block fragment of a HEADERS frame (padding and priority removed)."""
    body = unpad(flags, payload)
    if flags & PRIORITY_FLAG:
        if len(body) < 5:
            raise ConnectionError_(FRAME_SIZE_ERROR, "HEADERS too short for its priority")
        body = body[5:]
    return body


def header_frames(stream: int, block: bytes, end_stream: bool, max_frame: int) -> bytes:
    """HEADERS (+ CONTINUATION) frames carrying `block`."""
    first, rest = block[:max_frame], block[max_frame:]
    flags = (END_STREAM if end_stream else 0) | (0 if rest else END_HEADERS)
    out = [frame(HEADERS, flags, stream, first)]
    while rest:
        piece, rest = rest[:max_frame], rest[max_frame:]
        out.append(frame(CONTINUATION, 0 if rest else END_HEADERS, stream, piece))
    return b"".join(out)


def encode_block(headers: Iterable[tuple[bytes, bytes]]) -> bytes:
    """`headers` as an HPACK block of never-indexed literals: valid on any connection."""
    fields = [NeverIndexedHeaderTuple(name, value) for name, value in headers]
    return Encoder().encode(fields, huffman=False)
