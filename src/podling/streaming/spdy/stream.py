"""One SPDY stream of a SpdySession: a bounded receive queue plus a write side.

Half-close follows SPDY: `close()` sends an empty DATA frame with FIN (we will
write no more; the peer may keep writing), the peer's FIN makes `read()` return
b"" once the queue is drained. A reset (either side) ends both directions.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from typing import Protocol

from podling.streaming.spdy.frames import CANCEL

# DATA payloads are written in frames of at most this size (what Go clients use).
WRITE_CHUNK = 32 * 1024


class SessionClosedError(ConnectionError):
    """The SPDY session has ended (peer gone, GOAWAY, protocol error, idle timeout)."""


class StreamClosedError(ConnectionError):
    """Writing to a stream that we closed, or that either side reset."""


class _Owner(Protocol):
    """What a stream needs from its session."""

    @property
    def closed(self) -> bool: ...

    async def _send_data(self, stream_id: int, data: bytes, fin: bool) -> None: ...

    async def _send_rst(self, stream_id: int, status: int) -> None: ...

    def _forget(self, stream: SpdyStream) -> None: ...

    def _room_freed(self) -> None: ...


class SpdyStream:
    """A stream; created by the session (never directly).

    `headers` are the SYN_STREAM's headers (lowercase names; several values of one
    name stay joined by NUL). The receive queue holds what the peer sent and we have
    not read yet; the session stops reading the connection while it exceeds the
    session's per-stream bound, so every accepted stream must be read or reset.
    """

    def __init__(self, owner: _Owner, stream_id: int, headers: dict[str, str]) -> None:
        self.id = stream_id
        self.headers = headers
        self._owner = owner
        self._queue: deque[bytes] = deque()
        self.buffered = 0  # payload bytes queued, not yet read
        self._readable = asyncio.Event()
        self._remote_done = False  # peer FIN, reset, or session end
        self._local_done = False  # we sent FIN, or reset
        self._reset = False
        self.reset_status = 0  # RST_STREAM status when the stream was reset
        self.reply: asyncio.Future[None] | None = None  # open(): resolved by SYN_REPLY

    @property
    def remote_closed(self) -> bool:
        """True once the peer sent FIN, either side reset, or the session ended
        (data already queued can still be read)."""
        return self._remote_done

    @property
    def local_closed(self) -> bool:
        """True once we sent FIN, either side reset, or the session ended."""
        return self._local_done or self._owner.closed

    async def read(self) -> bytes:
        """The next DATA payload; b"" once the peer sent FIN or reset the stream or the
        session ended, and everything queued before that has been read."""
        while not self._queue:
            if self._remote_done:
                return b""
            self._readable.clear()
            await self._readable.wait()
        chunk = self._queue.popleft()
        self.buffered -= len(chunk)
        self._owner._room_freed()
        return chunk

    async def write(self, data: bytes) -> None:
        """Send `data` as DATA frames of at most WRITE_CHUNK bytes. Raises
        StreamClosedError if we closed or either side reset the stream, and
        SessionClosedError if the session ended."""
        self._check_writable()
        view = memoryview(data)
        for start in range(0, len(view), WRITE_CHUNK):
            self._check_writable()  # a reset may arrive between chunks
            await self._owner._send_data(self.id, bytes(view[start : start + WRITE_CHUNK]), False)

    def _check_writable(self) -> None:
        if self._reset:
            raise StreamClosedError(f"SPDY stream {self.id} was reset")
        if self._local_done:
            raise StreamClosedError(f"SPDY stream {self.id} is closed for writing")
        if self._owner.closed:
            raise SessionClosedError(f"SPDY session of stream {self.id} has ended")

    async def close(self) -> None:
        """Half-close: an empty DATA frame with FIN. Idempotent; a no-op after a reset
        or once the session ended."""
        if self._local_done or self._owner.closed:
            return
        self._local_done = True
        try:
            await self._owner._send_data(self.id, b"", True)
        except ConnectionError:
            return  # session died meanwhile: nothing left to half-close
        if self._remote_done:
            self._owner._forget(self)

    async def reset(self, status: int = CANCEL) -> None:
        """Abort both directions with RST_STREAM(status) and drop unread data.
        Idempotent; a no-op once the session ended."""
        if self._reset or self._owner.closed:
            return
        self._mark_reset(status)
        self._drop_queue()
        self._fail_reply(StreamClosedError(f"SPDY stream {self.id} was reset by us"))
        self._owner._forget(self)
        # if the session is gone meanwhile, that resets every stream anyway
        with contextlib.suppress(ConnectionError):
            await self._owner._send_rst(self.id, status)

    # --- called by the session's reader loop ---

    def deliver(self, data: bytes, fin: bool) -> None:
        """Queue a DATA payload (dropped if we reset the stream)."""
        if data and not self._reset:
            self._queue.append(data)
            self.buffered += len(data)
            self._readable.set()
        if fin:
            self.remote_fin()

    def remote_fin(self) -> None:
        self._remote_done = True
        self._readable.set()
        if self._local_done:
            self._owner._forget(self)

    def remote_reset(self, status: int) -> None:
        """The peer reset the stream: data already queued stays readable."""
        self._mark_reset(status)
        self._fail_reply(StreamClosedError(f"SPDY stream {self.id} reset by peer ({status})"))

    def session_ended(self) -> None:
        self._remote_done = True
        self._readable.set()
        self._fail_reply(SessionClosedError("SPDY session ended before the stream was accepted"))

    def mark_local_closed(self) -> None:
        """Our side is done without a frame of its own (SYN_STREAM with FIN, or a
        unidirectional stream from the peer)."""
        self._local_done = True

    def _mark_reset(self, status: int) -> None:
        self._reset = True
        self.reset_status = status
        self._local_done = self._remote_done = True
        self._readable.set()

    def _drop_queue(self) -> None:
        self._queue.clear()
        self.buffered = 0
        self._owner._room_freed()

    def _fail_reply(self, exc: Exception) -> None:
        if self.reply is not None and not self.reply.done():
            self.reply.set_exception(exc)
            # open() may already have given up waiting; don't warn about it
            self.reply.exception()

    def __repr__(self) -> str:
        return f"<SpdyStream {self.id} {self.headers!r}>"
