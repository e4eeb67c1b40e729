"""One HTTP/2 stream, server side: a request's headers and body, and the response waiting
for flow-control windows (see connection.py for what the two promise the gRPC layer)."""

from __future__ import annotations

import asyncio
from collections import deque
from typing import TYPE_CHECKING

from podling.rpc import frames as f

if TYPE_CHECKING:
    from podling.rpc.connection import Connection

Headers = dict[bytes, bytes]


class Stream:
    """One request/response exchange. `headers` are the request's, decoded (raw bytes);
    streams that sent the same header block share one dict: never change it."""

    def __init__(self, conn: Connection, sid: int, headers: Headers) -> None:
        self.conn = conn
        self.id = sid
        self.headers = headers
        self.body = bytearray()
        self.window = conn.peer_initial_window
        self.remote_closed = False
        self.local_closed = False
        self.cancelled = False
        self.too_large = False
        self.dispatched = False
        self.responded = False  # a header block went out: what follows is data or trailers
        self.context: object = None  # the gRPC layer's state for this stream
        # (frame type, payload, end of stream); payloads are views: a large reply is cut
        # into frames without copying what remains of it each time
        self._pending: deque[tuple[int, memoryview, bool]] = deque()
        self._drained: asyncio.Event | None = None

    def send_headers(self, block: bytes, end_stream: bool = False, flush: bool = True) -> None:
        """Queue a header block (response headers, or trailers with `end_stream`)."""
        self._queue(f.HEADERS, block, end_stream, flush)
        self.responded = True

    def send_data(self, data: bytes, flush: bool = True) -> None:
        """Queue `data`; with flush=False it waits for the next queued part (one write)."""
        self._queue(f.DATA, data, False, flush)

    def respond(self, head: bytes, data: bytes, tail: bytes) -> None:
        """Header block `head`, `data`, then trailers `tail` ending the stream: a unary
        response, in one write when the windows take all of `data`."""
        self.send_headers(head, flush=False)
        self.send_data(data, flush=False)
        self.send_headers(tail, end_stream=True)

    async def drained(self) -> None:
        """Return once everything queued is sent (or the stream is gone)."""
        while self._pending and not self.cancelled:
            self._drained = self._drained or asyncio.Event()
            self._drained.clear()
            await self._drained.wait()

    def _queue(self, kind: int, payload: bytes, end_stream: bool, flush: bool) -> None:
        if self.cancelled or self.local_closed:
            return
        self.local_closed = end_stream
        self._pending.append((kind, memoryview(payload), end_stream))
        if flush:
            self.conn.flush(self)

    def take(self, out: list[bytes]) -> None:
        """Move what the windows allow from the queue into `out` (called by Connection)."""
        conn = self.conn
        while self._pending:
            kind, payload, end = self._pending[0]
            if kind == f.HEADERS:
                out.append(f.header_frames(self.id, bytes(payload), end, conn.peer_max_frame))
                self._pending.popleft()
                continue
            room = min(conn.send_window, self.window, conn.peer_max_frame)
            if room <= 0 and payload:
                break
            piece = payload[:room]
            last = len(piece) == len(payload)
            out.append(f.frame(f.DATA, f.END_STREAM if end and last else 0, self.id, bytes(piece)))
            conn.send_window -= len(piece)
            self.window -= len(piece)
            if last:
                self._pending.popleft()
            else:
                self._pending[0] = (kind, payload[len(piece) :], end)
        if not self._pending and self._drained is not None:
            self._drained.set()

    @property
    def queued(self) -> bool:
        return bool(self._pending)

    def cancel(self) -> None:
        self.cancelled = True
        self._pending.clear()
        if self._drained is not None:
            self._drained.set()
