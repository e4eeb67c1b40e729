"""The byte-stream interfaces a SpdySession runs over, and its serialised frame writer.

Every frame of a connection goes through one FrameWriter: one lock around
"compress + write + drain", because header blocks share one zlib context per
direction and must reach the wire in the order they were compressed.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Protocol

from podling.streaming.spdy.frames import Frame, FrameEncoder
from podling.streaming.spdy.stream import SessionClosedError


class ByteReader(Protocol):
    """`read(n)` returns up to n bytes, b"" at EOF (asyncio.StreamReader fits)."""

    async def read(self, n: int) -> bytes: ...


class ByteWriter(Protocol):
    """asyncio.StreamWriter fits; so does a WebSocket tunnel adapter."""

    def write(self, data: bytes) -> None: ...

    async def drain(self) -> None: ...

    def close(self) -> None: ...


class FrameWriter:
    """Serialised frame output with a stop switch.

    After `stop()` nothing more is written except the final `goaway()`, and writers
    waiting for a drain give up at once (SessionClosedError), so a peer that stopped
    reading cannot keep anyone waiting forever.
    """

    def __init__(self, writer: ByteWriter) -> None:
        self._writer = writer
        self._encoder = FrameEncoder()
        self.lock = asyncio.Lock()
        self.stopped = asyncio.Event()
        self._stop_fut: asyncio.Future[None] | None = None
        self.broken = False  # a write failed: the connection is unusable
        self.last_write = time.monotonic()

    async def send(self, frame: Frame) -> None:
        async with self.lock:
            await self.write_locked(frame)

    async def write_locked(self, frame: Frame) -> None:
        """Encode, write and drain one frame; the caller holds `lock`. There is no
        await between compressing and writing, so blocks reach the wire in order.
        Raises SessionClosedError once stopped or when the connection fails."""
        if self.stopped.is_set():
            raise SessionClosedError("the SPDY session has ended")
        try:
            self._writer.write(self._encoder.encode(frame))
            await self._drain()
        except SessionClosedError:
            raise
        except (OSError, RuntimeError) as exc:
            self.broken = True
            self.stop()
            raise SessionClosedError(f"SPDY connection failed while writing: {exc}") from exc
        self.last_write = time.monotonic()

    async def _drain(self) -> None:
        drain = asyncio.ensure_future(self._writer.drain())
        try:
            await asyncio.wait({drain, self._stop_future()}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            if not drain.done():
                drain.cancel()
        if drain.cancelled():
            raise SessionClosedError("the SPDY session ended while writing")
        drain.result()

    async def goaway(self, frame: Frame, grace: float) -> None:
        """Write the final frame (even after stop()), waiting at most `grace` seconds
        for the lock and the drain; failures are ignored: the connection is ending."""
        if self.broken:
            return
        with contextlib.suppress(TimeoutError, OSError, RuntimeError):
            async with asyncio.timeout(grace), self.lock:
                self._writer.write(self._encoder.encode(frame))
                await self._writer.drain()

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self._writer.close()

    def stop(self) -> None:
        self.stopped.set()
        if self._stop_fut is not None and not self._stop_fut.done():
            self._stop_fut.set_result(None)

    def _stop_future(self) -> asyncio.Future[None]:
        if self._stop_fut is None:
            self._stop_fut = asyncio.get_running_loop().create_future()
            if self.stopped.is_set():
                self._stop_fut.set_result(None)
        return self._stop_fut
