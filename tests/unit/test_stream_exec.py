"""exec / attach end to end: the project's clients against the server, a local child
process behind the fake backend, over SPDY and every WebSocket channel protocol."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from podling.errors import Internal
from podling.streaming import client, client_ws
from podling.streaming.backend import AttachParams, ExecParams
from podling.streaming.server import StreamingServer
from tests.support.fakestream import FakeBackend, Sink, chunks, eventually, serving

# (transport, WebSocket subprotocol)
ALL = [
    ("spdy", ""),
    ("websocket", "v5.channel.k8s.io"),
    ("websocket", "v4.channel.k8s.io"),
    ("websocket", "v4.base64.channel.k8s.io"),
    ("websocket", "base64.channel.k8s.io"),
    ("websocket", "channel.k8s.io"),
]
# the ones that can tell the server that stdin ended
WITH_STDIN_EOF = ALL[:2]


@pytest.fixture
async def backend() -> FakeBackend:
    return FakeBackend()


@pytest.fixture
async def server(backend: FakeBackend) -> AsyncIterator[StreamingServer]:
    async with serving(backend) as s:
        yield s


def exec_params(script: str, *, tty: bool = False, stdin: bool = False) -> ExecParams:
    return ExecParams("c1", ("sh", "-c", script), tty, stdin, True, not tty)


async def run(
    url: str,
    transport: tuple[str, str],
    *,
    stdin: AsyncIterator[bytes] | None = None,
    tty: bool = False,
    resizes: AsyncIterator[tuple[int, int]] | None = None,
) -> tuple[int, Sink, Sink]:
    out, err = Sink(), Sink()
    kind, sub = transport
    if kind == "spdy" or sub == "v5.channel.k8s.io":
        call = client.remote_command(
            url,
            protocol=kind,  # type: ignore[arg-type]
            stdin=stdin,
            stdout=out,
            stderr=None if tty else err,
            tty=tty,
            resizes=resizes,
        )
    else:
        call = client_ws.remote_command(
            url,
            stdin=stdin,
            stdout=out,
            stderr=None if tty else err,
            tty=tty,
            resizes=resizes,
            subprotocol=sub,
        )
    code = await asyncio.wait_for(call, 15)
    return code, out, err


@pytest.mark.parametrize("transport", ALL, ids=lambda t: t[1] or t[0])
async def test_stdout_and_stderr_are_separate(
    server: StreamingServer, transport: tuple[str, str]
) -> None:
    url = server.url("exec", exec_params("echo -n out; echo -n err >&2; echo -n more"))
    code, out, err = await run(url, transport)
    assert code == 0
    assert out.data == b"outmore"
    assert err.data == b"err"


@pytest.mark.parametrize("transport", ALL[:4], ids=lambda t: t[1] or t[0])
async def test_nonzero_exit_code(server: StreamingServer, transport: tuple[str, str]) -> None:
    code, out, _ = await run(server.url("exec", exec_params("echo bye; exit 3")), transport)
    assert code == 3
    assert out.data == b"bye\n"


@pytest.mark.parametrize("transport", ALL[4:], ids=lambda t: t[1])
async def test_nonzero_exit_code_in_v1_text(
    server: StreamingServer, transport: tuple[str, str]
) -> None:
    with pytest.raises(Internal, match="non-zero exit code: 7"):
        await run(server.url("exec", exec_params("exit 7")), transport)


async def test_spdy_v3_reports_exit_code_as_text(
    server: StreamingServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(client, "SPDY_VERSIONS", ["v3.channel.k8s.io"])
    with pytest.raises(Internal, match="non-zero exit code: 5"):
        await run(server.url("exec", exec_params("exit 5")), ("spdy", ""))
    code, out, _ = await run(server.url("exec", exec_params("echo -n ok")), ("spdy", ""))
    assert (code, out.data) == (0, b"ok")


async def test_v4_status_json_carries_the_exit_code_cause() -> None:
    from podling.streaming.status import Outcome, decode_status, v4_status

    payload = v4_status(Outcome(exit_code=42))
    assert b'"reason":"NonZeroExitCode"' in payload
    assert b'"causes":[{"reason":"ExitCode","message":"42"}]' in payload
    assert decode_status(payload, json_status=True) == 42
    assert v4_status(Outcome()) == b'{"metadata":{},"status":"Success"}'


@pytest.mark.parametrize("transport", WITH_STDIN_EOF, ids=lambda t: t[1] or t[0])
async def test_stdin_is_forwarded_and_closed(
    server: StreamingServer, transport: tuple[str, str]
) -> None:
    url = server.url("exec", exec_params("cat; echo -n done", stdin=True))
    code, out, _ = await run(url, transport, stdin=chunks(b"hello ", b"world\n"))
    assert code == 0
    assert out.data == b"hello world\ndone"  # `done` proves cat saw EOF


async def test_large_output_is_not_stalled(server: StreamingServer) -> None:
    for transport in WITH_STDIN_EOF:
        url = server.url("exec", exec_params("head -c 3000000 /dev/zero"))
        code, out, _ = await run(url, transport)
        assert code == 0 and len(out.data) == 3_000_000


async def forever() -> AsyncIterator[bytes]:
    await asyncio.Event().wait()
    yield b""  # pragma: no cover


@pytest.mark.parametrize("transport", WITH_STDIN_EOF, ids=lambda t: t[1] or t[0])
async def test_tty_resize_is_honoured(server: StreamingServer, transport: tuple[str, str]) -> None:
    async def sizes() -> AsyncIterator[tuple[int, int]]:
        yield (100, 40)

    url = server.url("exec", exec_params("read x; stty size", tty=True, stdin=True))
    code, out, _ = await run(
        url, transport, tty=True, resizes=sizes(), stdin=chunks(b"go\r", delay=0.5)
    )
    assert code == 0
    assert b"40 100" in out.data


@pytest.mark.parametrize("transport", WITH_STDIN_EOF, ids=lambda t: t[1] or t[0])
async def test_tty_session_ends_with_the_process_while_stdin_is_open(
    server: StreamingServer, transport: tuple[str, str]
) -> None:
    url = server.url("exec", exec_params("echo -n hello", tty=True, stdin=True))
    code, out, _ = await run(url, transport, tty=True, stdin=forever())
    assert code == 0
    assert b"hello" in out.data


@pytest.mark.parametrize("transport", WITH_STDIN_EOF, ids=lambda t: t[1] or t[0])
async def test_attach_with_stdin_once(server: StreamingServer, transport: tuple[str, str]) -> None:
    url = server.url("attach", AttachParams("c1", False, True, True, True))
    code, out, err = await run(url, transport, stdin=chunks(b"echo -n hello\n"))
    assert (code, out.data, err.data) == (0, b"hello", b"")


@pytest.mark.parametrize("transport", [ALL[0], ALL[1], ALL[5]], ids=lambda t: t[1] or t[0])
async def test_backend_failure_is_reported(
    server: StreamingServer, transport: tuple[str, str]
) -> None:
    params = ExecParams("c1", ("/nonexistent/binary",), False, False, True, True)
    with pytest.raises(Internal, match="nonexistent"):
        await run(server.url("exec", params), transport)


async def test_concurrent_sessions(server: StreamingServer, backend: FakeBackend) -> None:
    async def one(i: int) -> None:
        transport = ALL[i % len(ALL)]
        url = server.url("exec", exec_params(f"sleep 0.2; echo -n {i}; exit {i % 4}"))
        code, out, _ = await run(url, transport)
        assert out.data == str(i).encode()
        if transport[1] not in ("channel.k8s.io", "base64.channel.k8s.io") or i % 4 == 0:
            assert code == i % 4

    async def one_checked(i: int) -> None:
        try:
            await one(i)
        except Internal:
            assert i % 4 != 0  # v1 text protocols report exit codes as failures

    await asyncio.gather(*(one_checked(i) for i in range(24)))
    assert backend.finished == 24
    await eventually(lambda: server.active_sessions == 0)
