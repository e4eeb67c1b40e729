"""exec / attach over SPDY (the Kubernetes remote-command protocol, §5).

Vocabulary: the client opens one SPDY stream per standard stream, named by its
`streamtype` header (error, stdin, stdout, stderr, resize — never identify them by id).
The server waits until all the streams the CRI request implies exist (30 s at most),
runs the backend, and ends with: stop input (RST stdin/resize), the status on the
error stream (v4+: JSON Status always; v1-v3: text on failure only), FIN on
stdout/stderr/error, then waits (bounded) for the client to close the connection.
If the client vanishes first, the backend call is cancelled.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from podling.streaming import status
from podling.streaming.backend import AttachParams, Backend, ExecParams
from podling.streaming.spdy.session import SpdySession, SpdyStream
from podling.streaming.status import QueueProcessIO, ResizeDecoder

log = logging.getLogger(__name__)

V1 = "channel.k8s.io"
V2 = "v2.channel.k8s.io"
V3 = "v3.channel.k8s.io"
V4 = "v4.channel.k8s.io"
# Server preference does not matter (the client's order decides); v5 is not listed, as
# in the reference server, so a v5 client gets v4, which is identical on SPDY.
VERSIONS = (V4, V3, V2, V1)
STREAM_TYPES = ("error", "stdin", "stdout", "stderr", "resize")
CHUNK = 32 * 1024


@dataclass
class Streams:
    """The client's streams by type (absent ones are None)."""

    by_type: dict[str, SpdyStream] = field(default_factory=dict)

    def get(self, kind: str) -> SpdyStream | None:
        return self.by_type.get(kind)


def expected_types(params: ExecParams | AttachParams, version: str) -> set[str]:
    """The stream types the client opens for this request and protocol version."""
    types = {"error"}
    types |= {name for name, on in (("stdin", params.stdin), ("stdout", params.stdout)) if on}
    if params.stderr and not params.tty:
        types.add("stderr")
    if params.tty and version not in (V1, V2):
        types.add("resize")
    return types


async def collect(session: SpdySession, expected: set[str], timeout: float) -> Streams:
    """Accept streams until every expected type arrived. TimeoutError after `timeout`;
    ConnectionError if the session ends first. Unknown types are accepted and ignored."""
    streams = Streams()
    async with asyncio.timeout(timeout):
        while not expected <= streams.by_type.keys():
            stream = await session.accept()
            kind = stream.headers.get("streamtype", "")
            if kind not in STREAM_TYPES:
                log.info("ignoring SPDY stream %d of unknown type %r", stream.id, kind)
                await stream.reset()  # unread streams would stall the session's reader
                continue
            old = streams.by_type.get(kind)
            if old is not None:  # a second stream of one type: the newer one wins
                await old.reset()
            streams.by_type[kind] = stream
    return streams


async def serve(
    session: SpdySession,
    version: str,
    backend: Backend,
    params: ExecParams | AttachParams,
    *,
    creation_timeout: float = 30.0,
    linger: float = 60.0,
) -> None:
    """Run one remote-command session on `session` (whose reader loop this runs) and
    close the session when done."""
    runner = asyncio.create_task(session.run())
    try:
        try:
            streams = await collect(session, expected_types(params, version), creation_timeout)
        except (TimeoutError, ConnectionError) as e:
            log.info("remote-command streams not created: %s", e or "timeout")
            return
        outcome = await _run(session, runner, streams, version, backend, params)
        if outcome is None:
            return  # the client went away: nothing to report to
        await _finish(streams, version, outcome)
        with contextlib.suppress(asyncio.TimeoutError):
            # let the client read everything and close first (§5.6 step 6)
            await asyncio.wait_for(asyncio.shield(runner), linger)
    finally:
        await _close(session, runner)


async def _run(
    session: SpdySession,
    runner: asyncio.Task[None],
    streams: Streams,
    version: str,
    backend: Backend,
    params: ExecParams | AttachParams,
) -> status.Outcome | None:
    """Run the backend wired to the streams; None if the connection ended first."""
    io = QueueProcessIO(
        has_stdin=params.stdin and streams.get("stdin") is not None,
        stdout=_writer(streams.get("stdout")),
        stderr=_writer(streams.get("stderr") if not params.tty else None),
    )
    stdin = streams.get("stdin")
    if version == V1 and stdin is not None:
        await stdin.close()  # v1: the server half-closes stdin at once
    pumps = [asyncio.create_task(_pump_stdin(stdin, io))]
    resize = streams.get("resize")
    if resize is not None:
        pumps.append(asyncio.create_task(_pump_resize(resize, io)))
    work = asyncio.create_task(status.run_backend(backend, params, io))
    try:
        await asyncio.wait({work, runner}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        io.end()
        for task in (*pumps, work) if not work.done() else pumps:
            task.cancel()
        await asyncio.gather(*pumps, work, return_exceptions=True)
    return None if work.cancelled() else work.result()


def _writer(stream: SpdyStream | None) -> Callable[[bytes], Awaitable[None]] | None:
    if stream is None:
        return None

    async def write(data: bytes) -> None:
        for i in range(0, len(data), CHUNK):
            await stream.write(data[i : i + CHUNK])

    return write


async def _pump_stdin(stream: SpdyStream | None, io: QueueProcessIO) -> None:
    if stream is None:
        return
    while data := await stream.read():
        await io.push_stdin(data)
    await io.push_stdin(b"")  # FIN or RST from the client: stdin is closed


async def _pump_resize(stream: SpdyStream, io: QueueProcessIO) -> None:
    decoder = ResizeDecoder()
    try:
        while data := await stream.read():
            for size in decoder.feed(data):
                io.push_size(size)
    except ValueError as e:
        log.warning("ignoring the rest of the resize stream: %s", e)


async def _finish(streams: Streams, version: str, outcome: status.Outcome) -> None:
    """Stop input, write the status, FIN the output streams (§5.6 steps 3-5)."""
    with contextlib.suppress(ConnectionError, OSError):
        for kind in ("stdin", "resize"):
            stream = streams.get(kind)
            if stream is not None and version != V1:
                await stream.reset()
        error = streams.get("error")
        payload = status.v4_status(outcome) if version == V4 else status.v1_status(outcome)
        if error is not None and payload:
            await error.write(payload)
        for kind in ("stdout", "stderr", "error"):
            stream = streams.get(kind)
            if stream is not None:
                await stream.close()


async def _close(session: SpdySession, runner: asyncio.Task[None]) -> None:
    with contextlib.suppress(ConnectionError, OSError):
        await session.close()
    runner.cancel()
    await asyncio.gather(runner, return_exceptions=True)
