"""Legacy WebSocket port-forward (§7.4): `v4.channel.k8s.io`, `v4.base64.channel.k8s.io`
or no subprotocol.

The ports come from the CRI request (the kubelet copies them from `?port=`). For the
i-th port, channel 2i carries data both ways and channel 2i+1 carries error text to the
client; the first message on each of the two channels is the port number, 2 bytes
little-endian. One TCP connection per port; the session ends when all of them ended
(or the client closed the WebSocket).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import struct
from typing import Any

from podling.errors import PodlingError
from podling.streaming.backend import Backend, PortForwardParams
from podling.streaming.ws import CHUNK, ChannelCodec, send_output, watch_idle
from podling.streaming.wsconn import WsTransport

log = logging.getLogger(__name__)


class _Port:
    """One forwarded port: its socket writer once dialled, and client bytes until then."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.inbound: asyncio.Queue[bytes] = asyncio.Queue(maxsize=64)


async def serve(
    ws: WsTransport, subprotocol: str, backend: Backend, params: PortForwardParams, idle: float
) -> None:
    """Forward every port of the request over `ws`, then close it."""
    codec = ChannelCodec(subprotocol)
    if not params.ports:
        with contextlib.suppress(ConnectionError, OSError):
            await ws.send(
                codec.encode(
                    1,
                    b"no ports given: the WebSocket port-forward "
                    b"protocol needs the ports in the request",
                )
            )
        await ws.close(1000)
        return
    ports = [_Port(p) for p in params.ports]
    for i, p in enumerate(ports):
        head = struct.pack("<H", p.port)
        await ws.send(codec.encode(2 * i, head))
        await ws.send(codec.encode(2 * i + 1, head))
    forwards = [
        asyncio.create_task(_forward(ws, codec, backend, params, i, p)) for i, p in enumerate(ports)
    ]
    reader = asyncio.create_task(_pump_input(ws, codec, ports))
    watchdog = asyncio.create_task(watch_idle(ws, idle))
    all_done = asyncio.gather(*forwards, return_exceptions=True)
    waiters: set[asyncio.Future[Any]] = {reader, watchdog, all_done}
    try:
        await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in (reader, watchdog, *forwards):
            task.cancel()
        await asyncio.gather(reader, watchdog, all_done, return_exceptions=True)
    await ws.close(1000 if all_done.done() and not ws.closed else 1001, wait=2.0)


async def _pump_input(ws: WsTransport, codec: ChannelCodec, ports: list[_Port]) -> None:
    """Client data on channel 2i goes to port i; other channels are ignored."""
    while (message := await ws.recv()) is not None:
        try:
            decoded = codec.decode(message)
        except ValueError as e:
            log.warning("WebSocket port-forward: %s", e)
            return
        if decoded is None:
            continue
        channel, payload = decoded
        if channel % 2 == 0 and channel // 2 < len(ports) and payload:
            await ports[channel // 2].inbound.put(payload)


async def _forward(
    ws: WsTransport,
    codec: ChannelCodec,
    backend: Backend,
    params: PortForwardParams,
    index: int,
    port: _Port,
) -> None:
    try:
        reader, writer = await backend.dial(params.pod_sandbox_id, port.port)
    except PodlingError as e:
        text = f"error forwarding port {port.port} to pod {params.pod_sandbox_id}: {e.message}"
        with contextlib.suppress(ConnectionError, OSError):
            await ws.send(codec.encode(2 * index + 1, text.encode()))
        return
    to_pod = asyncio.create_task(_to_pod(port, writer))
    try:
        while data := await reader.read(CHUNK):
            await send_output(ws, codec, 2 * index, data)
    except (ConnectionError, OSError) as e:
        log.debug("port-forward %d: %s", port.port, e)
    finally:
        to_pod.cancel()
        writer.close()
        with contextlib.suppress(asyncio.CancelledError, OSError):
            await to_pod


async def _to_pod(port: _Port, writer: asyncio.StreamWriter) -> None:
    with contextlib.suppress(ConnectionError, OSError):
        while True:
            writer.write(await port.inbound.get())
            await writer.drain()
