"""A WebSocket connection over asyncio streams (wsproto does the framing), both roles.

`WsTransport` is what the server's exec/attach/port-forward handlers and the clients
use once the handshake is done: whole messages in, whole messages out, Pings answered
with Pongs on the way, a Close handshake at the end. `TunnelReader`/`TunnelWriter` turn
the binary messages into the byte stream a SpdySession reads and writes (§7.5).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Iterator
from typing import Protocol

from wsproto.connection import ConnectionState
from wsproto.events import (
    BytesMessage,
    CloseConnection,
    Event,
    Message,
    Ping,
    TextMessage,
)
from wsproto.utilities import LocalProtocolError, RemoteProtocolError

from podling.streaming.http_front import ByteReader


class WsProto(Protocol):
    """What wsproto's WSConnection (client) and Connection (server, framing only) share."""

    @property
    def state(self) -> ConnectionState: ...

    def send(self, event: Event) -> bytes: ...

    def receive_data(self, data: bytes | None) -> None: ...

    def events(self) -> Iterator[Event]: ...


class WsTransport:
    """Messages over one WebSocket. `recv` must have a single caller at a time; `send`
    may be called from several tasks. `last_activity` (monotonic) moves on every message
    in either direction, for idle timeouts."""

    def __init__(
        self,
        proto: WsProto,
        reader: ByteReader | asyncio.StreamReader,
        writer: asyncio.StreamWriter,
    ) -> None:
        self._ws = proto
        self._reader = reader
        self._writer = writer
        self._parts: list[bytes | str] = []
        self._closed = asyncio.Event()  # the peer's Close (or EOF) was seen
        self.close_code: int | None = None
        self.last_activity = time.monotonic()

    @property
    def closed(self) -> bool:
        return self._closed.is_set()

    async def recv(self) -> bytes | str | None:
        """The next complete message (bytes: binary, str: text); None once the peer
        closed (Close frame or EOF) — `close_code` then tells which (1006 = EOF)."""
        while not self.closed:
            for event in self._ws.events():
                message = await self._handle(event)
                if message is not None:
                    return message
            if self.closed:
                break
            data = await self._reader.read(65536)
            try:
                self._ws.receive_data(data or None)
            except (RemoteProtocolError, LocalProtocolError):
                self._peer_gone(1002)
        return None

    async def _handle(self, event: Event) -> bytes | str | None:
        if isinstance(event, Message):
            self._parts.append(event.data)
            if not event.message_finished:
                return None
            self.last_activity = time.monotonic()
            parts, self._parts = self._parts, []
            if isinstance(event, TextMessage):
                return "".join(p for p in parts if isinstance(p, str))
            return b"".join(p for p in parts if isinstance(p, bytes))
        if isinstance(event, Ping):
            self.last_activity = time.monotonic()
            await self._send_event(event.response())
        elif isinstance(event, CloseConnection):
            if self._ws.state is ConnectionState.REMOTE_CLOSING:
                await self._send_event(event.response())
            self._peer_gone(event.code)
        return None

    def _peer_gone(self, code: int) -> None:
        self.close_code = int(code)
        self._closed.set()

    async def send(self, data: bytes | str) -> None:
        """Send one binary (bytes) or text (str) message; ConnectionError once closed."""
        event: Event = TextMessage(data=data) if isinstance(data, str) else BytesMessage(data=data)
        if self._ws.state is not ConnectionState.OPEN:
            raise ConnectionError("the WebSocket connection is closed")
        self.last_activity = time.monotonic()
        await self._send_event(event)

    async def _send_event(self, event: Event) -> None:
        try:
            data = self._ws.send(event)
        except LocalProtocolError as e:
            raise ConnectionError(f"WebSocket: {e}") from None
        self._writer.write(data)
        await self._writer.drain()

    async def close(self, code: int = 1000, reason: str = "", *, wait: float = 10.0) -> None:
        """Send Close(code) unless already closing, wait up to `wait` s for the peer's
        Close or EOF (reading and discarding messages), then close the socket."""
        with contextlib.suppress(ConnectionError, OSError):
            if self._ws.state is ConnectionState.OPEN:
                await self._send_event(CloseConnection(code=code, reason=reason))
            with contextlib.suppress(asyncio.TimeoutError):
                async with asyncio.timeout(wait):
                    while await self.recv() is not None:
                        pass
        self._writer.close()
        with contextlib.suppress(OSError, asyncio.TimeoutError):
            async with asyncio.timeout(2):
                await self._writer.wait_closed()


class TunnelReader:
    """The concatenated payloads of the binary messages, read as a byte stream; b"" at
    the peer's Close. Text messages are a protocol error and end the stream."""

    def __init__(self, ws: WsTransport) -> None:
        self._ws = ws
        self._buf = b""

    async def read(self, n: int) -> bytes:
        while not self._buf:
            message = await self._ws.recv()
            if message is None or isinstance(message, str):
                return b""
            self._buf = message
        data, self._buf = self._buf[:n], self._buf[n:]
        return data


class TunnelWriter:
    """Collects written bytes and sends them as one binary message per `drain`."""

    def __init__(self, ws: WsTransport) -> None:
        self._ws = ws
        self._pending: list[bytes] = []
        self._lock = asyncio.Lock()

    def write(self, data: bytes) -> None:
        self._pending.append(bytes(data))

    async def drain(self) -> None:
        # the lock keeps the messages in the order the bytes were written
        async with self._lock:
            if self._pending:
                data, self._pending = b"".join(self._pending), []
                await self._ws.send(data)

    def close(self) -> None:
        """Closing is done by the owner of the WsTransport (Close handshake)."""
