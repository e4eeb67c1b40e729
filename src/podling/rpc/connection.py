"""One HTTP/2 connection, server side: streams, flow control, and the connection frames.

What this layer guarantees the gRPC layer above it (`calls`):
- `on_request(stream)` is called once per stream: when its request is complete (the
  client's END_STREAM), or as soon as its body passes MAX_REQUEST (`stream.too_large`
  is then set and the body is not kept).
- `Stream.send_*` and `Stream.respond` never block and never send more DATA than the
  peer's windows allow: what does not fit waits in the stream and goes out as
  WINDOW_UPDATEs arrive, in order (trailers never overtake data). `await
  stream.drained()` waits for that queue to empty.
- When the client resets a stream or the connection is lost, `stream.cancelled` is set
  and `on_cancel(stream)` is called; nothing more is sent on it.
Protocol errors end the connection with GOAWAY and the error's code.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import cast

from hpack import Decoder, HPACKError

from podling.rpc import frames as f
from podling.rpc.stream import Headers, Stream

log = logging.getLogger("podling.rpc")

MAX_STREAMS = 1000  # concurrent streams a client may open
MAX_HEADER_LIST = 65536  # decoded header bytes a request may carry
READ_SIZE = 64 << 10  # read at most this much per wakeup: frames are at most 16 KiB
MAX_REQUEST = (4 << 20) + 5  # one message of 4 MiB (gRPC's default limit) and its prefix
STREAM_WINDOW = 8 << 20  # what a client may send on one stream: more than MAX_REQUEST
CONNECTION_WINDOW = 64 << 20  # and on the whole connection, refilled as it is read
_REFILL_AT = CONNECTION_WINDOW // 2


class Connection(asyncio.BufferedProtocol):
    """The server side of one HTTP/2 connection (prior knowledge: no upgrade, no TLS).

    A buffered protocol: the socket is read into one buffer kept for the connection's
    life. A plain Protocol is handed a new bytes object per read, which CPython allocates
    at asyncio's 256 KiB read size: an mmap, an mremap and a munmap per request (seen
    with strace), about as long as parsing the request itself.
    """

    def __init__(
        self, on_request: Callable[[Stream], None], on_cancel: Callable[[Stream], None]
    ) -> None:
        self._on_request = on_request
        self._on_cancel = on_cancel
        self.transport: asyncio.Transport | None = None
        self._scratch = memoryview(bytearray(READ_SIZE))  # what the socket is read into
        self._rest = b""  # the start of a frame whose end is not read yet
        self._decoder = Decoder(MAX_HEADER_LIST)
        self._known: dict[bytes, Headers] = {}  # see _decode
        self._preface = b""
        self._fragments: tuple[int, int, bytearray] | None = None  # sid, flags, block
        self.streams: dict[int, Stream] = {}
        self.last_stream = 0
        self.peer_initial_window = f.DEFAULT_WINDOW
        self.peer_max_frame = f.DEFAULT_MAX_FRAME
        self.send_window = f.DEFAULT_WINDOW
        self._unacked = 0  # bytes read since the connection window was last refilled
        self.closing = False
        self.on_lost: Callable[[Connection], None] | None = None  # the server's bookkeeping

    # --- asyncio.BufferedProtocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        own = {
            f.MAX_CONCURRENT_STREAMS: MAX_STREAMS,
            f.INITIAL_WINDOW_SIZE: STREAM_WINDOW,
            f.MAX_HEADER_LIST_SIZE: MAX_HEADER_LIST,
            f.ENABLE_PUSH: 0,
        }
        grow = CONNECTION_WINDOW - f.DEFAULT_WINDOW
        transport.write(f.settings(own) + f.window_update(0, grow))

    def get_buffer(self, sizehint: int) -> memoryview:
        return self._scratch

    def buffer_updated(self, nbytes: int) -> None:
        self.data_received(bytes(self._scratch[:nbytes]))

    def data_received(self, data: bytes) -> None:
        """Act on every whole frame `data` completes; keep a partial one for later."""
        out: list[bytes] = []
        try:
            if len(self._preface) < len(f.PREFACE):
                data = self._read_preface(data)
            self._frames(self._rest + data if self._rest else data, out)
        except f.ConnectionError_ as e:
            log.warning("closing a CRI connection: %s", e.reason)
            self._write(out)
            self.abort(e.code, e.reason)
            return
        except Exception:  # a bug here must cost one connection, not the daemon's loop
            log.exception("closing a CRI connection after an internal error")
            self.abort(f.INTERNAL_ERROR, "internal error")
            return
        self._write(out)

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        for stream in list(self.streams.values()):
            self._cancel(stream)
        if self.on_lost is not None:
            self.on_lost(self)

    # --- used by the server and the streams

    def flush(self, stream: Stream) -> None:
        out: list[bytes] = []
        self._send(stream, out)
        self._write(out)

    def goaway(self) -> None:
        """Tell the client no new streams will be served here; running ones finish."""
        if not self.closing and self.transport is not None:
            self.closing = True
            self.transport.write(f.goaway(self.last_stream, f.NO_ERROR))
        if not self.streams:
            self.close()

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()

    def abort(self, code: int, reason: str) -> None:
        if self.transport is not None:
            self.transport.write(f.goaway(self.last_stream, code, reason))
            self.transport.close()

    # --- inbound frames

    def _read_preface(self, data: bytes) -> bytes:
        need = len(f.PREFACE) - len(self._preface)
        self._preface += data[:need]
        if not f.PREFACE.startswith(self._preface):
            raise f.ConnectionError_(f.PROTOCOL_ERROR, "not an HTTP/2 client (bad preface)")
        return data[need:]

    def _frames(self, data: bytes, out: list[bytes]) -> None:
        start, have = 0, len(data)
        while have - start >= 9:
            size = int.from_bytes(data[start : start + 3], "big")
            if size > f.DEFAULT_MAX_FRAME:  # the largest we allow (we never raise it)
                raise f.ConnectionError_(f.FRAME_SIZE_ERROR, f"a {size}-byte frame")
            end = start + 9 + size
            if have < end:
                break
            sid = int.from_bytes(data[start + 5 : start + 9], "big") & f.MAX_WINDOW
            kind, flags, payload = data[start + 3], data[start + 4], data[start + 9 : end]
            start = end
            self._frame(kind, flags, sid, payload, out)
        self._rest = data[start:]

    def _frame(self, kind: int, flags: int, sid: int, payload: bytes, out: list[bytes]) -> None:
        if self._fragments is not None and kind != f.CONTINUATION:
            raise f.ConnectionError_(f.PROTOCOL_ERROR, "a header block was interrupted")
        # most frequent first: a call is HEADERS, WINDOW_UPDATEs and DATA
        if kind == f.HEADERS or kind == f.CONTINUATION:
            self._headers(kind, flags, sid, payload, out)
        elif kind == f.WINDOW_UPDATE:
            self._window_update(sid, payload, out)
        elif kind == f.DATA:
            self._data(flags, sid, payload, out)
        elif kind == f.SETTINGS:
            if sid:
                raise f.ConnectionError_(f.PROTOCOL_ERROR, "SETTINGS on a stream")
            if not flags & f.ACK:
                self._settings(payload, out)
        elif kind == f.PING:
            if sid or len(payload) != 8:
                raise f.ConnectionError_(f.PROTOCOL_ERROR, "malformed PING")
            if not flags & f.ACK:
                out.append(f.frame(f.PING, f.ACK, 0, payload))
        elif kind == f.RST_STREAM:
            stream = self.streams.get(sid)
            if stream is not None:
                self._cancel(stream)
        elif kind == f.PUSH_PROMISE:
            raise f.ConnectionError_(f.PROTOCOL_ERROR, "a client sent PUSH_PROMISE")
        # PRIORITY, GOAWAY and unknown types need nothing from a server that only answers

    def _settings(self, payload: bytes, out: list[bytes]) -> None:
        for key, value in f.parse_settings(payload):
            if key == f.INITIAL_WINDOW_SIZE:
                if value > f.MAX_WINDOW:
                    raise f.ConnectionError_(f.FLOW_CONTROL_ERROR, "initial window too large")
                delta, self.peer_initial_window = value - self.peer_initial_window, value
                for stream in self.streams.values():
                    stream.window += delta
            elif key == f.MAX_FRAME_SIZE:
                if not f.DEFAULT_MAX_FRAME <= value <= 2**24 - 1:
                    raise f.ConnectionError_(f.PROTOCOL_ERROR, "MAX_FRAME_SIZE out of range")
                self.peer_max_frame = value
        out.append(f.frame(f.SETTINGS, f.ACK, 0))
        self._flush_all(out)

    def _window_update(self, sid: int, payload: bytes, out: list[bytes]) -> None:
        if len(payload) != 4:
            raise f.ConnectionError_(f.FRAME_SIZE_ERROR, "WINDOW_UPDATE is 4 bytes")
        increment = int.from_bytes(payload, "big") & f.MAX_WINDOW
        if sid == 0:
            self.send_window += increment
            if not increment or self.send_window > f.MAX_WINDOW:
                raise f.ConnectionError_(f.FLOW_CONTROL_ERROR, "bad connection WINDOW_UPDATE")
            self._flush_all(out)
            return
        stream = self.streams.get(sid)
        if stream is not None:
            stream.window += increment
            self._send(stream, out)

    def _headers(self, kind: int, flags: int, sid: int, payload: bytes, out: list[bytes]) -> None:
        if kind == f.HEADERS:
            if sid == 0:
                raise f.ConnectionError_(f.PROTOCOL_ERROR, "HEADERS on stream 0")
            self._fragments = (sid, flags, bytearray(f.header_fragment(flags, payload)))
        else:
            if self._fragments is None or self._fragments[0] != sid:
                raise f.ConnectionError_(f.PROTOCOL_ERROR, "CONTINUATION without HEADERS")
            self._fragments[2].extend(payload)
        if len(self._fragments[2]) > MAX_HEADER_LIST:
            raise f.ConnectionError_(f.PROTOCOL_ERROR, "header block too large")
        if flags & f.END_HEADERS:
            sid, first_flags, block = self._fragments
            self._fragments = None
            self._header_block(sid, first_flags, bytes(block), out)

    def _decode(self, block: bytes) -> Headers:
        """The headers of `block` (the last of a repeated name wins). A block of one-byte
        table references only changes no decoder state, so its headers are remembered
        until a block that could changes it: clients repeat such blocks for every call
        of a method (hpack takes ~25 µs each). Streams share the remembered dict.
        """
        known = self._known.get(block)
        if known is not None:  # only pure blocks are ever remembered
            return known
        pure = bool(block) and min(block) >= 0x80 and 0xFF not in block
        try:
            fields = cast(list[tuple[bytes, bytes]], self._decoder.decode(block, raw=True))
        except HPACKError as e:
            raise f.ConnectionError_(f.COMPRESSION_ERROR, f"bad header block: {e}") from None
        headers = dict(fields)
        if not pure or len(self._known) >= 64:
            self._known.clear()
        if pure:
            self._known[block] = headers
        return headers

    def _header_block(self, sid: int, flags: int, block: bytes, out: list[bytes]) -> None:
        headers = self._decode(block)
        stream = self.streams.get(sid)
        if stream is not None:  # trailers from the client end its request
            self._end_request(stream, flags)
            return
        if sid % 2 == 0:
            raise f.ConnectionError_(f.PROTOCOL_ERROR, f"a client opened even stream {sid}")
        if sid <= self.last_stream:
            return  # trailers of a stream we answered and reset already: ignored
        self.last_stream = sid
        if self.closing or len(self.streams) >= MAX_STREAMS:
            out.append(f.rst_stream(sid, f.REFUSED_STREAM))
            return
        stream = Stream(self, sid, headers)
        self.streams[sid] = stream
        self._end_request(stream, flags)

    def _data(self, flags: int, sid: int, payload: bytes, out: list[bytes]) -> None:
        self._unacked += len(payload)
        if self._unacked >= _REFILL_AT:
            out.append(f.window_update(0, self._unacked))
            self._unacked = 0
        stream = self.streams.get(sid)
        if stream is None or stream.remote_closed:
            if sid == 0 or sid > self.last_stream:
                raise f.ConnectionError_(f.PROTOCOL_ERROR, f"DATA on idle stream {sid}")
            return  # a stream we answered and reset already: RFC 9113 says ignore it
        if not stream.too_large:
            stream.body += f.unpad(flags, payload)
            if len(stream.body) > MAX_REQUEST:
                stream.too_large = True
                stream.body = bytearray()
        self._end_request(stream, flags)

    def _end_request(self, stream: Stream, flags: int) -> None:
        if flags & f.END_STREAM:
            stream.remote_closed = True
        if (stream.remote_closed or stream.too_large) and not stream.dispatched:
            stream.dispatched = True
            self._on_request(stream)

    # --- outbound

    def _flush_all(self, out: list[bytes]) -> None:
        for stream in list(self.streams.values()):
            self._send(stream, out)

    def _send(self, stream: Stream, out: list[bytes]) -> None:
        """What the windows let `stream` send, into `out`; then forget the stream if its
        response is all sent (resetting its request if the client is still sending)."""
        stream.take(out)
        self._forget(stream, out)

    def _forget(self, stream: Stream, out: list[bytes]) -> None:
        if not stream.local_closed or stream.queued or self.streams.get(stream.id) is not stream:
            return
        del self.streams[stream.id]
        if not stream.remote_closed:
            out.append(f.rst_stream(stream.id, f.NO_ERROR))

    def _cancel(self, stream: Stream) -> None:
        self.streams.pop(stream.id, None)
        if not stream.cancelled:
            stream.cancel()
            self._on_cancel(stream)

    def _write(self, out: list[bytes]) -> None:
        if out and self.transport is not None:
            self.transport.write(b"".join(out))
        if self.closing and not self.streams:
            self.close()
