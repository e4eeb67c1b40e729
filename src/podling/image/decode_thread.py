"""A layer blob decoded on a second core: decompression and the diff id run in a thread.

The tar-applying thread spends most of its time in tarfile and file writes; decoding
(zlib/zstd), counting and sha256 all release the GIL, so a background thread does them
and hands decoded chunks over through a bounded queue. Memory stays bounded: at most
QUEUE_DEPTH chunks wait in the queue, plus one the thread is handing over and one the
reader holds, each at most CHUNK bytes ((4 + 2) x 1 MiB = 6 MiB of decoded data).
"""

from __future__ import annotations

import contextlib
import hashlib
import queue
import threading
from typing import BinaryIO

from podling.errors import DataLoss, Internal, UnsafeContent
from podling.image.decoders import CORRUPT, DECODERS

QUEUE_DEPTH = 4
_POLL = 0.05  # how often a thread blocked on a full queue looks for a stop request


def too_big(max_bytes: int) -> UnsafeContent:
    return UnsafeContent(
        f"layer expands to more than {max_bytes} bytes: refusing a possible "
        "decompression bomb (raise the unpack size limit if the image is genuine)"
    )


class Tally:
    """Counts and hashes a byte stream chunk by chunk; UnsafeContent past `max_bytes`."""

    def __init__(self, max_bytes: int | None) -> None:
        self.max_bytes = max_bytes
        self.size = 0
        self._hash = hashlib.sha256()

    def add(self, chunk: bytes) -> None:
        self.size += len(chunk)
        if self.max_bytes is not None and self.size > self.max_bytes:
            raise too_big(self.max_bytes)
        self._hash.update(chunk)

    def diff_id(self) -> str:
        return "sha256:" + self._hash.hexdigest()


# Queue items: a chunk, the error that ended decoding, or None for the end of the stream.
_Item = bytes | Exception | None


class DecodedLayer:
    """The uncompressed stream of an open layer blob, decoded by a background thread.

    `start(max_bytes)` launches the thread (the first read does, without a limit, if
    nothing did); `next_chunk` then returns decoded chunks in order and b"" at the end.
    Errors arrive in stream order, after the chunks decoded before them: DataLoss for
    undecodable, truncated or unreadable blobs, UnsafeContent past `max_bytes`; once
    raised, they are raised again by every later read. `diff_id`/`size` cover every
    byte once the end was returned. `close` stops the thread and joins it (promptly:
    at most one chunk's decoding); the caller closes the blob file afterwards.
    """

    def __init__(self, blob: BinaryIO, codec: str, what: str) -> None:
        self._blob = blob
        self._decode = DECODERS[codec]
        self._what = what
        self._queue: queue.Queue[_Item] = queue.Queue(QUEUE_DEPTH)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._tally = Tally(None)
        self._ended = False
        self._error: Exception | None = None
        self._buf = bytearray()  # only for read(): the part of a chunk not returned yet

    def start(self, max_bytes: int | None = None) -> None:
        if self._thread is not None or self._stop.is_set():
            raise Internal(f"layer stream {self._what} was already read or closed")
        self._tally = Tally(max_bytes)
        self._thread = threading.Thread(
            target=self._run, name=f"podling-decode-{self._what}", daemon=True
        )
        self._thread.start()

    def next_chunk(self) -> bytes:
        """The next decoded chunk (never empty), b"" at the end of the stream."""
        if self._buf:
            data, self._buf = bytes(self._buf), bytearray()
            return data
        return self._take()

    def _take(self) -> bytes:
        if self._error is not None:
            raise self._error
        if self._ended:
            return b""
        if self._thread is None:
            self.start()
        item = self._queue.get()
        if isinstance(item, bytes):
            return item
        if item is None:
            self._ended = True
            return b""
        self._error = item
        raise item

    def read(self, size: int = -1, /) -> bytes:
        """Up to `size` bytes (all the rest if negative), for readers other than Meter."""
        while size < 0 or len(self._buf) < size:
            chunk = self._take()
            if not chunk:
                break
            self._buf += chunk
        n = len(self._buf) if size < 0 else min(size, len(self._buf))
        data = bytes(self._buf[:n])
        del self._buf[:n]
        return data

    def diff_id(self) -> str:
        self._check_ended()
        return self._tally.diff_id()

    @property
    def size(self) -> int:
        self._check_ended()
        return self._tally.size

    def close(self) -> None:
        """Stop the decoding thread and wait for it; idempotent."""
        self._stop.set()
        thread, self._thread = self._thread, None
        while thread is not None and thread.is_alive():
            self._discard_queued()  # a thread blocked on a full queue wakes up and sees stop
            thread.join(_POLL)

    def _check_ended(self) -> None:
        if not self._ended:
            raise Internal(f"layer stream {self._what}: result asked before its end was read")

    def _discard_queued(self) -> None:
        with contextlib.suppress(queue.Empty):
            while True:
                self._queue.get_nowait()

    def _run(self) -> None:
        """Thread body: decode, count, hash, hand over; always ends with one final item."""
        final: _Item = None
        try:
            with contextlib.closing(self._decode(self._blob)) as chunks:
                for chunk in chunks:
                    if self._stop.is_set():
                        return
                    self._tally.add(chunk)
                    if not self._put(chunk):
                        return
        except CORRUPT as e:
            final = DataLoss(
                f"layer {self._what} is corrupt or truncated ({e}); delete the blob and pull again"
            )
            final.__cause__ = e
        except Exception as e:  # any other failure: handed to the reader, who raises it
            final = e
        self._put(final)

    def _put(self, item: _Item) -> bool:
        """Queue `item`, waiting for room; False if the reader asked to stop meanwhile."""
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=_POLL)
                return True
            except queue.Full:
                continue
        return False
