"""Port-forward over SPDY (§6), also used inside the SPDY-over-WebSocket tunnel.

Vocabulary: each forwarded TCP connection is a *pair* of client streams sharing a
`requestid` and a `port` header: the `error` stream (server → client error text) and
the `data` stream (bytes both ways). Once both exist the backend dials the port in the
pod and the data stream is copied to and from that socket. Client FIN on data → the
socket's write side is shut down; pod EOF → FIN on data, then at most 1 s for the
client side to finish. Both streams get FIN when the forward ends. Failures (nothing
listens, port not allowed by the request) are written as a JSON line to the error
stream. Many pairs run concurrently on one session.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Coroutine, Mapping
from dataclasses import dataclass
from typing import Any

from podling.errors import PodlingError
from podling.streaming.backend import Backend, PortForwardParams
from podling.streaming.spdy.frames import PROTOCOL_ERROR
from podling.streaming.spdy.session import SpdySession, SpdyStream

log = logging.getLogger(__name__)

VERSION = "portforward.k8s.io"
CHUNK = 32 * 1024
GRACE = 1.0  # after the pod closed, how long the client may take to finish its side


@dataclass
class _Pair:
    port: int
    error: SpdyStream | None = None
    data: SpdyStream | None = None
    expiry: asyncio.Task[None] | None = None


def stream_port(stream: SpdyStream) -> int | None:
    """The stream's `port` header if it is a decimal 1..65535, else None."""
    return _port(stream.headers)


def stream_filter(headers: Mapping[str, str]) -> int | None:
    """For SpdySession(stream_filter=...): refuse (RST, no reply) a stream whose type is
    not error/data or whose port is not a decimal 1..65535."""
    if headers.get("streamtype") not in ("error", "data") or _port(headers) is None:
        return PROTOCOL_ERROR
    return None


def _port(headers: Mapping[str, str]) -> int | None:
    text = headers.get("port", "")
    if not text.isdigit() or not 0 < int(text) <= 65535:
        return None
    return int(text)


def request_id(stream: SpdyStream, kind: str) -> str:
    """The `requestid` header; ancient clients omit it: derive it from the stream id."""
    rid = stream.headers.get("requestid")
    if rid is not None:
        return rid
    return str(stream.id if kind == "error" else stream.id - 2)


class PortForwarder:
    """Serves one port-forward session. `serve` returns when the client closed the
    connection (or the session idled out); every forward is then cancelled."""

    def __init__(
        self,
        session: SpdySession,
        backend: Backend,
        params: PortForwardParams,
        *,
        pair_timeout: float = 30.0,
    ) -> None:
        self._session = session
        self._backend = backend
        self._params = params
        self._pair_timeout = pair_timeout
        self._pairs: dict[str, _Pair] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    async def serve(self) -> None:
        runner = asyncio.create_task(self._session.run())
        try:
            while True:
                try:
                    stream = await self._session.accept()
                except ConnectionError:
                    return
                await self._on_stream(stream)
        finally:
            for task in self._tasks:
                task.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)
            with contextlib.suppress(ConnectionError, OSError):
                await self._session.close()
            runner.cancel()
            await asyncio.gather(runner, return_exceptions=True)

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def _on_stream(self, stream: SpdyStream) -> None:
        kind = stream.headers.get("streamtype", "")
        port = stream_port(stream)
        if kind not in ("error", "data") or port is None:
            log.info("port-forward: refusing stream %d with headers %s", stream.id, stream.headers)
            await stream.reset(PROTOCOL_ERROR)
            return
        rid = request_id(stream, kind)
        pair = self._pairs.get(rid)
        if pair is None:
            pair = self._pairs[rid] = _Pair(port)
            pair.expiry = self._spawn(self._expire(rid, pair))
        if getattr(pair, kind) is not None or pair.port != port:
            await self._fail(
                pair, stream, f"duplicate or mismatched {kind} stream for request {rid}"
            )
            return
        setattr(pair, kind, stream)
        if pair.error is not None and pair.data is not None:
            del self._pairs[rid]
            if pair.expiry is not None:
                pair.expiry.cancel()
            self._spawn(self._forward(pair.error, pair.data, port))

    async def _expire(self, rid: str, pair: _Pair) -> None:
        """Drop a pair whose second stream did not come within the pair timeout."""
        await asyncio.sleep(self._pair_timeout)
        if self._pairs.get(rid) is pair:
            del self._pairs[rid]
            await self._fail(pair, None, f"timed out waiting for the other stream of request {rid}")

    async def _fail(self, pair: _Pair, extra: SpdyStream | None, text: str) -> None:
        log.info("port-forward: %s", text)
        with contextlib.suppress(ConnectionError, OSError):
            if pair.error is not None:
                await pair.error.write(_error_line(text, close=True))
            for stream in (pair.error, pair.data, extra):
                if stream is not None:
                    await stream.close()

    async def _forward(self, error: SpdyStream, data: SpdyStream, port: int) -> None:
        sandbox = self._params.pod_sandbox_id
        try:
            if self._params.ports and port not in self._params.ports:
                raise PodlingError(
                    f"port {port} is not among the ports of the port-forward request "
                    f"{list(self._params.ports)}"
                )
            reader, writer = await self._backend.dial(sandbox, port)
        except PodlingError as e:
            text = f"error forwarding port {port} to pod {sandbox}, uid : {e.message}"
            await self._fail(_Pair(port, error, data), None, text)
            return
        try:
            problem = await _copy_both(data, reader, writer)
            with contextlib.suppress(ConnectionError, OSError):
                if problem:
                    msg = f"error forwarding port {port} to pod {sandbox}, uid : {problem}"
                    await error.write(_error_line(msg, close=False))
                await data.close()
                await error.close()
        finally:
            writer.close()


async def _copy_both(
    data: SpdyStream, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
) -> str:
    """Copy stream ↔ socket until both directions ended (or the pod side ended and the
    grace passed); '' or the text of an I/O error."""
    up = asyncio.create_task(_client_to_pod(data, writer))
    down = asyncio.create_task(_pod_to_client(reader, data))
    try:
        await asyncio.wait({up, down}, return_when=asyncio.FIRST_COMPLETED)
        if down.done() and not up.done():
            await asyncio.wait({up}, timeout=GRACE)
        elif up.done() and not down.done():
            await asyncio.wait({down})  # client half-closed: the pod may still answer
    finally:
        for task in (up, down):
            task.cancel()
        results = await asyncio.gather(up, down, return_exceptions=True)
    errors = [str(r) for r in results if isinstance(r, OSError)]
    return "; ".join(errors)


async def _client_to_pod(data: SpdyStream, writer: asyncio.StreamWriter) -> None:
    while chunk := await data.read():
        writer.write(chunk)
        await writer.drain()
    if writer.can_write_eof():
        writer.write_eof()


async def _pod_to_client(reader: asyncio.StreamReader, data: SpdyStream) -> None:
    while chunk := await reader.read(CHUNK):
        await data.write(chunk)
    await data.close()


def _error_line(text: str, *, close: bool) -> bytes:
    obj: dict[str, object] = {"closeConnection": True} if close else {}
    obj["message"] = text
    return json.dumps(obj).encode() + b"\n"
