"""gRPC over HTTP/2 (grpc/doc/PROTOCOL-HTTP2.md), server side: one call per stream.

A call's request is one length-prefixed message; its response is headers, then one
message (unary) or any number (server streaming), then trailers carrying grpc-status. A
call that fails before sending anything answers "trailers only". Handlers are callables
(request, context) -> reply: async functions, or plain ones for what answers at once
without waiting (run inside the read callback), or async generators of replies for
streaming methods. They raise PodlingError (or Status) to refuse, like the rest of
podling. A reply is a message, or bytes already serialized.
"""

from __future__ import annotations

import asyncio
import inspect
import re
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

from podling.metrics import Metrics
from podling.rpc import frames
from podling.rpc.connection import MAX_REQUEST
from podling.rpc.outcome import CODES, Status, as_status, log_line
from podling.rpc.stream import Headers, Stream

CONTENT_TYPE = b"application/grpc"
RESPONSE_HEADERS = frames.encode_block([(b":status", b"200"), (b"content-type", CONTENT_TYPE)])
OK_TRAILERS = frames.encode_block([(b"grpc-status", b"0")])
# grpc-message is percent-encoded: every byte outside printable ASCII, and '%' itself
_MESSAGE_SAFE = "".join(chr(c) for c in range(0x20, 0x7F) if chr(c) != "%")
_TIMEOUT = re.compile(rb"(\d{1,8})([HMSmun])")
_UNITS = {b"H": 3600.0, b"M": 60.0, b"S": 1.0, b"m": 1e-3, b"u": 1e-6, b"n": 1e-9}


@dataclass(frozen=True)
class Method:
    """One RPC: `name` as logged, how its messages are (de)coded, its handler."""

    name: str
    decode: Callable[[bytes], Any]
    encode: Callable[[Any], bytes]
    handler: Callable[[Any, Any], Any]
    streaming: bool = False
    # async (a task per call), or a plain function that answers at once and is run
    # inside the read callback (the kubelet's polls: no task, no extra loop iteration)
    waits: bool = field(init=False)

    def __post_init__(self) -> None:
        waits = self.streaming or inspect.iscoroutinefunction(self.handler)
        object.__setattr__(self, "waits", waits)


class CallContext:
    """What a handler may ask about its call (the second argument of every handler)."""

    def __init__(self, method: str, deadline: float | None) -> None:
        self.method = method
        # time.monotonic() (the event loop's clock), or None: the client set no timeout
        self.deadline = deadline
        self.ended_by: str | None = None  # DEADLINE_EXCEEDED / CANCELLED / UNAVAILABLE
        self.task: asyncio.Task[None] | None = None
        self.timer: asyncio.TimerHandle | None = None

    def time_remaining(self) -> float | None:
        """Seconds until the client's deadline, or None if it set none."""
        if self.deadline is None:
            return None
        return max(0.0, self.deadline - time.monotonic())


def trailers(status: Status, with_headers: bool) -> bytes:
    """The header block ending a call with `status` (trailers only: `with_headers`)."""
    fields = [(b":status", b"200"), (b"content-type", CONTENT_TYPE)] if with_headers else []
    fields.append((b"grpc-status", str(CODES[status.code]).encode()))
    if status.message:
        fields.append((b"grpc-message", quote(status.message, safe=_MESSAGE_SAFE).encode()))
    return frames.encode_block(fields)


def parse_timeout(value: bytes) -> float:
    """grpc-timeout ("100m", "5S", ...) in seconds."""
    match = _TIMEOUT.fullmatch(value)
    if match is None:
        raise Status("INVALID_ARGUMENT", f"grpc-timeout {value!r} is not <digits><unit>")
    return int(match[1]) * _UNITS[match[2]]


def framed(message: bytes) -> bytes:
    """`message` as one gRPC length-prefixed message (not compressed)."""
    return b"\x00" + len(message).to_bytes(4, "big") + message


def unframe(body: bytes | bytearray) -> bytes:
    """The one message a unary request carries; Status when it carries anything else."""
    if len(body) < 5:
        raise Status("INVALID_ARGUMENT", "the request carries no message")
    if body[0] != 0:
        raise Status("UNIMPLEMENTED", "compressed requests are not supported: send identity")
    size = int.from_bytes(body[1:5], "big")
    if len(body) != 5 + size:
        raise Status("INVALID_ARGUMENT", "a unary request carries exactly one whole message")
    return bytes(body[5:])


class Dispatcher:
    """Answers each complete request of any connection through its Method: a plain
    function at once, an async one (or a stream) in a task of its own."""

    def __init__(self, methods: dict[str, Method], metrics: Metrics | None = None) -> None:
        self._methods = {path.encode(): m for path, m in methods.items()}
        self._metrics = metrics
        self._routes: dict[int, tuple[Headers, Method, float | None]] = {}  # see _route
        self.calls: set[CallContext] = set()

    def on_request(self, stream: Stream) -> None:
        try:
            method, deadline = self._route(stream)
        except Status as status:
            stream.send_headers(trailers(status, with_headers=True), end_stream=True)
            # not counted in the metrics: a client could invent any number of paths
            path = stream.headers.get(b":path", b"?").decode(errors="replace")
            log_line(path, None, time.perf_counter(), status, None)
            return
        ctx = CallContext(method.name, deadline)
        if not method.waits:
            self._run_now(stream, method, ctx)
            return
        loop = asyncio.get_running_loop()
        stream.context = ctx
        ctx.task = loop.create_task(self._run(stream, method, ctx))
        self.calls.add(ctx)
        if deadline is not None:
            ctx.timer = loop.call_at(deadline, self._end, ctx, "DEADLINE_EXCEEDED")

    def on_cancel(self, stream: Stream) -> None:
        if isinstance(stream.context, CallContext):
            self._end(stream.context, "CANCELLED")

    def shutdown(self) -> None:
        """Cancel every call still running (the server is stopping)."""
        for ctx in list(self.calls):
            self._end(ctx, "UNAVAILABLE")

    def _end(self, ctx: CallContext, why: str) -> None:
        if ctx in self.calls and ctx.ended_by is None and ctx.task is not None:
            ctx.ended_by = why
            ctx.task.cancel()

    def _route(self, stream: Stream) -> tuple[Method, float | None]:
        """The stream's method and deadline. What only the header block decides is worked
        out once per block: streams of a repeated block share one headers dict."""
        headers = stream.headers
        known = self._routes.get(id(headers))
        if known is None or known[0] is not headers:  # the dict is kept: its id is not reused
            known = (headers, *_resolve(self._methods, headers))
            if len(self._routes) >= 256:
                self._routes.clear()
            self._routes[id(headers)] = known
        if stream.too_large:
            raise Status("RESOURCE_EXHAUSTED", f"request larger than {MAX_REQUEST - 5} bytes")
        timeout = known[2]
        return known[1], None if timeout is None else time.monotonic() + timeout

    def _run_now(self, stream: Stream, method: Method, ctx: CallContext) -> None:
        """A handler that never waits, called on the spot: no task, no loop iteration."""
        start = time.perf_counter()
        request: Any = None
        status: Status | None = None
        try:
            request = method.decode(unframe(stream.body))
            _reply(stream, method.encode(method.handler(request, ctx)))
        except Exception as exc:  # every error of a handler ends here, by design
            status = as_status(method.name, exc)
        self._done(stream, method, request, start, status)

    async def _run(self, stream: Stream, method: Method, ctx: CallContext) -> None:
        start = time.perf_counter()
        request: Any = None
        status: Status | None = None
        try:
            request = method.decode(unframe(stream.body))
            if method.streaming:
                await self._stream(stream, method.handler(request, ctx), method.encode)
            else:
                _reply(stream, method.encode(await method.handler(request, ctx)))
        except asyncio.CancelledError:
            status = Status(ctx.ended_by or "CANCELLED", _ENDED.get(ctx.ended_by or "", ""))
        except Exception as exc:  # every error of a handler ends here, by design
            status = as_status(method.name, exc)
        finally:
            self.calls.discard(ctx)
            if ctx.timer is not None:
                ctx.timer.cancel()
        self._done(stream, method, request, start, status)

    def _done(
        self, stream: Stream, method: Method, request: Any, start: float, status: Status | None
    ) -> None:
        if status is not None:
            stream.send_headers(trailers(status, not stream.responded), end_stream=True)
        log_line(method.name, request, start, status, self._metrics)

    async def _stream(
        self, stream: Stream, replies: AsyncIterator[Any], encode: Callable[[Any], bytes]
    ) -> None:
        async for reply in replies:
            if not stream.responded:
                stream.send_headers(RESPONSE_HEADERS, flush=False)
            stream.send_data(framed(encode(reply)))
            await stream.drained()  # the client reads slowly: do not pile up replies
        if not stream.responded:
            stream.send_headers(RESPONSE_HEADERS, flush=False)
        stream.send_headers(OK_TRAILERS, end_stream=True)


def _resolve(methods: dict[bytes, Method], headers: Headers) -> tuple[Method, float | None]:
    """The method a request's headers call, and its timeout in seconds (None: none)."""
    if not headers.get(b"content-type", b"").startswith(CONTENT_TYPE):
        raise Status("INVALID_ARGUMENT", "content-type must be application/grpc")
    path = headers.get(b":path", b"")
    method = methods.get(path)
    if method is None:
        raise Status("UNIMPLEMENTED", f"unknown method {path.decode(errors='replace')}")
    if headers.get(b"grpc-encoding", b"identity") != b"identity":
        raise Status("UNIMPLEMENTED", "compressed requests are not supported: send identity")
    timeout = headers.get(b"grpc-timeout")
    return method, None if timeout is None else parse_timeout(timeout)


def _reply(stream: Stream, reply: bytes) -> None:
    """A unary call's whole response, in one write when the windows allow."""
    stream.respond(RESPONSE_HEADERS, framed(reply), OK_TRAILERS)


_ENDED = {
    "DEADLINE_EXCEEDED": "the client's deadline passed",
    "UNAVAILABLE": "podlingd is stopping",
}
