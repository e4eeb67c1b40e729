"""A streaming Backend for tests: exec runs `cmd` as a local child (pipes, or a pty with
tty=True), attach relays a `sh` child like a container started with stdin/stdin_once,
dial connects to 127.0.0.1:port. Counts calls and cancellations so tests can check
that a vanished client cancelled the backend call (and that no child survives)."""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import socket
import struct
import termios
from collections.abc import AsyncIterator, Callable
from typing import Any

from podling.errors import Unavailable
from podling.streaming.backend import AttachParams, ExecParams, ProcessIO
from podling.streaming.server import StreamingServer


class FakeBackend:
    def __init__(self) -> None:
        self.calls = 0
        self.cancelled = 0
        self.finished = 0
        self.started = asyncio.Event()
        self.dials: list[int] = []
        self.pids: list[int] = []

    async def exec(self, p: ExecParams, io: ProcessIO) -> int:
        return await self._run(list(p.cmd), p.tty, p.stdin, io)

    async def attach(self, p: AttachParams, io: ProcessIO) -> None:
        await self._run(["sh"], p.tty, p.stdin, io)

    async def dial(
        self, pod_sandbox_id: str, port: int
    ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        self.dials.append(port)
        try:
            return await asyncio.open_connection("127.0.0.1", port)
        except OSError as e:
            raise Unavailable(f"dial 127.0.0.1:{port}: {e}") from e

    async def _run(self, cmd: list[str], tty: bool, stdin: bool, io: ProcessIO) -> int:
        self.calls += 1
        self.started.set()
        try:
            if tty:
                code = await _run_pty(cmd, io, self.pids)
            else:
                code = await _run_pipes(cmd, stdin, io, self.pids)
        except asyncio.CancelledError:
            self.cancelled += 1
            raise
        self.finished += 1
        return code


async def _pump(read: asyncio.StreamReader, write: object) -> None:
    while data := await read.read(65536):
        await write(data)  # type: ignore[operator]


async def _feed(io: ProcessIO, proc: asyncio.subprocess.Process) -> None:
    assert proc.stdin is not None
    with contextlib.suppress(OSError):
        while data := await io.read_stdin():
            proc.stdin.write(data)
            await proc.stdin.drain()
        proc.stdin.close()


async def _run_pipes(cmd: list[str], stdin: bool, io: ProcessIO, pids: list[int]) -> int:
    proc = await _spawn(
        cmd,
        stdin=asyncio.subprocess.PIPE if stdin else asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    pids.append(proc.pid)
    assert proc.stdout is not None and proc.stderr is not None
    feeder = asyncio.create_task(_feed(io, proc)) if stdin else None
    try:
        await asyncio.gather(
            _pump(proc.stdout, io.write_stdout), _pump(proc.stderr, io.write_stderr)
        )
        code = await proc.wait()
    finally:
        if feeder is not None:
            feeder.cancel()
            await asyncio.gather(feeder, return_exceptions=True)
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    return code if code >= 0 else 128 - code


async def _spawn(cmd: list[str], **kwargs: Any) -> asyncio.subprocess.Process:
    """Start a child; a cancellation during the start kills and reaps it (cancelling
    asyncio's own start leaves a child that two reapers then fight over)."""
    start = asyncio.create_task(asyncio.create_subprocess_exec(*cmd, **kwargs))
    try:
        return await asyncio.shield(start)
    except asyncio.CancelledError:
        with contextlib.suppress(OSError):
            proc = await start
            proc.kill()
            await proc.wait()
        raise


def _set_size(fd: int, width: int, height: int) -> None:
    fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", height, width, 0, 0))


async def _run_pty(cmd: list[str], io: ProcessIO, pids: list[int]) -> int:
    master, slave = os.openpty()
    try:
        proc = await _spawn(cmd, stdin=slave, stdout=slave, stderr=slave, start_new_session=True)
    finally:
        os.close(slave)
    pids.append(proc.pid)
    tasks = [
        asyncio.create_task(_pty_stdin(master, io)),
        asyncio.create_task(_pty_resizes(master, io)),
    ]
    try:
        await _pty_output(master, io)
        code = await proc.wait()
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        os.close(master)
    return code if code >= 0 else 128 - code


async def _pty_output(master: int, io: ProcessIO) -> None:
    """Relay the pty until the child side is closed (EIO)."""
    loop = asyncio.get_running_loop()
    ready = asyncio.Event()
    loop.add_reader(master, ready.set)
    try:
        while True:
            await ready.wait()
            ready.clear()
            try:
                data = os.read(master, 65536)
            except OSError:
                return
            if not data:
                return
            await io.write_stdout(data)
    finally:
        loop.remove_reader(master)


async def _pty_stdin(master: int, io: ProcessIO) -> None:
    while data := await io.read_stdin():
        os.write(master, data)


async def _pty_resizes(master: int, io: ProcessIO) -> None:
    async for width, height in io.resizes():
        _set_size(master, width, height)


@contextlib.asynccontextmanager
async def serving(backend: object, **kwargs: object) -> AsyncIterator[StreamingServer]:
    """A started StreamingServer on 127.0.0.1:0, stopped (every session ended) on exit."""
    server = StreamingServer(backend, **kwargs)  # type: ignore[arg-type]
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


class Sink:
    """An output callback that collects what it is given."""

    def __init__(self) -> None:
        self.chunks: list[bytes] = []

    async def __call__(self, data: bytes) -> None:
        self.chunks.append(data)

    @property
    def data(self) -> bytes:
        return b"".join(self.chunks)


async def chunks(*items: bytes, delay: float = 0.0) -> AsyncIterator[bytes]:
    """An async stdin source yielding `items` (after `delay` seconds), then EOF."""
    await asyncio.sleep(delay)
    for item in items:
        yield item


async def eventually(cond: Callable[[], bool], timeout: float = 5.0) -> None:
    """Wait until cond() holds; AssertionError after `timeout` seconds."""
    deadline = asyncio.get_running_loop().time() + timeout
    while not cond():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.02)


@contextlib.asynccontextmanager
async def echo_server() -> AsyncIterator[int]:
    """A TCP server on 127.0.0.1 that echoes until the peer half-closes, then closes;
    yields its port."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError):
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()
        await server.wait_closed()


def free_port() -> int:
    """A 127.0.0.1 port nothing listens on (bound and released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])
