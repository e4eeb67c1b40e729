"""The one place where RPCs are logged and errors become gRPC statuses.

Every RPC gets one structured log line: method, the ids it names, duration, outcome (a
successful poll at DEBUG, see POLLS).
A PodlingError becomes its own status code with its message; anything unexpected
becomes INTERNAL with the traceback in the daemon log and a short message for the
client (never the traceback itself).
"""

from __future__ import annotations

import logging
import time
from typing import Any

from podling.errors import PodlingError
from podling.metrics import Metrics

log = logging.getLogger("podling.rpc")

# gRPC status codes (grpc/doc/statuscodes.md)
CODES = {
    "OK": 0,
    "CANCELLED": 1,
    "UNKNOWN": 2,
    "INVALID_ARGUMENT": 3,
    "DEADLINE_EXCEEDED": 4,
    "NOT_FOUND": 5,
    "ALREADY_EXISTS": 6,
    "PERMISSION_DENIED": 7,
    "RESOURCE_EXHAUSTED": 8,
    "FAILED_PRECONDITION": 9,
    "ABORTED": 10,
    "OUT_OF_RANGE": 11,
    "UNIMPLEMENTED": 12,
    "INTERNAL": 13,
    "UNAVAILABLE": 14,
    "DATA_LOSS": 15,
    "UNAUTHENTICATED": 16,
}

# Status messages echo request fields; gRPC clients refuse trailers over 16 KiB (they then
# report RESOURCE_EXHAUSTED instead of our code), so a message is cut to this many bytes as
# sent (grpc-message percent-encodes every byte outside printable ASCII, and '%').
MAX_MESSAGE = 4096

# What the kubelet polls (every second, and per pod): when they succeed their line is at
# DEBUG, or 100 pods would write hundreds of INFO lines a second (containerd and CRI-O
# keep these at debug too). Their failures, and every other RPC, log at INFO or above.
POLLS = frozenset(
    {
        "Version",
        "Status",
        "RuntimeConfig",
        "ListPodSandbox",
        "PodSandboxStatus",
        "ListContainers",
        "ContainerStatus",
        "ContainerStats",
        "ListContainerStats",
        "PodSandboxStats",
        "ListPodSandboxStats",
        "ListMetricDescriptors",
        "ListPodSandboxMetrics",
        "ListImages",
        "ImageStatus",
        "ImageFsInfo",
    }
)

# Request fields worth naming in the log line, in the order they are printed.
_ID_FIELDS = ("pod_sandbox_id", "container_id", "image")


class Status(Exception):
    """An RPC ends with gRPC status `code` (a CODES name) and `message`."""

    def __init__(self, code: str, message: str, unexpected: bool = False) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.unexpected = unexpected  # a bug, not a refusal: logged as an error


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


def as_status(method: str, exc: BaseException) -> Status:
    """The status an exception from `method`'s handler ends the RPC with."""
    if isinstance(exc, Status):
        return exc
    if isinstance(exc, PodlingError):
        return Status(exc.code, status_message(exc.message))
    log.error("%s failed unexpectedly", method, exc_info=exc)
    message = f"{method}: internal error ({type(exc).__name__}); see podlingd's log"
    return Status("INTERNAL", message, unexpected=True)


def log_line(
    method: str, request: Any, start: float, status: Status | None, metrics: Metrics | None
) -> None:
    """Log one finished RPC (`status` None: OK) and count it in `metrics`."""
    seconds = time.perf_counter() - start
    outcome = "OK" if status is None else status.code
    if metrics is not None:
        metrics.rpc(method, outcome, seconds)
    if status is None:
        level = logging.DEBUG if method in POLLS else logging.INFO
    else:
        level = logging.ERROR if status.unexpected else logging.INFO
    if not log.isEnabledFor(level):
        return
    extra: dict[str, Any] = {
        "method": method,
        **request_ids(request),
        "duration_ms": round(seconds * 1000, 3),
        "outcome": outcome,
    }
    if status is not None:
        extra["error"] = status.message
    log.log(level, "rpc", extra=extra)
