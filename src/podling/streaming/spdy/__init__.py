"""SPDY/3.1 as Kubernetes uses it: a sans-I/O frame codec (frames.py, headers.py)
and an asyncio session with streams (session.py, stream.py)."""

from podling.streaming.spdy.frames import (
    CANCEL,
    INTERNAL_ERROR,
    PROTOCOL_ERROR,
    REFUSED_STREAM,
)
from podling.streaming.spdy.headers import ProtocolError
from podling.streaming.spdy.session import (
    ByteReader,
    ByteWriter,
    SpdySession,
    SpdyTimeout,
    StreamFilter,
)
from podling.streaming.spdy.stream import SessionClosedError, SpdyStream, StreamClosedError

__all__ = [
    "CANCEL",
    "INTERNAL_ERROR",
    "PROTOCOL_ERROR",
    "REFUSED_STREAM",
    "ByteReader",
    "ByteWriter",
    "ProtocolError",
    "SessionClosedError",
    "SpdySession",
    "SpdyStream",
    "SpdyTimeout",
    "StreamClosedError",
    "StreamFilter",
]
