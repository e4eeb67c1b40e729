"""Container lifecycle events for GetContainerEvents: a fan-out to every subscriber.

Each subscriber gets its own bounded queue; a subscriber that stops reading loses its
oldest events rather than making the daemon hold memory without bound (the kubelet
re-lists on its own schedule anyway).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass

CREATED, STARTED, STOPPED, DELETED = "created", "started", "stopped", "deleted"


@dataclass(frozen=True)
class Event:
    kind: str  # created, started, stopped, deleted
    container_id: str  # a container id, or the pod id for a pod's own events
    pod_id: str
    at_ns: int


class EventBus:
    def __init__(self, queue_size: int = 1000) -> None:
        self._subscribers: set[asyncio.Queue[Event]] = set()
        self._size = queue_size

    def publish(self, event: Event) -> None:
        for q in self._subscribers:
            if q.full():
                with contextlib.suppress(asyncio.QueueEmpty):
                    q.get_nowait()
            q.put_nowait(event)

    async def subscribe(self) -> AsyncIterator[Event]:
        """Events from now on, until the caller stops iterating."""
        q: asyncio.Queue[Event] = asyncio.Queue(self._size)
        self._subscribers.add(q)
        try:
            while True:
                yield await q.get()
        finally:
            self._subscribers.discard(q)

    @property
    def subscribers(self) -> int:
        return len(self._subscribers)
