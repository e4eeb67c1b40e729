"""A small HTTP/1.1 client for registries: h11 for the protocol, asyncio streams for the
transport, kept-alive connections per origin.

Why not aiohttp: importing it adds ~12 MB to the daemon's RSS (measured, see
docs/performance.md), and a registry client needs little of it: GET/HEAD/POST, headers,
redirects handled by the caller, streamed bodies, TLS with the system's CAs.

Contract:
- `HttpClient.request()` returns a `Response` whose headers are read; the body is read
  with `iter_chunked()` / `read()` / `json()`. The caller must `release()` it (or use
  `async with`): a fully read body returns the connection to the pool, anything else
  closes it.
- Bodies are never decoded (no gzip): blobs must arrive byte-exact for digest checks.
- Errors: `ConnectError` (cannot connect: refused, DNS, TLS handshake), `HttpError`
  (the connection broke or the server broke the protocol), `TimeoutError` (connect took
  longer than `connect_timeout`, or no byte arrived for `read_timeout` seconds).
- A request on a kept-alive connection that the server closed meanwhile is retried once
  on a new connection (only before any byte of the answer arrived).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import ssl
from collections.abc import AsyncIterator, Mapping, Sequence
from typing import Any, cast, overload
from urllib.parse import urlencode, urlsplit

import h11

_READ = 65536
_POOL_PER_ORIGIN = 8

Origin = tuple[str, str, int]


class HttpError(Exception):
    """The exchange failed after the connection was made."""


class ConnectError(HttpError):
    """No connection to the server (refused, unknown host, TLS handshake failed)."""


def origin_of(url: str) -> Origin:
    """(scheme, host, port) of an absolute http(s) URL; ValueError for anything else."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"not an absolute http(s) URL: {url!r}")
    port = parts.port or (443 if parts.scheme == "https" else 80)
    return parts.scheme, parts.hostname, port


class Headers:
    """Response headers, looked up case-insensitively (the first value of a name)."""

    def __init__(self, raw: Sequence[tuple[bytes, bytes]]) -> None:
        self._items = [(k.decode("latin-1").lower(), v.decode("latin-1")) for k, v in raw]

    @overload
    def get(self, name: str) -> str | None: ...
    @overload
    def get(self, name: str, default: str) -> str: ...
    def get(self, name: str, default: str | None = None) -> str | None:
        name = name.lower()
        return next((v for k, v in self._items if k == name), default)

    def __getitem__(self, name: str) -> str:
        value = self.get(name)
        if value is None:
            raise KeyError(name)
        return value

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and self.get(name) is not None


class _Connection:
    def __init__(
        self, origin: Origin, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        self.origin = origin
        self.reader, self.writer = reader, writer
        self.h11 = h11.Connection(h11.CLIENT)

    async def send(self, *events: h11.Event) -> None:
        for event in events:
            data = self.h11.send(event)
            if data:
                self.writer.write(data)
        await self.writer.drain()

    async def next_event(self, timeout: float | None) -> h11.Event:
        while True:
            try:
                event = self.h11.next_event()
            except h11.RemoteProtocolError as e:
                raise HttpError(f"protocol error from {self.origin[1]}: {e}") from e
            if event is h11.PAUSED:
                raise HttpError(f"{self.origin[1]} sent more than one answer")
            if event is not h11.NEED_DATA:
                return cast(h11.Event, event)
            async with asyncio.timeout(timeout):
                data = await self.reader.read(_READ)
            self.h11.receive_data(data)

    def reusable(self) -> bool:
        return self.h11.our_state is h11.DONE and self.h11.their_state is h11.DONE

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.writer.close()


class Response:
    """An answer whose status and headers are read; the body is read on demand."""

    def __init__(
        self,
        client: HttpClient,
        conn: _Connection,
        resp: h11.Response,
        url: str,
        read_timeout: float | None,
    ) -> None:
        self._client, self._conn = client, conn
        self.status: int = resp.status_code
        self.headers = Headers(resp.headers)
        self.url = url
        self._timeout = read_timeout
        self._done = False

    @property
    def content_length(self) -> int | None:
        value = self.headers.get("Content-Length")
        return int(value) if value is not None and value.isdigit() else None

    async def iter_chunked(self, size: int = _READ) -> AsyncIterator[bytes]:
        """The body, in pieces of at most `size` bytes, as they arrive."""
        while not self._done:
            try:
                event = await self._conn.next_event(self._timeout)
            except TimeoutError:
                raise  # a stall: the caller says how long it waited
            except OSError as e:
                raise HttpError(f"connection to {self._conn.origin[1]} broke: {e}") from e
            if isinstance(event, h11.Data):
                data = bytes(event.data)
                for start in range(0, len(data), size):
                    yield data[start : start + size]
            elif isinstance(event, h11.EndOfMessage):
                self._done = True
            elif isinstance(event, h11.ConnectionClosed):
                raise HttpError(f"{self._conn.origin[1]} closed the connection mid-answer")

    async def read(self, limit: int | None = None) -> bytes:
        """The body (at most `limit` bytes: the rest is dropped with the connection)."""
        buf = bytearray()
        async for chunk in self.iter_chunked():
            buf += chunk
            if limit is not None and len(buf) >= limit:
                return bytes(buf[:limit])
        return bytes(buf)

    async def json(self) -> Any:
        """The body parsed as JSON; ValueError if it is not JSON."""
        return json.loads(await self.read())

    def release(self) -> None:
        """Give the connection back (body fully read) or close it (anything else)."""
        conn = self._conn
        if self._done and conn.reusable():
            conn.h11.start_next_cycle()
            self._client._give_back(conn)
        else:
            conn.close()

    async def __aenter__(self) -> Response:
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.release()


class HttpClient:
    """Kept-alive HTTP/1.1 connections to registries; see the module docstring."""

    def __init__(
        self,
        *,
        user_agent: str,
        connect_timeout: float | None,
        read_timeout: float | None,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self._headers = [("User-Agent", user_agent), ("Accept-Encoding", "identity")]
        self._connect_timeout = connect_timeout
        self._read_timeout = read_timeout
        self._ssl = ssl_context
        self._idle: dict[Origin, list[_Connection]] = {}

    async def request(
        self,
        method: str,
        url: str,
        *,
        headers: Mapping[str, str] | None = None,
        params: Sequence[tuple[str, str]] | None = None,
        form: Sequence[tuple[str, str]] | None = None,
    ) -> Response:
        """Send one request (no redirect is followed) and read the answer's head."""
        if params:
            url += ("&" if "?" in url else "?") + urlencode(params)
        body = urlencode(form).encode() if form is not None else b""
        origin = origin_of(url)
        sent = [*self._headers, *(headers or {}).items(), *self._body_headers(form, body)]
        target = _target(url)
        for attempt in range(2):
            conn, reused = await self._connection(origin)
            try:
                return await self._exchange(conn, method, target, sent, body, url)
            except _Stale:
                conn.close()
                if attempt or not reused:
                    raise HttpError(f"{origin[1]} closed the connection before answering") from None
        raise AssertionError("unreachable")

    @staticmethod
    def _body_headers(form: object, body: bytes) -> list[tuple[str, str]]:
        if form is None:
            return []
        return [
            ("Content-Type", "application/x-www-form-urlencoded"),
            ("Content-Length", str(len(body))),
        ]

    async def _exchange(
        self,
        conn: _Connection,
        method: str,
        target: str,
        headers: list[tuple[str, str]],
        body: bytes,
        url: str,
    ) -> Response:
        host = (
            conn.origin[1] if conn.origin[2] in (80, 443) else f"{conn.origin[1]}:{conn.origin[2]}"
        )
        request = h11.Request(method=method, target=target, headers=[("Host", host), *headers])
        try:
            events: list[h11.Event] = [request]
            if body:
                events.append(h11.Data(data=body))
            await conn.send(*events, h11.EndOfMessage())
            event = await conn.next_event(self._read_timeout)
            while isinstance(event, h11.InformationalResponse):
                event = await conn.next_event(self._read_timeout)
        except TimeoutError:
            conn.close()
            raise
        except (OSError, HttpError) as e:
            raise _Stale() from e
        if isinstance(event, h11.ConnectionClosed):
            raise _Stale()
        if not isinstance(event, h11.Response):
            conn.close()
            raise HttpError(f"unexpected answer from {conn.origin[1]}: {event!r}")
        return Response(self, conn, event, url, self._read_timeout)

    async def _connection(self, origin: Origin) -> tuple[_Connection, bool]:
        idle = self._idle.get(origin)
        while idle:
            conn = idle.pop()
            if not conn.reader.at_eof():
                return conn, True
            conn.close()
        return await self._connect(origin), False

    async def _connect(self, origin: Origin) -> _Connection:
        scheme, host, port = origin
        tls = self._tls() if scheme == "https" else None
        try:
            async with asyncio.timeout(self._connect_timeout):
                reader, writer = await asyncio.open_connection(
                    host, port, ssl=tls, server_hostname=host if tls else None, limit=_READ * 4
                )
        except TimeoutError:
            raise
        except (OSError, ssl.SSLError) as e:
            raise ConnectError(f"cannot connect to {host}:{port}: {e.strerror or e}") from e
        return _Connection(origin, reader, writer)

    def _tls(self) -> ssl.SSLContext:
        # made on the first https registry: loading the system's CAs takes a few ms
        if self._ssl is None:
            self._ssl = ssl.create_default_context()
        return self._ssl

    def _give_back(self, conn: _Connection) -> None:
        idle = self._idle.setdefault(conn.origin, [])
        if len(idle) < _POOL_PER_ORIGIN:
            idle.append(conn)
        else:
            conn.close()

    async def close(self) -> None:
        """Close every idle connection (answers still held by callers close on release)."""
        for conns in self._idle.values():
            for conn in conns:
                conn.close()
        self._idle.clear()


class _Stale(Exception):
    """The connection failed before any byte of the answer: safe to retry once."""


def _target(url: str) -> str:
    parts = urlsplit(url)
    return (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
