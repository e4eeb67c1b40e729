"""The streaming server's HTTP front: routing, refusals, protocol negotiation."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from urllib.parse import urlsplit

import pytest

from podling.errors import FailedPrecondition
from podling.streaming.backend import ExecParams, PortForwardParams
from podling.streaming.server import StreamingServer
from tests.support.fakestream import FakeBackend, serving

EXEC = ExecParams("c1", ("true",), False, False, True, True)
PF = PortForwardParams("pod1", ())
WS_KEY = "dGhlIHNhbXBsZSBub25jZQ=="


@pytest.fixture
async def server() -> AsyncIterator[StreamingServer]:
    async with serving(FakeBackend()) as s:
        yield s


async def request(
    url: str, method: str, headers: list[tuple[str, str]], path: str = ""
) -> tuple[int, dict[str, list[str]], bytes]:
    """Send one request; (status, headers (lowercase names), body or b"" for a 101)."""
    parts = urlsplit(url)
    reader, writer = await asyncio.open_connection(parts.hostname, parts.port)
    try:
        head = f"{method} {path or parts.path} HTTP/1.1\r\nHost: {parts.netloc}\r\n"
        head += "".join(f"{k}: {v}\r\n" for k, v in headers) + "\r\n"
        writer.write(head.encode())
        await writer.drain()
        raw = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        lines = raw.decode().split("\r\n")
        status = int(lines[0].split()[1])
        got: dict[str, list[str]] = {}
        for line in lines[1:]:
            if line:
                k, v = line.split(":", 1)
                got.setdefault(k.strip().lower(), []).append(v.strip())
        body = b"" if status == 101 else await asyncio.wait_for(reader.read(), 5)
        return status, got, body
    finally:
        writer.close()


SPDY = [("Connection", "Upgrade"), ("Upgrade", "SPDY/3.1"), ("Content-Length", "0")]


def ws_headers(*protocols: str) -> list[tuple[str, str]]:
    h = [
        ("Connection", "Upgrade"),
        ("Upgrade", "websocket"),
        ("Sec-WebSocket-Version", "13"),
        ("Sec-WebSocket-Key", WS_KEY),
    ]
    if protocols:
        h.append(("Sec-WebSocket-Protocol", ", ".join(protocols)))
    return h


async def test_url_is_absolute_with_the_bound_port(server: StreamingServer) -> None:
    url = server.url("exec", EXEC)
    parts = urlsplit(url)
    assert parts.scheme == "http" and parts.hostname == "127.0.0.1"
    assert parts.port and parts.port > 0
    assert parts.path.startswith("/exec/")


async def test_url_before_start_fails() -> None:
    with pytest.raises(FailedPrecondition):
        StreamingServer(FakeBackend()).url("exec", EXEC)


async def test_unknown_token_is_404(server: StreamingServer) -> None:
    url = server.url("exec", EXEC)
    status, _, body = await request(url, "POST", SPDY, path="/exec/nosuchtoken")
    assert status == 404
    assert b"token" in body


async def test_unknown_route_is_404(server: StreamingServer) -> None:
    url = server.url("exec", EXEC)
    token = urlsplit(url).path.rsplit("/", 1)[1]
    assert (await request(url, "POST", SPDY, path=f"/run/{token}"))[0] == 404
    assert (await request(url, "POST", SPDY, path="/exec"))[0] == 404


async def test_token_for_another_endpoint_is_404(server: StreamingServer) -> None:
    url = server.url("portforward", PF)
    token = urlsplit(url).path.rsplit("/", 1)[1]
    status, _, _ = await request(url, "POST", SPDY, path=f"/exec/{token}")
    assert status == 404
    assert (await request(url, "POST", SPDY))[0] == 404  # burnt by the first try


async def test_wrong_method_is_405(server: StreamingServer) -> None:
    url = server.url("exec", EXEC)
    status, headers, _ = await request(url, "PUT", SPDY)
    assert status == 405
    assert headers["connection"] == ["close"]


async def test_missing_upgrade_is_400_and_burns_the_token(server: StreamingServer) -> None:
    url = server.url("exec", EXEC)
    status, _, body = await request(url, "GET", [])
    assert status == 400
    assert b"missing upgrade headers" in body
    assert (
        await request(url, "POST", [*SPDY, ("X-Stream-Protocol-Version", "v4.channel.k8s.io")])
    )[0] == 404


async def test_garbage_is_400(server: StreamingServer) -> None:
    url = urlsplit(server.url("exec", EXEC))
    reader, writer = await asyncio.open_connection(url.hostname, url.port)
    writer.write(b"\x80\x03\x00\x01garbage\r\n\r\n")
    data = await asyncio.wait_for(reader.read(), 5)
    writer.close()
    assert data.startswith(b"HTTP/1.1 400")


@pytest.mark.parametrize("method", ["POST", "GET"])
async def test_spdy_negotiates_v4_for_a_v5_client(server: StreamingServer, method: str) -> None:
    url = server.url("exec", EXEC)
    offered = ["v5.channel.k8s.io", "v4.channel.k8s.io", "v3.channel.k8s.io"]
    status, headers, _ = await request(
        url, method, [*SPDY, *(("X-Stream-Protocol-Version", v) for v in offered)]
    )
    assert status == 101
    assert headers["x-stream-protocol-version"] == ["v4.channel.k8s.io"]
    assert headers["upgrade"] == ["SPDY/3.1"]


async def test_spdy_client_order_wins_with_comma_lists(server: StreamingServer) -> None:
    url = server.url("attach", EXEC)
    status, headers, _ = await request(
        url, "POST", [*SPDY, ("X-Stream-Protocol-Version", "v2.channel.k8s.io, channel.k8s.io")]
    )
    assert status == 101
    assert headers["x-stream-protocol-version"] == ["v2.channel.k8s.io"]


async def test_spdy_portforward_version(server: StreamingServer) -> None:
    url = server.url("portforward", PF)
    status, headers, _ = await request(
        url, "POST", [*SPDY, ("X-Stream-Protocol-Version", "portforward.k8s.io")]
    )
    assert status == 101
    assert headers["x-stream-protocol-version"] == ["portforward.k8s.io"]


async def test_spdy_without_version_is_400(server: StreamingServer) -> None:
    status, _, body = await request(server.url("exec", EXEC), "POST", SPDY)
    assert status == 400
    assert b"X-Stream-Protocol-Version" in body


async def test_spdy_without_common_version_is_403(server: StreamingServer) -> None:
    status, headers, _ = await request(
        server.url("portforward", PF),
        "POST",
        [*SPDY, ("X-Stream-Protocol-Version", "v4.channel.k8s.io")],
    )
    assert status == 403
    assert headers["x-accepted-stream-protocol-versions"] == ["portforward.k8s.io"]


@pytest.mark.parametrize(
    ("kind", "offered", "chosen"),
    [
        ("exec", ["v5.channel.k8s.io"], "v5.channel.k8s.io"),
        (
            "exec",
            ["bogus", "v4.base64.channel.k8s.io", "v5.channel.k8s.io"],
            "v4.base64.channel.k8s.io",
        ),
        ("attach", ["channel.k8s.io"], "channel.k8s.io"),
        ("portforward", ["SPDY/3.1+portforward.k8s.io"], "SPDY/3.1+portforward.k8s.io"),
        ("portforward", ["v4.channel.k8s.io"], "v4.channel.k8s.io"),
    ],
)
async def test_websocket_subprotocol_negotiation(
    server: StreamingServer, kind: str, offered: list[str], chosen: str
) -> None:
    params = PF if kind == "portforward" else EXEC
    url = server.url(kind, params)  # type: ignore[arg-type]
    status, headers, _ = await request(url, "GET", ws_headers(*offered))
    assert status == 101
    assert headers["sec-websocket-protocol"] == [chosen]
    assert headers["sec-websocket-accept"] == ["s3pPLMBiTxaQ9kYGzzhZRbK+xOo="]


async def test_websocket_without_subprotocol_is_accepted(server: StreamingServer) -> None:
    status, headers, _ = await request(server.url("exec", EXEC), "GET", ws_headers())
    assert status == 101
    assert "sec-websocket-protocol" not in headers


async def test_websocket_unknown_subprotocol_is_400(server: StreamingServer) -> None:
    status, _, body = await request(
        server.url("exec", EXEC), "GET", ws_headers("SPDY/3.1+portforward.k8s.io")
    )
    assert status == 400
    assert b"v5.channel.k8s.io" in body  # the message lists what is supported


async def test_websocket_with_post_is_400(server: StreamingServer) -> None:
    status, _, _ = await request(server.url("exec", EXEC), "POST", ws_headers("v5.channel.k8s.io"))
    assert status == 400
