"""The error tree. Each class names the gRPC status code it maps to.

Services raise these; the gRPC server (rpc/outcome.py) maps them to a status once. This module
does not import grpc, so every layer below the API edge can use it. Messages are for
the operator: they say what is wrong and, where possible, what to do about it.
"""

from __future__ import annotations

from typing import ClassVar


class PodlingError(Exception):
    """Base of every error podling answers with; `code` is a grpc.StatusCode name."""

    code: ClassVar[str] = "UNKNOWN"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message
        # the step of a multi-step operation that failed (set by services.rollback.Steps),
        # so callers can tell a runtime failure from a bad request without reading prose
        self.step: str | None = None


class InvalidArgument(PodlingError):
    """The request is malformed: the caller must change it."""

    code = "INVALID_ARGUMENT"


class NotFound(PodlingError):
    code = "NOT_FOUND"


class AlreadyExists(PodlingError):
    code = "ALREADY_EXISTS"


class FailedPrecondition(PodlingError):
    """The request is well-formed but the system is not in a state to serve it."""

    code = "FAILED_PRECONDITION"


class Unavailable(PodlingError):
    """A dependency (registry, runtime binary, ...) could not be reached; retrying may help."""

    code = "UNAVAILABLE"


class Unauthenticated(PodlingError):
    """A registry refused the credentials (or their absence)."""

    code = "UNAUTHENTICATED"


class PermissionDenied(PodlingError):
    code = "PERMISSION_DENIED"


class DeadlineExceeded(PodlingError):
    """An operation made no progress for too long (e.g. a stalled pull)."""

    code = "DEADLINE_EXCEEDED"


class ResourceExhausted(PodlingError):
    code = "RESOURCE_EXHAUSTED"


class Unimplemented(PodlingError):
    code = "UNIMPLEMENTED"


class Internal(PodlingError):
    code = "INTERNAL"


class DataLoss(PodlingError):
    """Content does not match its digest or size: corrupted in transit or at rest."""

    code = "DATA_LOSS"


class UnsafeContent(FailedPrecondition):
    """An image layer tries to write outside its snapshot, or is otherwise hostile."""


class ConfigError(Exception):
    """A config file is invalid. Not a gRPC error: it stops the daemon before it serves."""
