"""Sessions end cleanly: vanished clients, idle timeouts, server stop, token rules."""

from __future__ import annotations

import asyncio
import os

import pytest

from podling.errors import NotFound, PodlingError, ResourceExhausted
from podling.streaming.backend import ExecParams, PortForwardParams
from podling.streaming.client import port_forward, remote_command
from podling.streaming.client_http import spdy_upgrade
from podling.streaming.spdy.session import SpdySession
from tests.support.fakestream import FakeBackend, Sink, eventually, serving

SLEEP = ExecParams("c1", ("sleep", "30"), False, False, True, True)
CAT = ExecParams("c1", ("cat",), False, True, True, True)


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


async def check_all_gone(server: object, backend: FakeBackend) -> None:
    await eventually(lambda: server.active_sessions == 0)  # type: ignore[attr-defined]
    await eventually(lambda: backend.cancelled == 1)
    await eventually(lambda: not any(alive(pid) for pid in backend.pids))


@pytest.mark.parametrize("protocol", ["spdy", "websocket"])
async def test_cancelled_client_cancels_the_backend_call(protocol: str) -> None:
    backend = FakeBackend()
    async with serving(backend) as server:
        call = asyncio.create_task(
            remote_command(
                server.url("exec", SLEEP),
                protocol=protocol,  # type: ignore[arg-type]
                stdin=None,
                stdout=Sink(),
                stderr=Sink(),
                tty=False,
            )
        )
        await asyncio.wait_for(backend.started.wait(), 5)
        call.cancel()
        await asyncio.gather(call, return_exceptions=True)
        await check_all_gone(server, backend)


async def test_client_socket_vanishing_mid_stream() -> None:
    backend = FakeBackend()
    async with serving(backend) as server:
        up = await spdy_upgrade(server.url("exec", CAT), ["v4.channel.k8s.io"])
        session = SpdySession(up.reader, up.writer, server=False)
        runner = asyncio.create_task(session.run())
        for kind in ("error", "stdin", "stdout", "stderr"):
            await session.open({"streamtype": kind})
        await asyncio.wait_for(backend.started.wait(), 5)
        up.writer.transport.abort()  # no GOAWAY, no FIN: the TCP connection just dies
        await asyncio.gather(runner, return_exceptions=True)
        await check_all_gone(server, backend)


async def test_idle_spdy_session_is_closed() -> None:
    backend = FakeBackend()
    async with serving(backend, idle_timeout=0.5) as server:
        up = await spdy_upgrade(server.url("exec", SLEEP), ["v4.channel.k8s.io"])
        session = SpdySession(up.reader, up.writer, server=False)
        runner = asyncio.create_task(session.run())
        for kind in ("error", "stdout", "stderr"):
            await session.open({"streamtype": kind})
        # the client stays silent: the server gives up after the idle timeout
        await asyncio.wait_for(runner, 5)
        assert session.closed
        await check_all_gone(server, backend)


async def test_idle_websocket_session_is_closed() -> None:
    backend = FakeBackend()
    async with serving(backend, idle_timeout=0.5) as server:
        with pytest.raises(PodlingError, match="lost"):
            await asyncio.wait_for(
                remote_command(
                    server.url("exec", SLEEP),
                    protocol="websocket",
                    stdin=None,
                    stdout=Sink(),
                    stderr=Sink(),
                    tty=False,
                ),
                5,
            )
        await check_all_gone(server, backend)


async def test_idle_port_forward_session_is_closed() -> None:
    async with serving(FakeBackend(), idle_timeout=0.3) as server:
        url = server.url("portforward", PortForwardParams("pod1", ()))
        up = await spdy_upgrade(url, ["portforward.k8s.io"])
        session = SpdySession(up.reader, up.writer, server=False)
        runner = asyncio.create_task(session.run())
        await asyncio.wait_for(runner, 5)
        await eventually(lambda: server.active_sessions == 0)


async def test_stop_ends_running_sessions() -> None:
    backend = FakeBackend()
    async with serving(backend) as server:
        call = asyncio.create_task(
            remote_command(
                server.url("exec", SLEEP), stdin=None, stdout=Sink(), stderr=Sink(), tty=False
            )
        )
        await asyncio.wait_for(backend.started.wait(), 5)
        await server.stop()
        assert server.active_sessions == 0
        assert backend.cancelled == 1
        with pytest.raises(PodlingError):
            await asyncio.wait_for(call, 5)


async def test_url_is_single_use() -> None:
    async with serving(FakeBackend()) as server:
        url = server.url("exec", ExecParams("c1", ("true",), False, False, True, True))
        assert await remote_command(url, stdin=None, stdout=Sink(), stderr=Sink(), tty=False) == 0
        with pytest.raises(NotFound):
            await remote_command(url, stdin=None, stdout=Sink(), stderr=Sink(), tty=False)


async def test_url_expires() -> None:
    async with serving(FakeBackend(), token_ttl=0.2) as server:
        url = server.url("portforward", PortForwardParams("pod1", ()))
        await asyncio.sleep(0.3)
        with pytest.raises(NotFound):
            await port_forward(url, 80)


async def test_outstanding_urls_are_bounded() -> None:
    async with serving(FakeBackend(), max_tokens=2) as server:
        server.url("exec", SLEEP)
        server.url("exec", SLEEP)
        with pytest.raises(ResourceExhausted):
            server.url("exec", SLEEP)
