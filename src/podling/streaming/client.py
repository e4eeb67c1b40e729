"""Clients for the streaming server: remote command (exec / attach) and port-forward,
over SPDY/3.1 (what crictl and the kubelet use) or WebSocket.

Used by the `podling` CLI and by tests. Errors are PodlingError subclasses: NotFound
(stale URL), Unavailable (connection lost), FailedPrecondition (upgrade refused),
Internal (the server reported a failure, or broke the protocol).
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Literal

from podling.errors import Unavailable
from podling.streaming import client_ws
from podling.streaming.client_http import spdy_upgrade
from podling.streaming.client_portforward import ForwardedConnection, port_forward
from podling.streaming.spdy.session import SpdySession, SpdyStream
from podling.streaming.status import decode_status, resize_message

__all__ = ["ForwardedConnection", "decode_status", "port_forward", "remote_command"]

Output = Callable[[bytes], Awaitable[None]]
# the client's preference, as client-go offers them
SPDY_VERSIONS = [
    "v5.channel.k8s.io",
    "v4.channel.k8s.io",
    "v3.channel.k8s.io",
    "v2.channel.k8s.io",
    "channel.k8s.io",
]


async def remote_command(
    url: str,
    *,
    protocol: Literal["spdy", "websocket"] = "spdy",
    stdin: AsyncIterator[bytes] | None,
    stdout: Output | None,
    stderr: Output | None,
    tty: bool,
    resizes: AsyncIterator[tuple[int, int]] | None = None,
    tls: ssl.SSLContext | None = None,
) -> int:
    """Run an exec / attach session on a stream URL and return the remote exit code (0
    on success; attach always 0). The streams opened follow the arguments: stdin when
    `stdin` is given (its end closes the remote stdin), stdout / stderr when their
    callbacks are given (no stderr with a tty), resize with a tty; they must match the
    CRI request the URL came from. Output is delivered through the callbacks in order.
    websocket = `v5.channel.k8s.io`. https URLs use TLS (unverified unless `tls`)."""
    if protocol == "websocket":
        return await client_ws.remote_command(
            url, stdin=stdin, stdout=stdout, stderr=stderr, tty=tty, resizes=resizes, tls=tls
        )
    up = await spdy_upgrade(url, SPDY_VERSIONS, tls)
    session = SpdySession(up.reader, up.writer, server=False)
    runner = asyncio.create_task(session.run())
    try:
        payload = await _spdy_session(
            session, runner, up.protocol, stdin, stdout, stderr if not tty else None, tty, resizes
        )
    finally:
        with contextlib.suppress(ConnectionError, OSError):
            await session.close()
        runner.cancel()
        await asyncio.gather(runner, return_exceptions=True)
        up.writer.close()
    return decode_status(payload, json_status=up.protocol.startswith(("v4.", "v5.")))


async def _spdy_session(
    session: SpdySession,
    runner: asyncio.Task[None],
    version: str,
    stdin: AsyncIterator[bytes] | None,
    stdout: Output | None,
    stderr: Output | None,
    tty: bool,
    resizes: AsyncIterator[tuple[int, int]] | None,
) -> bytes:
    """Open the streams (error, stdin, stdout, stderr, resize: that order), pump them,
    and return the error stream's content once stdout, stderr and error ended."""
    try:
        error = await session.open({"streamtype": "error"})
        streams = {}
        for kind, wanted in (("stdin", stdin), ("stdout", stdout), ("stderr", stderr)):
            if wanted is not None:
                streams[kind] = await session.open({"streamtype": kind})
        if tty and version not in ("channel.k8s.io", "v2.channel.k8s.io"):
            streams["resize"] = await session.open({"streamtype": "resize"})
    except (ConnectionError, TimeoutError) as e:
        raise Unavailable(f"could not open the exec streams: {e}") from e
    feeders: list[asyncio.Task[None]] = []
    if stdin is not None:
        feeders.append(asyncio.create_task(_feed_stdin(streams["stdin"], stdin)))
    if resizes is not None and "resize" in streams:
        feeders.append(asyncio.create_task(_feed_resizes(streams["resize"], resizes)))
    status = asyncio.create_task(_read_all(error))
    outputs = [
        asyncio.create_task(_drain(streams[kind], sink))
        for kind, sink in (("stdout", stdout), ("stderr", stderr))
        if sink is not None
    ]
    try:
        await asyncio.gather(status, *outputs)
    finally:
        for task in (status, *outputs, *feeders):
            task.cancel()
        await asyncio.gather(status, *outputs, *feeders, return_exceptions=True)
    payload = status.result()
    # streams also end when the connection does; a clean end leaves the session open
    # (the server waits for us to close) or at least delivered a status
    if session.closed and not payload:
        raise Unavailable("the streaming connection was lost before the command finished")
    return payload


async def _feed_stdin(stream: SpdyStream, source: AsyncIterator[bytes]) -> None:
    with contextlib.suppress(ConnectionError):
        async for chunk in source:
            if chunk:
                await stream.write(chunk)
        await stream.close()


async def _feed_resizes(stream: SpdyStream, sizes: AsyncIterator[tuple[int, int]]) -> None:
    with contextlib.suppress(ConnectionError):
        async for width, height in sizes:
            await stream.write(resize_message(width, height))


async def _read_all(stream: SpdyStream) -> bytes:
    parts = []
    while data := await stream.read():
        parts.append(data)
    return b"".join(parts)


async def _drain(stream: SpdyStream, sink: Output) -> None:
    while data := await stream.read():
        await sink(data)
