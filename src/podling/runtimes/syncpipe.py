"""conmon's sync pipe: the JSON lines conmon writes to the fd named by `_OCI_SYNCPIPE`.

With `--api-version 1` each line is `{"data": N}` or `{"data": -1, "message": "..."}`:
for `create` one line (the container pid, or -1 and runc's stderr); for `exec --sync`
two lines (the exec pid, then the exit code or -1 and "command timed out").
"""

from __future__ import annotations

import asyncio
import json
import os
from dataclasses import dataclass

from podling import errors

MAX_LINE = 64 << 10


@dataclass(frozen=True)
class SyncMessage:
    data: int
    message: str | None = None


def parse_message(line: bytes) -> SyncMessage:
    """One sync-pipe line → SyncMessage; errors.Internal if conmon wrote something else."""
    try:
        doc = json.loads(line)
        data = doc["data"]
        if not isinstance(data, int):
            raise TypeError(data)
    except (ValueError, KeyError, TypeError) as e:
        raise errors.Internal(f"conmon sent an unreadable sync message: {line[:200]!r}") from e
    message = doc.get("message")
    return SyncMessage(data, str(message) if message is not None else None)


class SyncPipe:
    """Async reader over the read end of a sync pipe; owns (and closes) the fd."""

    def __init__(self, fd: int) -> None:
        self._fd = fd
        self._reader: asyncio.StreamReader | None = None
        self._transport: asyncio.ReadTransport | None = None

    async def _open(self) -> asyncio.StreamReader:
        if self._reader is None:
            loop = asyncio.get_running_loop()
            reader = asyncio.StreamReader(limit=MAX_LINE)
            pipe = os.fdopen(self._fd, "rb", buffering=0)
            self._fd = -1  # the transport owns it now
            self._transport, _ = await loop.connect_read_pipe(
                lambda: asyncio.StreamReaderProtocol(reader), pipe
            )
            self._reader = reader
        return self._reader

    async def next(self, timeout: float | None) -> SyncMessage | None:
        """The next message; None at EOF (conmon exited without writing one).
        Raises TimeoutError after `timeout` seconds (None: wait for ever)."""
        reader = await self._open()
        async with asyncio.timeout(timeout):
            line = await reader.readline()
        if not line.strip():
            return None
        return parse_message(line)

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()
            self._transport = None
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
