"""Client side of the streaming handshakes: connect to a stream URL and upgrade it to
SPDY/3.1 (POST, X-Stream-Protocol-Version) or WebSocket (GET, Sec-WebSocket-Protocol).

Refusals become PodlingError subclasses carrying the server's text: 404 → NotFound
(the token is unknown, used or expired: ask for a new URL), 429 → ResourceExhausted,
other statuses → FailedPrecondition; connection failures → Unavailable.
"""

from __future__ import annotations

import asyncio
import ssl
from dataclasses import dataclass
from urllib.parse import urlsplit

import h11
from wsproto import ConnectionType, WSConnection
from wsproto.events import AcceptConnection, RejectConnection, RejectData, Request
from wsproto.utilities import RemoteProtocolError

from podling.errors import (
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    PodlingError,
    ResourceExhausted,
    Unavailable,
)
from podling.streaming.http_front import ByteReader
from podling.streaming.wsconn import WsTransport

_MAX_ERROR_BODY = 64 * 1024


@dataclass
class Upgraded:
    """An upgraded connection: `reader` yields the bytes after the 101 response."""

    reader: ByteReader
    writer: asyncio.StreamWriter
    protocol: str  # the negotiated X-Stream-Protocol-Version / WebSocket subprotocol


def _insecure_tls() -> ssl.SSLContext:
    # like crictl without --tls-* flags: the stream URL's token is the credential
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


async def connect(
    url: str, tls: ssl.SSLContext | None = None
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter, str, str]:
    """Open a TCP (https: TLS) connection for `url`; returns reader, writer, Host, path."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise InvalidArgument(f"stream URL {url!r} is not an absolute http(s) URL")
    port = parts.port or (443 if parts.scheme == "https" else 80)
    ctx = (tls or _insecure_tls()) if parts.scheme == "https" else None
    try:
        reader, writer = await asyncio.open_connection(parts.hostname, port, ssl=ctx)
    except OSError as e:
        raise Unavailable(f"cannot connect to the streaming server at {parts.netloc}: {e}") from e
    path = parts.path or "/"
    if parts.query:
        path += "?" + parts.query
    return reader, writer, parts.netloc, path


def _http_error(status: int, body: bytes) -> PodlingError:
    text = body.decode("utf-8", "replace").strip() or f"HTTP status {status}"
    if status == 404:
        return NotFound(f"stream URL refused: {text} (request a new URL)")
    if status == 429:
        return ResourceExhausted(f"streaming server busy: {text}")
    return FailedPrecondition(f"streaming upgrade refused ({status}): {text}")


async def spdy_upgrade(
    url: str, versions: list[str], tls: ssl.SSLContext | None = None
) -> Upgraded:
    """POST the SPDY/3.1 upgrade offering `versions` (in preference order)."""
    reader, writer, host, path = await connect(url, tls)
    try:
        return await _spdy_handshake(reader, writer, host, path, versions)
    except BaseException:
        writer.close()
        raise


async def _spdy_handshake(
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    host: str,
    path: str,
    versions: list[str],
) -> Upgraded:
    conn = h11.Connection(h11.CLIENT)
    headers = [
        ("Host", host),
        ("Content-Length", "0"),
        ("Connection", "Upgrade"),
        ("Upgrade", "SPDY/3.1"),
    ]
    headers += [("X-Stream-Protocol-Version", v) for v in versions]
    writer.write(conn.send(h11.Request(method="POST", target=path, headers=headers)))
    writer.write(conn.send(h11.EndOfMessage()))
    await writer.drain()
    response, body = await _read_response(reader, conn)
    if response.status_code != 101:
        raise _http_error(response.status_code, body)
    got = {k.lower(): v.decode("latin-1") for k, v in response.headers}
    if "spdy/3.1" not in got.get(b"upgrade", "").lower():
        raise FailedPrecondition("streaming server did not switch to SPDY/3.1")
    # a server that does not echo the version speaks v1 (as the Go client assumes)
    version = got.get(b"x-stream-protocol-version", "channel.k8s.io")
    if version not in versions:
        raise FailedPrecondition(f"streaming server chose unrequested protocol {version!r}")
    return Upgraded(ByteReader(reader, conn.trailing_data[0]), writer, version)


async def _read_response(
    reader: asyncio.StreamReader, conn: h11.Connection
) -> tuple[h11.InformationalResponse | h11.Response, bytes]:
    response: h11.InformationalResponse | h11.Response | None = None
    body = b""
    while True:
        try:
            event = conn.next_event()
        except h11.RemoteProtocolError as e:
            raise Unavailable(f"streaming server sent a malformed response: {e}") from None
        if event is h11.NEED_DATA:
            data = await reader.read(65536)
            if not data and response is None:
                raise Unavailable("streaming server closed the connection during the handshake")
            conn.receive_data(data)
        elif isinstance(event, h11.InformationalResponse) and event.status_code == 101:
            return event, b""
        elif isinstance(event, h11.Response):
            response = event
        elif isinstance(event, h11.Data):
            body = (body + bytes(event.data))[:_MAX_ERROR_BODY]
        elif response is not None:  # EndOfMessage, ConnectionClosed, PAUSED
            return response, body


async def websocket_upgrade(
    url: str, subprotocols: list[str], tls: ssl.SSLContext | None = None
) -> tuple[WsTransport, str]:
    """GET the WebSocket upgrade offering `subprotocols`; (transport, chosen one).
    The server must choose one of them when any were offered."""
    reader, writer, host, path = await connect(url, tls)
    try:
        conn = WSConnection(ConnectionType.CLIENT)
        writer.write(conn.send(Request(host=host, target=path, subprotocols=subprotocols)))
        await writer.drain()
        chosen = await _ws_handshake(reader, conn)
    except BaseException:
        writer.close()
        raise
    if subprotocols and chosen not in subprotocols:
        writer.close()
        raise FailedPrecondition(
            f"invalid protocol, expected one of {subprotocols}, got {chosen!r}"
        )
    return WsTransport(conn, reader, writer), chosen or ""


async def _ws_handshake(reader: asyncio.StreamReader, conn: WSConnection) -> str | None:
    status, body = 0, b""
    while True:
        for event in conn.events():
            if isinstance(event, AcceptConnection):
                return event.subprotocol
            if isinstance(event, RejectConnection):
                status = event.status_code
                if not event.has_body:
                    raise _http_error(status, b"")
            elif isinstance(event, RejectData):
                body = (body + event.data)[:_MAX_ERROR_BODY]
                if event.body_finished:
                    raise _http_error(status, body)
        data = await reader.read(65536)
        if not data:
            if status:
                raise _http_error(status, body)
            raise Unavailable("streaming server closed the connection during the handshake")
        try:
            conn.receive_data(data)
        except RemoteProtocolError as e:
            raise Unavailable(f"streaming server sent a malformed handshake: {e}") from None
