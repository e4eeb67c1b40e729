"""podling.rpc seen by grpcio's own client (C-core): the gRPC contract, call by call."""

from __future__ import annotations

import asyncio
import stat
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
from cri_api.v1 import api_pb2 as pb

from podling.rpc.server import Server
from tests.unit.rpc_support import PREFIX, Handlers, start


@pytest.fixture
async def served(tmp_path: Path) -> AsyncIterator[tuple[Server, Handlers, grpc.aio.Channel]]:
    handlers = Handlers()
    server, sock = await start(tmp_path, handlers)
    channel = grpc.aio.insecure_channel(f"unix://{sock}")
    try:
        yield server, handlers, channel
    finally:
        await channel.close()
        await server.stop(0.5)


def unary(channel: grpc.aio.Channel, name: str = "Echo") -> grpc.aio.UnaryUnaryMultiCallable:
    return channel.unary_unary(
        PREFIX + name,
        request_serializer=pb.VersionRequest.SerializeToString,
        response_deserializer=pb.VersionResponse.FromString,
    )


async def call(channel: grpc.aio.Channel, text: str, **kw: float) -> pb.VersionResponse:
    return await unary(channel)(pb.VersionRequest(version=text), **kw)


async def code_of(channel: grpc.aio.Channel, text: str, **kw: float) -> tuple[str, str]:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await call(channel, text, **kw)
    return info.value.code().name, info.value.details() or ""


async def test_a_unary_call_gets_its_reply(
    served: tuple[Server, Handlers, grpc.aio.Channel],
) -> None:
    _, _, channel = served
    assert (await call(channel, "hello")).version == "echo 5"
    assert (await call(channel, "bytes")).runtime_name == "pre-encoded"


async def test_many_calls_on_one_connection(
    served: tuple[Server, Handlers, grpc.aio.Channel],
) -> None:
    _, _, channel = served
    replies = await asyncio.gather(*(call(channel, "a" * i) for i in range(200)))
    assert [r.version for r in replies] == [f"echo {i}" for i in range(200)]


async def test_podling_errors_keep_their_code_and_message(
    served: tuple[Server, Handlers, grpc.aio.Channel],
) -> None:
    _, _, channel = served
    assert await code_of(channel, "fail:NOT_FOUND:no such pod") == ("NOT_FOUND", "no such pod")
    text = 'naïve 100% ✓ "quoted" \n line'
    assert await code_of(channel, f"fail:NOT_FOUND:{text}") == ("NOT_FOUND", text)


async def test_a_bug_is_internal_and_hides_the_traceback(
    served: tuple[Server, Handlers, grpc.aio.Channel], caplog: pytest.LogCaptureFixture
) -> None:
    _, _, channel = served
    code, message = await code_of(channel, "crash")
    assert code == "INTERNAL" and "ZeroDivisionError" in message and "Traceback" not in message
    assert any(r.exc_info and r.levelname == "ERROR" for r in caplog.records)


async def test_a_plain_function_handler_answers_and_fails_the_same_way(
    served: tuple[Server, Handlers, grpc.aio.Channel],
) -> None:
    _, _, channel = served
    now = unary(channel, "Now")
    assert (await now(pb.VersionRequest())).version == "now Now"
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await now(pb.VersionRequest(version="fail:not now"))
    assert (info.value.code(), info.value.details()) == (grpc.StatusCode.NOT_FOUND, "not now")
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await now(pb.VersionRequest(version="crash"))
    assert info.value.code() == grpc.StatusCode.INTERNAL
    replies = await asyncio.gather(*(now(pb.VersionRequest()) for _ in range(100)))
    assert {r.version for r in replies} == {"now Now"}


async def test_an_unknown_method_is_unimplemented(
    served: tuple[Server, Handlers, grpc.aio.Channel],
) -> None:
    _, _, channel = served
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await unary(channel, "Nope")(pb.VersionRequest())
    assert info.value.code() == grpc.StatusCode.UNIMPLEMENTED
    assert "/test.T/Nope" in (info.value.details() or "")


async def test_the_deadline_cancels_the_handler(
    served: tuple[Server, Handlers, grpc.aio.Channel],
) -> None:
    _, handlers, channel = served
    code, _ = await code_of(channel, "sleep:5", timeout=0.3)
    assert code == "DEADLINE_EXCEEDED"
    assert await handlers.wait_cancelled() == ["sleep:5"]


async def test_a_client_cancel_cancels_the_handler(
    served: tuple[Server, Handlers, grpc.aio.Channel],
) -> None:
    _, handlers, channel = served
    pending = unary(channel)(pb.VersionRequest(version="sleep:5"))
    await asyncio.wait_for(handlers.started.wait(), 5)
    pending.cancel()
    assert await handlers.wait_cancelled() == ["sleep:5"]
    assert (await call(channel, "after")).version == "echo 5"  # the connection lives on


async def test_a_slow_call_does_not_hold_up_others(
    served: tuple[Server, Handlers, grpc.aio.Channel],
) -> None:
    _, handlers, channel = served
    slow = asyncio.ensure_future(call(channel, "sleep:1"))
    await asyncio.wait_for(handlers.started.wait(), 5)
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    await asyncio.gather(*(call(channel, "quick") for _ in range(20)))
    assert loop.time() - t0 < 0.8 and not slow.done()
    assert (await slow).version == "slept"


async def test_replies_larger_than_every_window_arrive_whole(
    served: tuple[Server, Handlers, grpc.aio.Channel],
) -> None:
    _, _, channel = served
    sizes = [70_000, 1_000_000, 3_000_000]
    replies = await asyncio.gather(*(call(channel, f"big:{n}") for n in sizes))
    assert [len(r.version) for r in replies] == sizes


async def test_large_requests_up_to_the_limit(
    served: tuple[Server, Handlers, grpc.aio.Channel],
) -> None:
    _, _, channel = served
    assert (await call(channel, "a" * 3_000_000)).version == "echo 3000000"
    code, message = await code_of(channel, "a" * 5_000_000)
    assert code == "RESOURCE_EXHAUSTED" and "4194304" in message
    assert (await call(channel, "after")).version == "echo 5"


async def test_a_stream_sends_every_reply_then_its_status(
    served: tuple[Server, Handlers, grpc.aio.Channel],
) -> None:
    _, _, channel = served
    stream = channel.unary_stream(
        PREFIX + "Count",
        request_serializer=pb.VersionRequest.SerializeToString,
        response_deserializer=pb.VersionResponse.FromString,
    )
    got = [r.version async for r in stream(pb.VersionRequest(version="2000"))]
    assert got == [str(i) for i in range(2000)]
    seen = []
    with pytest.raises(grpc.aio.AioRpcError) as info:
        async for r in stream(pb.VersionRequest(version="3:gone away")):
            seen.append(r.version)
    assert seen == ["0", "1", "2"]
    assert (info.value.code(), info.value.details()) == (grpc.StatusCode.NOT_FOUND, "gone away")


@pytest.mark.parametrize(
    ("sleep", "grace", "outcome"), [(0.3, 2.0, "slept"), (30, 0.2, "UNAVAILABLE")]
)
async def test_stop_lets_calls_finish_within_the_grace_then_ends_them(
    tmp_path: Path, sleep: float, grace: float, outcome: str
) -> None:
    handlers = Handlers()
    server, sock = await start(tmp_path, handlers)
    async with grpc.aio.insecure_channel(f"unix://{sock}") as channel:
        running = asyncio.ensure_future(call(channel, f"sleep:{sleep}"))
        await asyncio.wait_for(handlers.started.wait(), 5)
        await server.stop(grace)
        try:
            got = (await running).version
        except grpc.aio.AioRpcError as e:
            got = e.code().name
        assert got == outcome
        assert handlers.cancelled == ([] if outcome == "slept" else [f"sleep:{sleep}"])


async def test_the_socket_is_born_with_its_mode(tmp_path: Path) -> None:
    server = Server({})
    sock = tmp_path / "s.sock"
    sock.write_text("stale")  # a socket file left by a crash is replaced
    server.bind(sock, 0o660)
    assert stat.S_IMODE(sock.stat().st_mode) == 0o660 and stat.S_ISSOCK(sock.stat().st_mode)
    await server.start()
    await server.stop(0)
