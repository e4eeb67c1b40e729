"""Port-forward client: one forwarded TCP connection over SPDY or the SPDY-over-WebSocket
tunnel (`SPDY/3.1+portforward.k8s.io`, what `crictl port-forward -r websocket` uses)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import ssl
from typing import Literal

from podling.errors import Unavailable
from podling.streaming.client_http import spdy_upgrade, websocket_upgrade
from podling.streaming.spdy.session import SpdySession, SpdyStream
from podling.streaming.wsconn import TunnelReader, TunnelWriter, WsTransport

PORTFORWARD = "portforward.k8s.io"
TUNNEL = "SPDY/3.1+" + PORTFORWARD
ERROR_WAIT = 5.0  # after data EOF, how long the server may take to finish the error stream


class ForwardedConnection:
    """One TCP connection to a port in the pod.

    `read()` returns data from the pod (b"" at its EOF) and raises Unavailable with the
    server's message if the forward failed (e.g. nothing listens on the port);
    `write()` sends to the pod; `close_write()` half-closes towards the pod; `close()`
    ends the forward and the connection carrying it (always call it)."""

    def __init__(
        self,
        session: SpdySession,
        runner: asyncio.Task[None],
        error: SpdyStream,
        data: SpdyStream,
        transport: WsTransport | asyncio.StreamWriter,
    ) -> None:
        self._session = session
        self._runner = runner
        self._data = data
        self._error_text = asyncio.create_task(_read_all(error))
        self._transport = transport

    async def read(self) -> bytes:
        data = await self._data.read()
        if not data:
            await self._raise_error(ERROR_WAIT)
        return data

    async def write(self, data: bytes) -> None:
        try:
            await self._data.write(data)
        except ConnectionError as e:
            await self._raise_error(1.0)
            raise Unavailable(f"port-forward connection closed: {e}") from e

    async def close_write(self) -> None:
        """Half-close: the pod sees EOF; reading goes on."""
        with contextlib.suppress(ConnectionError):
            await self._data.close()

    async def error(self) -> str:
        """The error text the server reported for this connection ('' if none); waits
        until the server ended the error stream."""
        return (await self._error_text).decode("utf-8", "replace").strip()

    async def _raise_error(self, wait: float) -> None:
        done, _ = await asyncio.wait({self._error_text}, timeout=wait)
        if done and (text := await self.error()):
            raise Unavailable(_message(text))

    async def close(self) -> None:
        with contextlib.suppress(ConnectionError, OSError):
            if not self._data.remote_closed or not self._data.local_closed:
                await self._data.reset()
            await self._session.close()
        self._error_text.cancel()
        self._runner.cancel()
        await asyncio.gather(self._error_text, self._runner, return_exceptions=True)
        if isinstance(self._transport, WsTransport):
            await self._transport.close(1000, wait=2.0)
        else:
            self._transport.close()


def _message(text: str) -> str:
    """The `message` of the server's JSON error line, or the raw text."""
    with contextlib.suppress(ValueError):
        obj = json.loads(text.splitlines()[0])
        if isinstance(obj, dict) and obj.get("message"):
            return str(obj["message"])
    return text


async def _read_all(stream: SpdyStream) -> bytes:
    parts = []
    while data := await stream.read():
        parts.append(data)
    return b"".join(parts)


async def port_forward(
    url: str,
    port: int,
    *,
    protocol: Literal["spdy", "websocket"] = "spdy",
    tls: ssl.SSLContext | None = None,
) -> ForwardedConnection:
    """Forward one TCP connection to `port` in the pod of the port-forward `url`. The
    URL is single-use: one call per URL. Unavailable/NotFound/FailedPrecondition when
    the upgrade or stream creation fails; dial errors surface on read()/write()."""
    transport: WsTransport | asyncio.StreamWriter
    if protocol == "websocket":
        ws, _ = await websocket_upgrade(url, [TUNNEL], tls)
        session = SpdySession(TunnelReader(ws), TunnelWriter(ws), server=False)
        transport = ws
    else:
        up = await spdy_upgrade(url, [PORTFORWARD], tls)
        session = SpdySession(up.reader, up.writer, server=False)
        transport = up.writer
    runner = asyncio.create_task(session.run())
    try:
        headers = {"port": str(port), "requestid": "0"}
        error = await session.open({"streamtype": "error", **headers})
        await error.close()  # the client never writes to it
        data = await session.open({"streamtype": "data", **headers})
    except (ConnectionError, TimeoutError) as e:
        runner.cancel()
        await asyncio.gather(runner, return_exceptions=True)
        if isinstance(transport, WsTransport):
            await transport.close(1000, wait=1.0)
        else:
            transport.close()
        raise Unavailable(f"could not open the port-forward streams for port {port}: {e}") from e
    return ForwardedConnection(session, runner, error, data, transport)
