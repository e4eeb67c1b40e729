"""The registry HTTP client against a scripted HTTP server on 127.0.0.1: bodies (length,
chunked, none), kept-alive reuse and its limits, and every failure it names."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator, Callable

import pytest

from podling.image.http import ConnectError, HttpClient, HttpError, origin_of

Handler = Callable[[bytes, asyncio.StreamWriter], "asyncio.Future[None] | None"]


class Server:
    """Answers each request with the next scripted raw answer; counts connections and
    keeps the requests it saw. An answer of None closes the connection instead."""

    def __init__(self, answers: list[bytes | None], keep_open: bool = True) -> None:
        self.answers = answers
        self.requests: list[bytes] = []
        self.connections = 0
        self.keep_open = keep_open
        self.server: asyncio.Server | None = None

    async def __aenter__(self) -> Server:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self.server is not None
        self.server.close()

    @property
    def url(self) -> str:
        assert self.server is not None
        return f"http://127.0.0.1:{self.server.sockets[0].getsockname()[1]}"

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            while self.answers:
                head = await reader.readuntil(b"\r\n\r\n")
                body = b""
                for line in head.split(b"\r\n"):
                    if line.lower().startswith(b"content-length:"):
                        body = await reader.readexactly(int(line.split(b":")[1]))
                self.requests.append(head + body)
                answer = self.answers.pop(0)
                if answer is None:
                    break
                writer.write(answer)
                await writer.drain()
                if not self.keep_open:
                    break
            if self.keep_open:
                await reader.read()  # hold the connection until the client lets go
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        writer.close()


def ok(body: bytes, extra: bytes = b"") -> bytes:
    return b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n%s\r\n%s" % (len(body), extra, body)


@pytest.fixture
async def client() -> AsyncIterator[HttpClient]:
    c = HttpClient(user_agent="podling-test", connect_timeout=2, read_timeout=0.5)
    yield c
    await c.close()


async def test_bodies_and_kept_alive_connections(client: HttpClient) -> None:
    chunked = (
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n"
    )
    head = b"HTTP/1.1 200 OK\r\nContent-Length: 99\r\nDocker-Content-Digest: sha256:x\r\n\r\n"
    async with Server([ok(b"hello", b"X-Thing: 1\r\n"), chunked, head]) as srv:
        async with await client.request("GET", srv.url + "/v2/", params=[("a", "b c")]) as r:
            assert (r.status, r.content_length, r.headers.get("x-THING")) == (200, 5, "1")
            assert await r.read() == b"hello"
        async with await client.request("GET", srv.url + "/chunked") as r:
            assert [c async for c in r.iter_chunked(2)] == [b"ab", b"c", b"de"]
        async with await client.request("HEAD", srv.url + "/m") as r:
            assert r.headers["Docker-Content-Digest"] == "sha256:x"
            assert await r.read() == b""  # HEAD: the length is the resource's, no body
        assert srv.connections == 1  # all three on one kept-alive connection
    first = srv.requests[0].decode()
    assert first.startswith("GET /v2/?a=b+c HTTP/1.1\r\n")
    assert "User-Agent: podling-test" in first and "Accept-Encoding: identity" in first


async def test_a_form_post(client: HttpClient) -> None:
    async with Server([ok(b'{"token": "t"}')]) as srv:
        form = [("grant_type", "refresh_token"), ("scope", "repository:a:pull")]
        async with await client.request("POST", srv.url + "/token", form=form) as r:
            assert await r.json() == {"token": "t"}
    sent = srv.requests[0]
    assert b"Content-Type: application/x-www-form-urlencoded" in sent
    assert sent.endswith(b"grant_type=refresh_token&scope=repository%3Aa%3Apull")


async def test_a_connection_the_server_closed_is_replaced(client: HttpClient) -> None:
    async with Server([ok(b"one"), ok(b"two")], keep_open=False) as srv:
        async with await client.request("GET", srv.url + "/1") as r:
            assert await r.read() == b"one"
        await asyncio.sleep(0.05)  # the server has closed the idle connection
        async with await client.request("GET", srv.url + "/2") as r:
            assert await r.read() == b"two"
        assert srv.connections == 2


async def test_an_unread_body_closes_the_connection(client: HttpClient) -> None:
    async with Server([ok(b"x" * 100000), ok(b"next")]) as srv:
        r = await client.request("GET", srv.url + "/big")
        r.release()
        async with await client.request("GET", srv.url + "/next") as r:
            assert await r.read() == b"next"
        assert srv.connections == 2


async def test_failures_are_named(client: HttpClient) -> None:
    cut = b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nonly-part"
    async with (
        Server([cut], keep_open=False) as srv,
        await client.request("GET", srv.url + "/cut") as r,
    ):
        with pytest.raises(HttpError, match=r"closed|complete"):
            await r.read()
    stall = b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nsome"
    async with Server([stall]) as srv, await client.request("GET", srv.url + "/stall") as r:
        with pytest.raises(TimeoutError):
            await r.read()
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(ConnectError, match=f"127.0.0.1:{port}"):
        await client.request("GET", f"http://127.0.0.1:{port}/")


def test_origins() -> None:
    assert origin_of("https://r.example/v2/") == ("https", "r.example", 443)
    assert origin_of("http://127.0.0.1:5000/x") == ("http", "127.0.0.1", 5000)
    with pytest.raises(ValueError, match="not an absolute"):
        origin_of("ftp://x/")
