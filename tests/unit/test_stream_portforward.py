"""Port-forward end to end: SPDY, the SPDY-over-WebSocket tunnel, and the legacy
WebSocket channel protocol, against an echo server on 127.0.0.1."""

from __future__ import annotations

import asyncio
import struct
import time
from collections.abc import AsyncIterator

import pytest

from podling.errors import Unavailable
from podling.streaming.backend import PortForwardParams
from podling.streaming.client import port_forward
from podling.streaming.client_http import spdy_upgrade, websocket_upgrade
from podling.streaming.client_portforward import ForwardedConnection
from podling.streaming.server import StreamingServer
from podling.streaming.spdy.session import SpdySession
from tests.support.fakestream import FakeBackend, echo_server, eventually, free_port, serving

PROTOCOLS = ["spdy", "websocket"]


@pytest.fixture
async def backend() -> FakeBackend:
    return FakeBackend()


@pytest.fixture
async def server(backend: FakeBackend) -> AsyncIterator[StreamingServer]:
    async with serving(backend) as s:
        yield s


@pytest.fixture
async def echo() -> AsyncIterator[int]:
    async with echo_server() as port:
        yield port


async def read_all(conn: ForwardedConnection) -> bytes:
    parts = []
    while data := await asyncio.wait_for(conn.read(), 10):
        parts.append(data)
    return b"".join(parts)


@pytest.mark.parametrize("protocol", PROTOCOLS)
async def test_round_trip_with_half_close(
    server: StreamingServer, echo: int, protocol: str
) -> None:
    url = server.url("portforward", PortForwardParams("pod1", ()))
    conn = await port_forward(url, echo, protocol=protocol)  # type: ignore[arg-type]
    try:
        payload = bytes(range(256)) * 1000
        await conn.write(payload[:1000])
        first = await asyncio.wait_for(conn.read(), 5)
        assert payload.startswith(first)
        await conn.write(payload[1000:])
        await conn.close_write()  # the echo server closes after our EOF...
        assert first + await read_all(conn) == payload  # ...and we read everything
        assert await conn.error() == ""
    finally:
        await conn.close()
    await eventually(lambda: server.active_sessions == 0)


@pytest.mark.parametrize("protocol", PROTOCOLS)
async def test_nothing_listening_is_an_error_promptly(
    server: StreamingServer, protocol: str
) -> None:
    url = server.url("portforward", PortForwardParams("pod1", ()))
    port = free_port()
    start = time.monotonic()
    conn = await port_forward(url, port, protocol=protocol)  # type: ignore[arg-type]
    try:
        with pytest.raises(Unavailable, match=f"error forwarding port {port} to pod pod1"):
            await read_all(conn)
        assert time.monotonic() - start < 3
    finally:
        await conn.close()


@pytest.mark.parametrize("protocol", PROTOCOLS)
async def test_port_not_in_request_is_refused(
    server: StreamingServer, backend: FakeBackend, echo: int, protocol: str
) -> None:
    url = server.url("portforward", PortForwardParams("pod1", (echo + 1,)))
    conn = await port_forward(url, echo, protocol=protocol)  # type: ignore[arg-type]
    try:
        with pytest.raises(Unavailable, match="not among the ports"):
            await read_all(conn)
        assert backend.dials == []
    finally:
        await conn.close()


async def test_many_connections_on_one_session(server: StreamingServer, echo: int) -> None:
    url = server.url("portforward", PortForwardParams("pod1", ()))
    up = await spdy_upgrade(url, ["portforward.k8s.io"])
    session = SpdySession(up.reader, up.writer, server=False)
    runner = asyncio.create_task(session.run())

    async def one(i: int) -> None:
        headers = {"port": str(echo), "requestid": str(i)}
        error = await session.open({"streamtype": "error", **headers})
        await error.close()
        data = await session.open({"streamtype": "data", **headers})
        await data.write(f"conn {i}".encode() * 100)
        await data.close()
        got = b""
        while chunk := await data.read():
            got += chunk
        assert got == f"conn {i}".encode() * 100
        assert await error.read() == b""  # FIN, no error text

    try:
        await asyncio.wait_for(asyncio.gather(*(one(i) for i in range(40))), 20)
    finally:
        await session.close()
        runner.cancel()
        await asyncio.gather(runner, return_exceptions=True)
        up.writer.close()
    await eventually(lambda: server.active_sessions == 0)


async def test_invalid_port_header_is_refused(server: StreamingServer) -> None:
    url = server.url("portforward", PortForwardParams("pod1", ()))
    up = await spdy_upgrade(url, ["portforward.k8s.io"])
    session = SpdySession(up.reader, up.writer, server=False)
    runner = asyncio.create_task(session.run())
    try:
        with pytest.raises(ConnectionError):
            await session.open({"streamtype": "data", "port": "99999", "requestid": "0"}, timeout=5)
    finally:
        await session.close()
        runner.cancel()
        await asyncio.gather(runner, return_exceptions=True)


@pytest.mark.parametrize("subprotocol", ["v4.channel.k8s.io", "v4.base64.channel.k8s.io"])
async def test_legacy_websocket_port_forward(
    server: StreamingServer, echo: int, subprotocol: str
) -> None:
    from podling.streaming.ws import ChannelCodec

    dead = free_port()
    url = server.url("portforward", PortForwardParams("pod1", (echo, dead)))
    ws, chosen = await websocket_upgrade(url, [subprotocol])
    codec = ChannelCodec(chosen)
    try:
        received: dict[int, bytes] = {0: b"", 1: b"", 2: b"", 3: b""}
        heads: dict[int, bytes] = {}
        await ws.send(codec.encode(0, b"ping"))

        async def collect() -> None:
            while (message := await ws.recv()) is not None:
                decoded = codec.decode(message)
                if decoded is None:
                    continue
                ch, payload = decoded
                if ch not in heads:
                    heads[ch] = payload
                else:
                    received[ch] += payload
                if received[0] == b"ping" and received[3]:
                    return

        await asyncio.wait_for(collect(), 10)
        assert heads == {
            0: struct.pack("<H", echo),
            1: struct.pack("<H", echo),
            2: struct.pack("<H", dead),
            3: struct.pack("<H", dead),
        }
        assert received[0] == b"ping"
        assert f"error forwarding port {dead}".encode() in received[3]
    finally:
        await ws.close(1000, wait=2)
    await eventually(lambda: server.active_sessions == 0)
