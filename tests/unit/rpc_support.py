"""A podling.rpc Server with test methods on a temporary socket, for the rpc unit tests.

Methods live under /test.T/ and speak CRI VersionRequest / VersionResponse: the request's
`version` field tells the handler what to do ("sleep:0.5", "fail:NOT_FOUND:why", ...), the
reply's `version` says what it did.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from cri_api.v1 import api_pb2 as pb

from podling.errors import NotFound
from podling.rpc.calls import Method
from podling.rpc.server import Server, encode_reply, message_decoder

PREFIX = "/test.T/"


class Handlers:
    """The test methods; `cancelled` records the calls whose handler was cancelled."""

    def __init__(self) -> None:
        self.cancelled: list[str] = []
        self.started = asyncio.Event()

    async def wait_cancelled(self, timeout: float = 2.0) -> list[str]:
        """`cancelled`, once something is in it (or the timeout passed)."""
        for _ in range(int(timeout / 0.02)):
            if self.cancelled:
                break
            await asyncio.sleep(0.02)
        return self.cancelled

    async def echo(self, request: pb.VersionRequest, context: Any) -> Any:
        cmd = request.version
        if cmd.startswith("sleep:"):
            self.started.set()
            try:
                await asyncio.sleep(float(cmd.split(":")[1]))
            except asyncio.CancelledError:
                self.cancelled.append(cmd)
                raise
            return pb.VersionResponse(version="slept")
        if cmd.startswith("fail:"):
            raise NotFound(cmd.split(":", 2)[2])
        if cmd == "crash":
            raise ZeroDivisionError("a bug")
        if cmd.startswith("big:"):
            return pb.VersionResponse(version="x" * int(cmd.split(":")[1]))
        if cmd == "bytes":
            return pb.VersionResponse(runtime_name="pre-encoded").SerializeToString()
        return pb.VersionResponse(version=f"echo {len(cmd)}")

    def now(self, request: pb.VersionRequest, context: Any) -> Any:
        """A plain function: the server calls it inside its read callback."""
        if request.version.startswith("fail:"):
            raise NotFound(request.version[5:])
        if request.version == "crash":
            raise ZeroDivisionError("a bug")
        return pb.VersionResponse(version=f"now {context.method}")

    async def count(self, request: pb.VersionRequest, context: Any) -> AsyncIterator[Any]:
        n, _, then = request.version.partition(":")
        for i in range(int(n)):
            yield pb.VersionResponse(version=str(i))
        if then:
            raise NotFound(then)


def methods(h: Handlers) -> dict[str, Method]:
    decode = message_decoder(pb.VersionRequest)
    return {
        f"{PREFIX}Echo": Method("Echo", decode, encode_reply, h.echo),
        f"{PREFIX}Now": Method("Now", decode, encode_reply, h.now),
        f"{PREFIX}Count": Method("Count", decode, encode_reply, h.count, streaming=True),
    }


async def start(tmp: Path, h: Handlers) -> tuple[Server, Path]:
    server = Server(methods(h))
    sock = tmp / "rpc.sock"
    server.bind(sock)
    await server.start()
    return server, sock
