"""The one place where RPCs are logged and errors become gRPC statuses.

Every RPC gets one structured log line: method, the ids it names, duration, outcome.
A PodlingError becomes its own status code with its message; anything unexpected
becomes INTERNAL with the traceback in the daemon log and a short message for the
client (never the traceback itself).
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc

from podling.errors import PodlingError
from podling.metrics import Metrics

Context = grpc.aio.ServicerContext[Any, Any]

log = logging.getLogger("podling.rpc")

# Status messages echo request fields; gRPC refuses trailers over 16 KiB (the client then
# sees RESOURCE_EXHAUSTED instead of our code), so a message is cut to this many bytes as
# sent (grpc-message percent-encodes every byte outside printable ASCII, and '%').
MAX_MESSAGE = 4096

# Request fields worth naming in the log line, in the order they are printed.
_ID_FIELDS = ("pod_sandbox_id", "container_id", "image")


def request_ids(request: Any) -> dict[str, str]:
    """The ids a request names (`image` is an ImageSpec: its `image` string is taken)."""
    out: dict[str, str] = {}
    for name in _ID_FIELDS:
        if not hasattr(request, "DESCRIPTOR") or name not in request.DESCRIPTOR.fields_by_name:
            continue
        value = getattr(request, name)
        text = value if isinstance(value, str) else getattr(value, "image", "")
        if text:
            out[name] = text
    return out


class LoggingErrorInterceptor(grpc.aio.ServerInterceptor):
    """Wraps unary-unary and unary-stream handlers with logging and error mapping.

    The wrapped handler of each method is built on its first call and reused: the
    services registered never change while the server runs.
    """

    def __init__(self, metrics: Metrics | None = None) -> None:
        self._wrapped: dict[str, grpc.RpcMethodHandler[Any, Any]] = {}
        self._metrics = metrics  # counts and times every RPC, when given

    async def intercept_service(
        self,
        continuation: Callable[
            [grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any] | None]
        ],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any] | None:
        wrapped = self._wrapped.get(details.method)
        if wrapped is not None:
            return wrapped
        handler = await continuation(details)
        if handler is None:
            return handler
        wrapped = _wrap(details.method.rsplit("/", 1)[-1], handler, self._metrics)
        self._wrapped[details.method] = wrapped
        return wrapped


def _wrap(
    method: str, handler: grpc.RpcMethodHandler[Any, Any], metrics: Metrics | None
) -> grpc.RpcMethodHandler[Any, Any]:
    if handler.unary_unary is not None:
        return grpc.unary_unary_rpc_method_handler(
            _wrap_unary(method, handler.unary_unary, metrics),
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )
    if handler.unary_stream is not None:
        return grpc.unary_stream_rpc_method_handler(
            _wrap_stream(method, handler.unary_stream, metrics),
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )
    return handler


def _wire_size(char: str) -> int:
    return 1 if " " <= char <= "~" and char != "%" else 3 * len(char.encode("utf-8", "replace"))


def status_message(message: str) -> str:
    """`message`, cut to at most MAX_MESSAGE bytes on the wire, saying how much was cut."""
    size = 0
    for i, char in enumerate(message):
        size += _wire_size(char)
        if size > MAX_MESSAGE:
            return f"{message[:i]}... ({len(message) - i} more characters)"
    return message


async def _fail(context: Context, method: str, exc: BaseException) -> None:
    if isinstance(exc, PodlingError):
        await context.abort(grpc.StatusCode[exc.code], status_message(exc.message))
    log.error("%s failed unexpectedly", method, exc_info=exc)
    await context.abort(
        grpc.StatusCode.INTERNAL,
        f"{method}: internal error ({type(exc).__name__}); see podlingd's log",
    )


def _outcome(exc: BaseException | None) -> str:
    if exc is None:
        return "OK"
    return exc.code if isinstance(exc, PodlingError) else "INTERNAL"


def _log_line(
    method: str, request: Any, start: float, exc: BaseException | None, metrics: Metrics | None
) -> None:
    seconds = time.perf_counter() - start
    extra: dict[str, Any] = {
        "method": method,
        **request_ids(request),
        "duration_ms": round(seconds * 1000, 3),
        "outcome": _outcome(exc),
    }
    if metrics is not None:
        metrics.rpc(method, extra["outcome"], seconds)
    if isinstance(exc, PodlingError):
        extra["error"] = exc.message
    level = logging.INFO if exc is None or isinstance(exc, PodlingError) else logging.ERROR
    log.log(level, "rpc", extra=extra)


def _wrap_unary(
    method: str, behavior: Callable[..., Any], metrics: Metrics | None
) -> Callable[..., Any]:
    async def wrapped(request: Any, context: Context) -> Any:
        start = time.perf_counter()
        try:
            response = await behavior(request, context)
        except Exception as exc:  # every error ends here, by design
            if isinstance(exc, grpc.aio.AbortError):
                raise
            _log_line(method, request, start, exc, metrics)
            await _fail(context, method, exc)
            raise  # unreachable: abort raises
        _log_line(method, request, start, None, metrics)
        return response

    return wrapped


def _wrap_stream(
    method: str, behavior: Callable[..., Any], metrics: Metrics | None
) -> Callable[..., Any]:
    async def wrapped(request: Any, context: Context) -> AsyncIterator[Any]:
        start = time.perf_counter()
        try:
            async for item in behavior(request, context):
                yield item
        except Exception as exc:
            if isinstance(exc, grpc.aio.AbortError):
                raise
            _log_line(method, request, start, exc, metrics)
            await _fail(context, method, exc)
            raise
        _log_line(method, request, start, None, metrics)

    return wrapped
