"""podling.rpc against a Go gRPC client: containerd's `ctr`, pointed at podling's server.

The kubelet and crictl are Go (grpc-go and its own HTTP/2 and HPACK); the rest of the
suite drives podlingd through grpcio's C core. `ctr` is grpc-go too, so these tests serve
a few containerd API methods (hand-encoded replies) from podling.rpc and check what `ctr`
prints: unary replies, status codes with non-ASCII messages, a reply far larger than
grpc-go's first flow-control windows, and a server stream ending in an error.
"""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from podling.errors import NotFound
from podling.rpc.calls import Method
from podling.rpc.server import Server, encode_reply

CTR = shutil.which("ctr")  # Debian's containerd package; scripts/install.sh --test installs it

NAMESPACES = 5000  # ~100 KB of reply: more than grpc-go's initial 64 KiB windows


def field(number: int, value: bytes | str) -> bytes:
    """One length-delimited protobuf field (what every reply here is made of)."""
    data = value.encode() if isinstance(value, str) else value
    size, n = bytearray(), len(data)
    while n > 0x7F:
        size.append(n & 0x7F | 0x80)
        n >>= 7
    size.append(n)
    return bytes([number << 3 | 2]) + bytes(size) + data


async def version(request: bytes, context: Any) -> bytes:
    return field(1, "podling-rpc") + field(2, "r1")  # containerd VersionResponse


async def namespaces(request: bytes, context: Any) -> bytes:
    return b"".join(field(1, field(1, f"ns-{i:05d}")) for i in range(NAMESPACES))


async def failing(request: bytes, context: Any) -> bytes:
    raise NotFound("no such image: ünïcode 100% ✓")


async def events(request: bytes, context: Any) -> AsyncIterator[bytes]:
    for i in range(3):
        exit_event = field(1, "containerd.events.TaskExit") + field(2, field(1, f"ct{i}"))
        timestamp = bytes([0x08, 100 + i])
        yield (
            field(1, timestamp)
            + field(2, "k8s.io")
            + field(3, "/tasks/exit")
            + field(4, exit_event)
        )
    raise NotFound("the stream ends here")


def containerd_methods() -> dict[str, Method]:
    def raw(data: bytes) -> bytes:
        return data

    table = {
        "version.v1.Version/Version": Method("Version", raw, encode_reply, version),
        "namespaces.v1.Namespaces/List": Method("List", raw, encode_reply, namespaces),
        "images.v1.Images/List": Method("Images", raw, encode_reply, failing),
        "events.v1.Events/Subscribe": Method("Subscribe", raw, encode_reply, events, True),
    }
    return {f"/containerd.services.{path}": m for path, m in table.items()}


@pytest.fixture
async def socket(tmp_path: Path) -> AsyncIterator[Path]:
    server = Server(containerd_methods())
    path = tmp_path / "rpc.sock"
    server.bind(path)
    await server.start()
    yield path
    await server.stop(0.5)


async def ctr(socket: Path, *args: str) -> tuple[int, str]:
    assert CTR is not None, "containerd's ctr is missing: run scripts/install.sh --test"
    proc = await asyncio.create_subprocess_exec(
        CTR,
        "--address",
        str(socket),
        "--timeout",
        "10s",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    out, _ = await asyncio.wait_for(proc.communicate(), 30)
    return proc.returncode or 0, out.decode()


async def test_a_unary_reply_reaches_grpc_go(socket: Path) -> None:
    _, out = await ctr(socket, "version")
    server = out.split("Server:", 1)[1]
    assert "Version:  podling-rpc" in server and "Revision: r1" in server


async def test_a_large_reply_reaches_grpc_go_whole(socket: Path) -> None:
    code, out = await ctr(socket, "namespaces", "ls", "-q")
    assert code == 0, out
    assert out.split() == [f"ns-{i:05d}" for i in range(NAMESPACES)]


async def test_grpc_go_reads_the_status_and_its_message(socket: Path) -> None:
    code, out = await ctr(socket, "images", "ls")
    assert code != 0
    assert "no such image: ünïcode 100% ✓: not found" in out


async def test_grpc_go_reads_a_stream_then_its_status(socket: Path) -> None:
    code, out = await ctr(socket, "events")
    lines = out.splitlines()
    assert code != 0
    assert [line.split()[-1] for line in lines[:3]] == [
        f'{{"container_id":"ct{i}","exited_at":"0001-01-01T00:00:00Z"}}' for i in range(3)
    ]
    assert "code = NotFound desc = the stream ends here" in lines[3]
