"""Answer UNIMPLEMENTED, with a clear message, for every CRI method not built yet."""

from __future__ import annotations

from typing import Any

from google.protobuf.descriptor import ServiceDescriptor

from podling.errors import Unimplemented


def fill_unimplemented(cls: type[Any], service: ServiceDescriptor) -> type[Any]:
    """Give `cls` an async method raising Unimplemented for each RPC it does not define,
    so every method of `service` has a handler that is logged and names the RPC."""
    for m in service.methods:
        if any(m.name in k.__dict__ for k in cls.__mro__):
            continue

        setattr(cls, m.name, _not_built(service.name, m.name, m.server_streaming))
    return cls


def _not_built(service: str, name: str, streaming: bool) -> Any:
    message = f"podling does not implement {service}.{name} yet"

    async def unary(self: Any, request: Any, context: Any) -> Any:
        raise Unimplemented(message)

    async def stream(self: Any, request: Any, context: Any) -> Any:
        raise Unimplemented(message)
        yield  # makes this an async generator, as server-streaming handlers must be

    return stream if streaming else unary
