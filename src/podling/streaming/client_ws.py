"""Remote-command client over WebSocket channel protocols (default v5.channel.k8s.io,
as `crictl exec -r websocket`; the legacy ones for tests and old-style clients)."""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable

from podling.errors import Internal, Unavailable
from podling.streaming.client_http import websocket_upgrade
from podling.streaming.status import decode_status, resize_message
from podling.streaming.ws import CLOSE, ERROR, RESIZE, STDERR, STDIN, STDOUT, V5, ChannelCodec
from podling.streaming.wsconn import WsTransport

Output = Callable[[bytes], Awaitable[None]]


async def remote_command(
    url: str,
    *,
    stdin: AsyncIterator[bytes] | None,
    stdout: Output | None,
    stderr: Output | None,
    tty: bool,
    resizes: AsyncIterator[tuple[int, int]] | None = None,
    subprotocol: str = V5,
    tls: ssl.SSLContext | None = None,
) -> int:
    """As client.remote_command over a WebSocket offering only `subprotocol` ("" offers
    none: legacy binary framing). Only v5 can tell the server that stdin ended."""
    ws, chosen = await websocket_upgrade(url, [subprotocol] if subprotocol else [], tls)
    codec = ChannelCodec(chosen)
    feeders = []
    if stdin is not None:
        feeders.append(asyncio.create_task(_feed_stdin(ws, codec, stdin, chosen == V5)))
    if resizes is not None and tty:
        feeders.append(asyncio.create_task(_feed_resizes(ws, codec, resizes)))
    try:
        payload = await _read_output(ws, codec, stdout, stderr)
    finally:
        for task in feeders:
            task.cancel()
        await asyncio.gather(*feeders, return_exceptions=True)
        await ws.close(1000, wait=2.0)
    return decode_status(payload, json_status=chosen.startswith(("v4.", "v5.")))


async def _read_output(
    ws: WsTransport, codec: ChannelCodec, stdout: Output | None, stderr: Output | None
) -> bytes:
    """Deliver output until the server's Close; the error channel's content."""
    error = b""
    while (message := await ws.recv()) is not None:
        try:
            decoded = codec.decode(message)
        except ValueError as e:
            raise Internal(f"WebSocket stream protocol error: {e}") from None
        if decoded is None:
            continue
        channel, payload = decoded
        if channel == STDOUT and stdout is not None and payload:
            await stdout(payload)
        elif channel == STDERR and stderr is not None and payload:
            await stderr(payload)
        elif channel == ERROR:
            error += payload
    if ws.close_code != 1000:
        raise Unavailable(
            f"the streaming connection was lost before the command finished "
            f"(close code {ws.close_code})"
        )
    return error


async def _feed_stdin(
    ws: WsTransport, codec: ChannelCodec, source: AsyncIterator[bytes], v5: bool
) -> None:
    with contextlib.suppress(ConnectionError):
        async for chunk in source:
            if chunk:
                await ws.send(codec.encode(STDIN, chunk))
        if v5:
            await ws.send(bytes([CLOSE, STDIN]))


async def _feed_resizes(
    ws: WsTransport, codec: ChannelCodec, sizes: AsyncIterator[tuple[int, int]]
) -> None:
    with contextlib.suppress(ConnectionError):
        async for width, height in sizes:
            await ws.send(codec.encode(RESIZE, resize_message(width, height)))
