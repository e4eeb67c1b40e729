"""An asyncio SPDY/3.1 session over any byte stream, as Kubernetes clients use it.

The session owns one reader loop (`run()`) and serialises every write behind one
lock, because header blocks share a zlib context per direction: compress + write
must hit the wire in order. It never sends anything unsolicited (the HTTP front
relies on that right after the 101), has no flow control (spdystream has none),
answers the peer's PINGs, SYN_REPLYs every acceptable peer stream at once (the Go
client blocks on it) and treats GOAWAY, EOF, a protocol error or `idle_timeout`
without a frame either way as the end.

Memory bounds (per session): the frame decoder buffers at most one control frame
(1 MiB) or one DATA piece (64 KiB) plus one read (64 KiB). Each stream queues
received DATA until its consumer reads it; once a stream holds more than
`stream_buffer` bytes (default 256 KiB; one piece of at most 64 KiB may overshoot)
the reader loop stops reading the connection until that consumer catches up, so
the peer meets TCP backpressure. At most `max_streams` streams (default 128) are
tracked; more are refused. Worst case: max_streams x (stream_buffer + 64 KiB).
A consequence: every accepted stream must be read to the end or reset.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable, Mapping

from podling.errors import DeadlineExceeded
from podling.streaming.spdy.frames import (
    CANCEL,
    FLAG_FIN,
    FLAG_UNIDIRECTIONAL,
    GOAWAY_INTERNAL_ERROR,
    GOAWAY_OK,
    INVALID_STREAM,
    MAX_STREAM_ID,
    PROTOCOL_ERROR,
    REFUSED_STREAM,
    DataFrame,
    Frame,
    FrameDecoder,
    GoAway,
    Headers,
    Ping,
    RstStream,
    SynReply,
    SynStream,
)
from podling.streaming.spdy.headers import ProtocolError, normalize_headers
from podling.streaming.spdy.stream import SessionClosedError, SpdyStream, StreamClosedError
from podling.streaming.spdy.writer import ByteReader, ByteWriter, FrameWriter

log = logging.getLogger(__name__)

READ_SIZE = 64 * 1024
STREAM_BUFFER = 256 * 1024
MAX_STREAMS = 128
# close() gives its GOAWAY this long to reach the wire before closing anyway
CLOSE_GRACE = 5.0

# Decides on a peer's SYN_STREAM headers before the reply: None accepts, an
# RST_STREAM status refuses (the client's stream creation then fails).
StreamFilter = Callable[[Mapping[str, str]], int | None]


class SpdyTimeout(DeadlineExceeded, TimeoutError):
    """The peer did not answer (SYN_REPLY or PING) in time."""


class SpdySession:
    """One SPDY connection. `server=True` for the side that accepted the HTTP
    upgrade (its own stream and ping ids are even, the peer's odd).

    Optional: `max_streams` and `stream_buffer` set the memory bounds described in
    the module docstring; `stream_filter` vets each peer SYN_STREAM before the
    reply; `initial_data` are bytes the HTTP layer already read past the upgrade.
    """

    def __init__(
        self,
        reader: ByteReader,
        writer: ByteWriter,
        *,
        server: bool,
        idle_timeout: float = 4 * 3600.0,
        max_streams: int = MAX_STREAMS,
        stream_buffer: int = STREAM_BUFFER,
        stream_filter: StreamFilter | None = None,
        initial_data: bytes = b"",
    ) -> None:
        self._reader = reader
        self._initial = initial_data  # bytes already read past the HTTP upgrade
        self._out = FrameWriter(writer)
        self._own_parity = 0 if server else 1
        self._idle_timeout = idle_timeout
        self._max_streams, self._stream_buffer = max_streams, stream_buffer
        self._filter = stream_filter
        self._decoder = FrameDecoder()
        self._streams: dict[int, SpdyStream] = {}
        self._incoming: deque[SpdyStream] = deque()
        self._incoming_ready = asyncio.Event()
        self._room = asyncio.Event()  # a consumer read or dropped queued data
        self._next_id = 2 if server else 1
        self._last_peer_id = 0
        self._next_ping = self._next_id
        self._pings: dict[int, asyncio.Future[None]] = {}
        self._closed = False  # no more frames may be sent, streams are dead
        self._goaway_received = False
        self._running = False
        self._last_read = time.monotonic()

    @property
    def closed(self) -> bool:
        return self._closed

    # --- public API ---

    async def run(self) -> None:
        """Read and dispatch frames until EOF, GOAWAY, a protocol error, idle timeout
        or close(); then close the session (GOAWAY best effort, close the writer).
        Peer misbehaviour and connection errors end it quietly; bugs are re-raised."""
        if self._running:
            raise RuntimeError("SpdySession.run() was called twice")
        self._running = True
        reader = asyncio.create_task(self._read_loop())
        watchdog = asyncio.create_task(self._watch_idle())
        stopper = asyncio.create_task(self._out.stopped.wait())
        error: BaseException | None = None
        try:
            await asyncio.wait({reader, watchdog, stopper}, return_when=asyncio.FIRST_COMPLETED)
            if reader.done() and not reader.cancelled():
                error = reader.exception()
        finally:
            for task in (reader, watchdog, stopper):
                task.cancel()
            await asyncio.gather(reader, watchdog, stopper, return_exceptions=True)
            await self._close(self._exit_status(error))
        if error is not None and not isinstance(error, (ProtocolError, OSError)):
            raise error

    async def accept(self) -> SpdyStream:
        """The next stream the peer opened (already replied to). Raises
        SessionClosedError (a ConnectionError) once the session has ended."""
        while not self._incoming or self._closed:
            if self._closed:
                raise SessionClosedError("the SPDY session has ended: no more streams")
            self._incoming_ready.clear()
            await self._incoming_ready.wait()
        return self._incoming.popleft()

    async def open(
        self, headers: Mapping[str, str], *, fin: bool = False, timeout: float = 30
    ) -> SpdyStream:
        """Open a stream (SYN_STREAM) and wait for the peer's SYN_REPLY. `fin` sends
        no data from our side. Raises SpdyTimeout (the stream is then reset),
        StreamClosedError if the peer refused it, SessionClosedError if the session ended."""
        if self._closed:
            raise SessionClosedError("the SPDY session has ended: cannot open a stream")
        names = normalize_headers(headers)
        stream = SpdyStream(self, 0, names)
        reply: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        stream.reply = reply
        async with self._out.lock:
            stream.id = self._allocate_id()
            self._streams[stream.id] = stream
            try:
                await self._out.write_locked(SynStream(stream.id, names, FLAG_FIN if fin else 0))
            except ConnectionError:
                self._streams.pop(stream.id, None)
                raise
        if fin:
            stream.mark_local_closed()  # the SYN_STREAM carried our FIN
        try:
            await asyncio.wait_for(reply, timeout)
        except TimeoutError:
            await stream.reset(CANCEL)
            raise SpdyTimeout(
                f"SPDY peer did not reply to stream {stream.id} within {timeout}s"
            ) from None
        return stream

    async def ping(self, timeout: float = 10) -> float:
        """Send a PING and return the round trip in seconds; SpdyTimeout if the
        echo does not arrive within `timeout`."""
        if self._closed:
            raise SessionClosedError("the SPDY session has ended: cannot ping")
        loop = asyncio.get_running_loop()
        pid = self._next_ping
        self._next_ping = pid + 2 if pid + 2 <= 0xFFFFFFFF else 2 - self._own_parity
        done: asyncio.Future[None] = loop.create_future()
        self._pings[pid] = done
        start = loop.time()
        try:
            await self._send(Ping(pid))
            await asyncio.wait_for(done, timeout)
        except TimeoutError:
            raise SpdyTimeout(f"SPDY peer did not answer PING within {timeout}s") from None
        finally:
            self._pings.pop(pid, None)
        return loop.time() - start

    async def close(self) -> None:
        """GOAWAY (best effort, bounded wait), then close the writer. Idempotent."""
        await self._close(GOAWAY_OK)

    # --- writing ---

    def _allocate_id(self) -> int:
        sid = self._next_id
        if sid > MAX_STREAM_ID:
            raise SessionClosedError("SPDY stream ids exhausted: open a new connection")
        self._next_id += 2
        return sid

    async def _send(self, frame: Frame) -> None:
        await self._out.send(frame)

    async def _send_data(self, stream_id: int, data: bytes, fin: bool) -> None:
        await self._send(DataFrame(stream_id, data, FLAG_FIN if fin else 0))

    async def _send_rst(self, stream_id: int, status: int) -> None:
        await self._send(RstStream(stream_id, status))

    # --- reading ---

    async def _read_loop(self) -> None:
        data, self._initial = self._initial, b""
        if not data:
            data = await self._reader.read(READ_SIZE)
        while data:
            self._touch()
            self._decoder.feed(data)
            for frame in self._decoder:
                await self._dispatch(frame)
                if self._goaway_received or self._closed:
                    return
            data = await self._reader.read(READ_SIZE)

    async def _dispatch(self, frame: Frame) -> None:
        self._touch()
        match frame:
            case DataFrame():
                await self._on_data(frame)
            case SynStream():
                await self._on_syn_stream(frame)
            case SynReply(sid, _, flags):
                self._on_syn_reply(sid, flags)
            case RstStream(sid, status):
                stream = self._streams.pop(sid, None)
                if stream is not None:
                    stream.remote_reset(status)
            case Ping(pid):
                await self._on_ping(pid)
            case GoAway():
                self._goaway_received = True
            case Headers(sid, _, flags) if flags & FLAG_FIN:
                self._on_fin(sid)
            case _:
                pass  # SETTINGS, WINDOW_UPDATE, plain HEADERS: no flow control, as spdystream

    async def _on_syn_stream(self, f: SynStream) -> None:
        sid = f.stream_id
        if sid % 2 == self._own_parity or sid <= self._last_peer_id:
            await self._send_rst(sid, PROTOCOL_ERROR)  # spdystream does the same
            return
        self._last_peer_id = sid
        refusal = self._refusal(f)
        if refusal is not None:
            await self._send_rst(sid, refusal)
            return
        stream = SpdyStream(self, sid, f.headers)
        if f.flags & FLAG_UNIDIRECTIONAL:
            stream.mark_local_closed()  # we may not send on it
        self._streams[sid] = stream
        if f.fin:
            stream.remote_fin()
        await self._send(SynReply(sid))
        self._incoming.append(stream)
        self._incoming_ready.set()

    def _refusal(self, f: SynStream) -> int | None:
        if len(self._streams) >= self._max_streams:
            log.warning(
                "refusing SPDY stream: peer has too many open streams",
                extra={"stream_id": f.stream_id, "limit": self._max_streams},
            )
            return REFUSED_STREAM
        return self._filter(f.headers) if self._filter is not None else None

    def _on_syn_reply(self, sid: int, flags: int) -> None:
        stream = self._streams.get(sid)
        if stream is None:
            return
        if stream.reply is not None and not stream.reply.done():
            stream.reply.set_result(None)
        if flags & FLAG_FIN:
            stream.remote_fin()

    def _on_fin(self, sid: int) -> None:
        stream = self._streams.get(sid)
        if stream is not None and not stream.remote_closed:
            stream.remote_fin()

    async def _on_data(self, f: DataFrame) -> None:
        stream = self._streams.get(f.stream_id)
        if stream is None:
            # in-flight data for a stream that has ended is normal; a stream that
            # never existed is not
            if not self._ever_opened(f.stream_id):
                await self._send_rst(f.stream_id, INVALID_STREAM)
            return
        if stream.remote_closed:
            return  # data after the peer's own FIN: ignore, as spdystream does
        stream.deliver(f.data, f.fin)
        while stream.buffered > self._stream_buffer and not self._closed:
            self._room.clear()
            await self._room.wait()  # backpressure: stop reading until the consumer reads

    def _ever_opened(self, sid: int) -> bool:
        if sid % 2 == self._own_parity:
            return sid < self._next_id
        return sid <= self._last_peer_id

    async def _on_ping(self, pid: int) -> None:
        if pid % 2 == self._own_parity:
            waiter = self._pings.pop(pid, None)
            if waiter is not None and not waiter.done():
                waiter.set_result(None)
        else:
            await self._send(Ping(pid))  # echo the peer's ping unchanged

    # --- lifecycle ---

    async def _watch_idle(self) -> None:
        while (left := self._last_frame() + self._idle_timeout - time.monotonic()) > 0:
            await asyncio.sleep(left)
        log.info("closing idle SPDY session", extra={"idle_timeout": self._idle_timeout})

    def _last_frame(self) -> float:
        return max(self._last_read, self._out.last_write)

    def _exit_status(self, error: BaseException | None) -> int:
        if isinstance(error, ProtocolError):
            log.warning("closing SPDY session: %s", error.message)
            return error.status
        if error is not None and not isinstance(error, OSError):
            log.error("SPDY session failed", exc_info=error)
            return GOAWAY_INTERNAL_ERROR
        return GOAWAY_OK

    async def _close(self, status: int) -> None:
        if self._closed:
            return
        self._closed = True
        self._out.stop()
        self._end_everything()
        await self._out.goaway(GoAway(self._last_peer_id, status), CLOSE_GRACE)
        self._out.close()

    def _end_everything(self) -> None:
        for stream in [*self._streams.values(), *self._incoming]:
            stream.session_ended()
        self._streams.clear()
        self._incoming.clear()
        self._incoming_ready.set()
        self._room.set()
        for waiter in self._pings.values():
            if not waiter.done():
                waiter.set_exception(SessionClosedError("the SPDY session ended"))
                waiter.exception()  # ping() may have stopped waiting already
        self._pings.clear()

    def _touch(self) -> None:
        self._last_read = time.monotonic()

    def _room_freed(self) -> None:
        self._room.set()

    def _forget(self, stream: SpdyStream) -> None:
        if self._streams.get(stream.id) is stream:
            del self._streams[stream.id]


__all__ = [
    "ByteReader",
    "ByteWriter",
    "SessionClosedError",
    "SpdySession",
    "SpdyStream",
    "SpdyTimeout",
    "StreamClosedError",
    "StreamFilter",
]
