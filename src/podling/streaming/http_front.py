"""The HTTP/1.1 front door of the streaming server: request head, errors, 101 replies.

One connection carries one request; it is either refused with a plain-text error and
`Connection: close`, or switched (101) to SPDY or WebSocket. h11 parses the head; the
bytes that arrived after it belong to the upgraded protocol and are kept (`leftover`).
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
from dataclasses import dataclass

import h11

from podling.errors import InvalidArgument

_MAX_HEAD = 64 * 1024
_WS_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


class HttpError(Exception):
    """A request refused before the upgrade: status, text body, extra headers."""

    def __init__(self, status: int, text: str, headers: list[tuple[str, str]] | None = None):
        super().__init__(text)
        self.status = status
        self.text = text
        self.headers = headers or []


@dataclass
class Request:
    method: str
    path: str
    headers: list[tuple[str, str]]  # names lowercased, in arrival order
    conn: h11.Connection
    leftover: bytes = b""

    def values(self, name: str) -> list[str]:
        """Every value of header `name`, comma lists split, blanks dropped."""
        out: list[str] = []
        for key, value in self.headers:
            if key == name:
                out.extend(v.strip() for v in value.split(",") if v.strip())
        return out

    def header(self, name: str) -> str:
        return ", ".join(v for k, v in self.headers if k == name)


class ByteReader:
    """An asyncio StreamReader with the bytes read past the HTTP head put back in front."""

    def __init__(self, reader: asyncio.StreamReader, prefix: bytes = b"") -> None:
        self._reader = reader
        self._prefix = prefix

    async def read(self, n: int) -> bytes:
        if self._prefix:
            data, self._prefix = self._prefix[:n], self._prefix[n:]
            return data
        return await self._reader.read(n)


async def read_request(reader: asyncio.StreamReader) -> Request:
    """Parse one request head (and skip a Content-Length body). HttpError 400 when the
    bytes are not HTTP, or the peer closed before a complete head."""
    conn = h11.Connection(h11.SERVER, max_incomplete_event_size=_MAX_HEAD)
    req: h11.Request | None = None
    while True:
        try:
            event = conn.next_event()
        except h11.RemoteProtocolError as e:
            raise HttpError(400, f"malformed HTTP request: {e}") from None
        if event is h11.NEED_DATA:
            data = await reader.read(65536)
            if not data and req is None:
                raise HttpError(400, "connection closed before the request head was complete")
            conn.receive_data(data)
        elif isinstance(event, h11.Request):
            req = event
        elif isinstance(event, h11.EndOfMessage) or event is h11.PAUSED:
            if event is h11.PAUSED or not _is_upgrade(req):
                break
        elif isinstance(event, h11.ConnectionClosed):
            break
    assert req is not None
    headers = [(k.decode("latin-1").lower(), v.decode("latin-1")) for k, v in req.headers]
    leftover, _ = conn.trailing_data
    return Request(req.method.decode(), req.target.decode("latin-1"), headers, conn, leftover)


def _is_upgrade(req: h11.Request | None) -> bool:
    return req is not None and any(k.lower() == b"upgrade" for k, _ in req.headers)


async def send_error(writer: asyncio.StreamWriter, req: Request | None, err: HttpError) -> None:
    """Write a plain-text error response and close the connection."""
    body = (err.text.rstrip("\n") + "\n").encode()
    headers = [
        ("Content-Type", "text/plain; charset=utf-8"),
        ("Content-Length", str(len(body))),
        ("Connection", "close"),
        *err.headers,
    ]
    reason = _REASONS.get(err.status, "Error").encode()
    response = h11.Response(status_code=err.status, headers=headers, reason=reason)
    if req is not None and req.conn.our_state is h11.SEND_RESPONSE:
        data = req.conn.send(response) + req.conn.send(h11.Data(data=body))
        data += req.conn.send(h11.EndOfMessage())
    else:  # the head did not parse: h11 cannot answer, format by hand
        lines = [f"HTTP/1.1 {err.status} {reason.decode()}"] + [f"{k}: {v}" for k, v in headers]
        data = ("\r\n".join(lines) + "\r\n\r\n").encode() + body
    writer.write(data)
    await writer.drain()


async def send_switch(
    writer: asyncio.StreamWriter, req: Request, headers: list[tuple[str, str]]
) -> None:
    """Answer 101 Switching Protocols with `headers`; the connection is raw bytes after."""
    data = req.conn.send(
        h11.InformationalResponse(status_code=101, headers=headers, reason=b"Switching Protocols")
    )
    writer.write(data)
    await writer.drain()


def is_websocket(req: Request) -> bool:
    """RFC 6455: Upgrade is `websocket` and Connection lists `upgrade`."""
    return req.header("upgrade").lower() == "websocket" and _connection_upgrade(req)


def is_spdy(req: Request) -> bool:
    """As the Go server checks: substring matches, case-insensitive."""
    return "spdy/3.1" in req.header("upgrade").lower() and _connection_upgrade(req)


def _connection_upgrade(req: Request) -> bool:
    return "upgrade" in (v.lower() for v in req.values("connection"))


def negotiate(offered: list[str], supported: tuple[str, ...], what: str) -> str:
    """The first of the client's `offered` protocols the server supports (client order).
    HttpError 400 when nothing was offered, 403 (with the accepted list) on no match."""
    if not offered:
        raise HttpError(400, f"unable to upgrade: no {what} offered by the client")
    for proto in offered:
        if proto in supported:
            return proto
    raise HttpError(
        403,
        f"unable to upgrade: unable to negotiate protocol: client supports {offered}, "
        f"server accepts {list(supported)}",
        [("X-Accepted-Stream-Protocol-Versions", p) for p in supported],
    )


def websocket_accept(req: Request) -> str:
    """The Sec-WebSocket-Accept value for the request's key (400 if malformed)."""
    key = req.header("sec-websocket-key").strip()
    try:
        if len(base64.b64decode(key, validate=True)) != 16:
            raise ValueError(key)
    except ValueError:
        raise HttpError(400, "unable to upgrade: invalid Sec-WebSocket-Key") from None
    if req.header("sec-websocket-version").strip() != "13":
        raise HttpError(
            400,
            "unable to upgrade: unsupported Sec-WebSocket-Version (13 required)",
            [("Sec-WebSocket-Version", "13")],
        )
    return base64.b64encode(hashlib.sha1(key.encode() + _WS_GUID).digest()).decode()


def split_path(path: str) -> tuple[str, str]:
    """'/exec/TOKEN?x' → ('exec', 'TOKEN'); InvalidArgument when the shape is wrong."""
    parts = path.split("?", 1)[0].split("/")
    if len(parts) != 3 or parts[0] or not parts[1] or not parts[2]:
        raise InvalidArgument(f"no streaming route for {path!r}")
    return parts[1], parts[2]


_REASONS = {
    400: "Bad Request",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    429: "Too Many Requests",
    500: "Internal Server Error",
}
