"""Streaming exec and attach: the CRI call gives a one-time URL; the streaming client
(SPDY by default, WebSocket with -r websocket) carries the terminal over it.

With a tty the local terminal goes into raw mode for the session (restored on exit,
whatever happens) and its size follows SIGWINCH.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
import termios
import tty as ttymod
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator

import click
from cri_api.v1 import api_pb2 as pb

from podling.cli.connect import Client, fail
from podling.cli.lookup import client_of, resolve_container
from podling.streaming import client as stream_client

TRANSPORTS = ("spdy", "websocket")
CHUNK = 32 * 1024

transport_option = click.option(
    "-r",
    "--transport",
    type=click.Choice(TRANSPORTS),
    default="spdy",
    show_default=True,
    help="streaming protocol",
)


def exec_stream(
    c: Client, cid: str, cmd: list[str], *, stdin: bool, tty: bool, transport: str
) -> int:
    """Run `cmd` through the Exec RPC and a stream; the remote exit code."""
    req = pb.ExecRequest(
        container_id=cid, cmd=cmd, tty=tty, stdin=stdin, stdout=True, stderr=not tty
    )
    url = str(c.runtime.Exec(req, timeout=c.timeout).url)
    return run_session(url, stdin=stdin, tty=tty, transport=transport)


@click.command()
@click.argument("container")
@click.option("-i", "--stdin", "interactive", is_flag=True, help="send our stdin to the container")
@click.option("-t", "--tty", is_flag=True, help="the container has a terminal (raw local tty)")
@transport_option
@click.pass_obj
def attach(
    obj: dict[str, object], container: str, interactive: bool, tty: bool, transport: str
) -> None:
    """Attach to a running container's output (and, with -i, its stdin). Ends when the
    container exits, or when our stdin ends (detach; a stdin-once container's stdin is
    closed instead)."""
    with client_of(obj) as c:
        req = pb.AttachRequest(
            container_id=resolve_container(c, container),
            tty=tty,
            stdin=interactive,
            stdout=True,
            stderr=not tty,
        )
        url = str(c.runtime.Attach(req, timeout=c.timeout).url)
    sys.exit(run_session(url, stdin=interactive, tty=tty, transport=transport))


def run_session(url: str, *, stdin: bool, tty: bool, transport: str) -> int:
    """One remote-command session wired to our stdio; its exit code (exits with one line
    on a stream failure)."""
    raw = tty and stdin and os.isatty(0)
    try:
        with raw_terminal(0 if raw else -1):
            return asyncio.run(_session(url, stdin=stdin, tty=tty, transport=transport))
    except KeyboardInterrupt:
        return 130
    except Exception as e:  # the stream broke: one line, as every verb fails
        fail(f"the stream failed: {e}")


async def _session(url: str, *, stdin: bool, tty: bool, transport: str) -> int:
    resizes = terminal_sizes(1) if tty and os.isatty(1) else None
    return await stream_client.remote_command(
        url,
        protocol="websocket" if transport == "websocket" else "spdy",
        stdin=stdin_chunks(0) if stdin else None,
        stdout=_writer(sys.stdout.fileno()),
        stderr=None if tty else _writer(sys.stderr.fileno()),
        tty=tty,
        resizes=resizes,
    )


@contextlib.contextmanager
def raw_terminal(fd: int) -> Iterator[None]:
    """The terminal on `fd` in raw mode inside the block (fd < 0: nothing to do)."""
    if fd < 0:
        yield
        return
    saved = termios.tcgetattr(fd)
    ttymod.setraw(fd)
    try:
        yield
    finally:
        termios.tcsetattr(fd, termios.TCSADRAIN, saved)


def _writer(fd: int) -> Callable[[bytes], Awaitable[None]]:
    async def write(data: bytes) -> None:
        view = memoryview(data)
        while view:  # blocking fd: a slow terminal slows the stream, as it should
            view = view[os.write(fd, view) :]

    return write


async def stdin_chunks(fd: int) -> AsyncIterator[bytes]:
    """Our stdin as chunks, without a thread: wait until readable, then read. Regular
    files and /dev/null cannot be polled (EPERM) but never block either."""
    loop = asyncio.get_running_loop()
    while True:
        ready = loop.create_future()

        def wake(f: asyncio.Future[None] = ready) -> None:
            if not f.done():
                f.set_result(None)

        try:
            loop.add_reader(fd, wake)
        except PermissionError:
            pass
        else:
            try:
                await ready
            finally:
                loop.remove_reader(fd)
        data = os.read(fd, CHUNK)
        if not data:
            return
        yield data


async def terminal_sizes(fd: int) -> AsyncIterator[tuple[int, int]]:
    """(width, height) of the terminal on `fd` now, then after every SIGWINCH."""
    loop = asyncio.get_running_loop()
    changed: asyncio.Queue[None] = asyncio.Queue()
    loop.add_signal_handler(signal.SIGWINCH, changed.put_nowait, None)
    try:
        while True:
            size = os.get_terminal_size(fd)
            yield size.columns, size.lines
            await changed.get()
    finally:
        loop.remove_signal_handler(signal.SIGWINCH)


def register(group: click.Group) -> None:
    group.add_command(attach)
