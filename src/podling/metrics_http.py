"""A tiny HTTP/1.1 server for Prometheus scrapes: GET /metrics, nothing else.

One request per connection (the response says `Connection: close`), so a scraper can never
hold the daemon's attention; a client that sends nothing useful within `timeout` seconds
is dropped. It serves plain http only: bind it to loopback or a trusted network.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable

import h11

from podling.errors import InvalidArgument

log = logging.getLogger(__name__)

CONTENT_TYPE = b"text/plain; version=0.0.4; charset=utf-8"


def parse_address(address: str) -> tuple[str, int]:
    """'127.0.0.1:9900' or '[::1]:9900' → (host, port); InvalidArgument if malformed."""
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise InvalidArgument(
            f"metrics address {address!r} is not HOST:PORT (e.g. 127.0.0.1:9900); "
            "fix [metrics] address in the config"
        )
    return host.strip("[]"), int(port)


class MetricsServer:
    """Serves `render()` at /metrics on `address` between start() and stop()."""

    def __init__(self, address: str, render: Callable[[], str], timeout: float = 10.0) -> None:
        self._host, self._port = parse_address(address)
        self._render = render
        self._timeout = timeout
        self._server: asyncio.Server | None = None

    @property
    def port(self) -> int:
        """The bound port (the real one when the address asked for port 0)."""
        if self._server is None or not self._server.sockets:
            return self._port
        return int(self._server.sockets[0].getsockname()[1])

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, self._host, self._port)
        log.info("serving metrics", extra={"address": f"{self._host}:{self.port}"})

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        conn = h11.Connection(h11.SERVER)
        try:
            request = await asyncio.wait_for(_read_request(conn, reader), self._timeout)
            if request is not None:
                writer.write(self._respond(conn, request))
                await asyncio.wait_for(writer.drain(), self._timeout)
        except (TimeoutError, ConnectionError, h11.ProtocolError) as e:
            log.debug("metrics connection dropped: %s", e)
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()

    def _respond(self, conn: h11.Connection, request: h11.Request) -> bytes:
        target = request.target.split(b"?", 1)[0]
        if target != b"/metrics":
            status, body = 404, b"not found: metrics are at /metrics\n"
        elif request.method not in (b"GET", b"HEAD"):
            status, body = 405, b"method not allowed: use GET\n"
        else:
            status, body = 200, self._render().encode()
        ctype = CONTENT_TYPE if status == 200 else b"text/plain; charset=utf-8"
        headers = [
            (b"content-type", ctype),
            (b"content-length", str(len(body)).encode()),
            (b"connection", b"close"),
        ]
        out = conn.send(h11.Response(status_code=status, headers=headers)) or b""
        if request.method != b"HEAD":
            out += conn.send(h11.Data(data=body)) or b""
        return out + (conn.send(h11.EndOfMessage()) or b"")


async def _read_request(conn: h11.Connection, reader: asyncio.StreamReader) -> h11.Request | None:
    """The next request's head, or None when the client goes away first."""
    while True:
        event = conn.next_event()
        if event is h11.NEED_DATA:
            conn.receive_data(await reader.read(65536))
            continue
        if isinstance(event, h11.Request):
            return event
        return None  # ConnectionClosed (or PAUSED, which a first request cannot be)
