"""exec / attach over WebSocket channel protocols (§7.1-7.3), and the server's choice
of WebSocket subprotocol for every endpoint.

Channel framing: a binary message is one channel byte + payload; the base64 variants
send text messages '0'+channel followed by base64 of the payload. Channels: 0 stdin,
1 stdout, 2 stderr, 3 error/status, 4 resize; v5 adds [255, ch] = the client closed
its channel ch. The session: one empty message on the lowest writable channel, output,
the status on channel 3 (JSON Status for v4/v5, text on failure only for v1), Close 1000.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import logging
import time

from podling.streaming import status
from podling.streaming.backend import AttachParams, Backend, ExecParams
from podling.streaming.http_front import HttpError
from podling.streaming.status import Outcome, QueueProcessIO, ResizeDecoder
from podling.streaming.wsconn import WsTransport

log = logging.getLogger(__name__)

V5 = "v5.channel.k8s.io"
TUNNEL = "SPDY/3.1+portforward.k8s.io"
EXEC_PROTOCOLS = (
    V5,
    "v4.channel.k8s.io",
    "v4.base64.channel.k8s.io",
    "channel.k8s.io",
    "base64.channel.k8s.io",
)
PORTFORWARD_PROTOCOLS = (TUNNEL, "v4.channel.k8s.io", "v4.base64.channel.k8s.io")

STDIN, STDOUT, STDERR, ERROR, RESIZE, CLOSE = 0, 1, 2, 3, 4, 255
CHUNK = 32 * 1024


def choose_subprotocol(kind: str, offered: list[str]) -> str:
    """The first offered subprotocol this endpoint speaks; "" when none was offered
    (legacy binary framing); HttpError 400 when the client offered only unknown ones."""
    supported = PORTFORWARD_PROTOCOLS if kind == "portforward" else EXEC_PROTOCOLS
    if not offered:
        return ""
    for proto in offered:
        if proto in supported:
            return proto
    raise HttpError(
        400,
        f"unable to upgrade: none of the WebSocket subprotocols {offered} is supported "
        f"for {kind}; supported: {list(supported)}",
    )


class ChannelCodec:
    """Encodes and decodes channel messages: binary, or base64 text."""

    def __init__(self, subprotocol: str) -> None:
        self.base64 = "base64" in subprotocol

    def encode(self, channel: int, payload: bytes) -> bytes | str:
        if self.base64:
            return chr(ord("0") + channel) + base64.b64encode(payload).decode()
        return bytes([channel]) + payload

    def decode(self, message: bytes | str) -> tuple[int, bytes] | None:
        """(channel, payload), or None for an empty message. ValueError when malformed.
        Both message types are accepted whatever the protocol (as the reference does)."""
        if not message:
            return None
        if isinstance(message, str):
            if not self.base64:
                return message.encode()[0], message.encode()[1:]
            try:
                return ord(message[0]) - ord("0"), base64.b64decode(message[1:], validate=True)
            except binascii.Error:
                raise ValueError("malformed base64 channel message") from None
        return message[0], message[1:]


async def send_output(ws: WsTransport, codec: ChannelCodec, channel: int, data: bytes) -> None:
    """Send `data` on `channel` in chunks of at most CHUNK bytes."""
    for i in range(0, len(data), CHUNK):
        await ws.send(codec.encode(channel, data[i : i + CHUNK]))


async def serve_remote_command(
    ws: WsTransport,
    subprotocol: str,
    backend: Backend,
    params: ExecParams | AttachParams,
    idle_timeout: float,
) -> None:
    """Run one exec/attach session on an upgraded WebSocket and close it. If the client
    goes away (or stays silent past idle_timeout) the backend call is cancelled."""
    codec = ChannelCodec(subprotocol)
    want_stderr = params.stderr and not params.tty
    io = QueueProcessIO(
        has_stdin=params.stdin,
        stdout=(lambda d: send_output(ws, codec, STDOUT, d)) if params.stdout else None,
        stderr=(lambda d: send_output(ws, codec, STDERR, d)) if want_stderr else None,
    )
    first = STDOUT if params.stdout else STDERR if want_stderr else ERROR
    await ws.send(codec.encode(first, b""))  # some legacy clients wait for it
    reader = asyncio.create_task(_pump_input(ws, codec, io, subprotocol == V5))
    work = asyncio.create_task(status.run_backend(backend, params, io))
    idle = asyncio.create_task(watch_idle(ws, idle_timeout))
    try:
        await asyncio.wait({reader, work, idle}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        io.end()
        for task in (reader, idle, work) if not work.done() else (reader, idle):
            task.cancel()
        await asyncio.gather(reader, idle, work, return_exceptions=True)
    if work.cancelled():
        await ws.close(1000 if ws.closed else 1001, wait=1.0)
        return
    await _finish(ws, codec, subprotocol, work.result())


async def _finish(ws: WsTransport, codec: ChannelCodec, subprotocol: str, outcome: Outcome) -> None:
    json_status = subprotocol.startswith(("v4.", "v5."))
    payload = status.v4_status(outcome) if json_status else status.v1_status(outcome)
    with contextlib.suppress(ConnectionError, OSError):
        if payload:
            await ws.send(codec.encode(ERROR, payload))
    await ws.close(1000)


async def _pump_input(ws: WsTransport, codec: ChannelCodec, io: QueueProcessIO, v5: bool) -> None:
    """Dispatch client messages until the client closes or breaks the protocol."""
    resize = ResizeDecoder()
    try:
        while (message := await ws.recv()) is not None:
            decoded = codec.decode(message)
            if decoded is None:
                continue
            channel, payload = decoded
            if channel == STDIN:
                if payload:  # b"" would mean EOF to the ProcessIO
                    await io.push_stdin(payload)
            elif channel == RESIZE:
                for size in resize.feed(payload):
                    io.push_size(size)
            elif channel == CLOSE and v5:
                if len(payload) != 1 or payload[0] > RESIZE:
                    raise ValueError(f"invalid close message {payload!r}")
                if payload[0] == STDIN:
                    await io.push_stdin(b"")
    except ValueError as e:
        log.warning("WebSocket stream protocol error: %s", e)


async def watch_idle(ws: WsTransport, timeout: float) -> None:
    """Return once no message went either way for `timeout` seconds."""
    while (left := ws.last_activity + timeout - time.monotonic()) > 0:
        await asyncio.sleep(left)
