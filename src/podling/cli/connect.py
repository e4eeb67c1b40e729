"""The client's connection to podlingd: endpoint resolution, stubs, and one-line errors."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, NoReturn

import grpc
from cri_api.v1 import api_pb2_grpc as pb_grpc

DEFAULT_ENDPOINT = "unix:///run/podling/podling.sock"
ADMIN = "/podling.v1.Admin/"


def endpoint(flag: str | None) -> str:
    """--runtime-endpoint, else CONTAINER_RUNTIME_ENDPOINT, else podling's default socket."""
    value = flag or os.environ.get("CONTAINER_RUNTIME_ENDPOINT") or DEFAULT_ENDPOINT
    if value.startswith("/"):
        value = "unix://" + value
    return value


@dataclass
class Client:
    channel: grpc.Channel
    runtime: Any
    images: Any
    timeout: float

    def admin_unary(
        self, method: str, request: dict[str, Any], timeout: float | None = None
    ) -> Any:
        call = self.channel.unary_unary(
            ADMIN + method, request_serializer=_enc, response_deserializer=_dec
        )
        return call(request, timeout=timeout or self.timeout)

    def admin_stream(self, method: str, request: dict[str, Any]) -> Iterator[dict[str, Any]]:
        call = self.channel.unary_stream(
            ADMIN + method, request_serializer=_enc, response_deserializer=_dec
        )
        return iter(call(request))


def _enc(doc: dict[str, Any]) -> bytes:
    return json.dumps(doc).encode()


def _dec(data: bytes) -> Any:
    return json.loads(data)


def fail(message: str) -> NoReturn:
    """One line on stderr (a multi-line message is folded), then exit 1."""
    one_line = "; ".join(part.strip() for part in message.splitlines() if part.strip())
    print(f"podling: {one_line}", file=sys.stderr)
    sys.exit(1)


@contextmanager
def connect(ep: str, timeout: float) -> Iterator[Client]:
    """A connected client; any RPC error inside the block exits with one line on stderr."""
    channel = grpc.insecure_channel(ep)
    try:
        try:
            grpc.channel_ready_future(channel).result(timeout=min(timeout, 10))
        except grpc.FutureTimeoutError:
            fail(f"cannot connect to podlingd at {ep}: is it running? (--runtime-endpoint)")
        client = Client(
            channel, pb_grpc.RuntimeServiceStub(channel), pb_grpc.ImageServiceStub(channel), timeout
        )
        try:
            yield client
        except grpc.RpcError as e:
            fail(describe(e))
    finally:
        channel.close()


def describe(e: grpc.RpcError) -> str:
    code = e.code() if hasattr(e, "code") else None
    details = e.details() if hasattr(e, "details") else str(e)
    name = code.name if code is not None else "UNKNOWN"
    return f"{details} ({name})"
