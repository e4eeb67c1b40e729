"""Layer blobs as verified tar streams: decompression, byte counting, header limits.

`open_layer` turns a gzip, zstd or plain layer blob into its uncompressed tar stream,
decoded, counted and hashed (the diff id) by a background thread (decode_thread.py);
`Meter` serves that stream, or any other uncompressed one, to tarfile, enforcing the
uncompressed size limit and checking what follows the last member; `GuardedInfo` stops
tarfile from buffering oversized extended headers. Decoder failures raise DataLoss,
limit violations UnsafeContent.
"""

from __future__ import annotations

import io
import tarfile
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Protocol, Self

from podling.errors import DataLoss, Internal, InvalidArgument, UnsafeContent
from podling.image.decode_thread import DecodedLayer, Tally
from podling.image.decoders import CHUNK
from podling.image.manifest import LAYER_GZIP, LAYER_PLAIN, LAYER_ZSTD

_GZIP_MAGIC = b"\x1f\x8b"
_ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
# Media types whose compression we decide by sniffing: generic ones, and plain tar (tools
# are known to label compressed layers as plain; a tar never starts with these magics).
_SNIFFED = ("", "application/octet-stream", *LAYER_PLAIN)
_RECENT = 1 << 16  # > tarfile's read-ahead (one 10 KiB record), see Meter.check_trailer
_BLOCK = 512
# Extended headers are read into memory whole: cap them (real ones are a few KiB).
_MAX_EXT_HEADER = 1 << 20
_EXT_HEADER_TYPES = (
    tarfile.XHDTYPE,
    tarfile.XGLTYPE,
    tarfile.SOLARIS_XHDTYPE,
    tarfile.GNUTYPE_LONGNAME,
    tarfile.GNUTYPE_LONGLINK,
)


def _codec(media_type: str, head: bytes) -> str:
    mt = media_type.split(";")[0].strip()
    if mt in LAYER_GZIP:
        return "gzip"
    if mt in LAYER_ZSTD:
        return "zstd"
    if mt in _SNIFFED:
        if head.startswith(_GZIP_MAGIC):
            return "gzip"
        return "zstd" if head.startswith(_ZSTD_MAGIC) else "plain"
    raise InvalidArgument(
        f"unsupported layer media type {media_type!r}: expected a tar, tar+gzip or tar+zstd layer"
    )


@contextmanager
def open_layer(path: Path, media_type: str) -> Iterator[DecodedLayer]:
    """Open a layer blob as its decompressed tar stream (gzip, zstd or plain).

    The codec follows the media type; for generic or plain-tar media types it is sniffed
    from the magic bytes. Unknown media types raise InvalidArgument; undecodable data
    raises DataLoss while reading. Decoding runs in a background thread (see
    decode_thread.py) that is stopped and joined, and the blob closed, on leaving.
    """
    with path.open("rb") as f:
        head = f.read(4)
        f.seek(0)
        codec = _codec(media_type, head)
        layer = DecodedLayer(f, codec, f"{path.name} ({codec})")
        try:
            yield layer
        finally:
            layer.close()


class GuardedInfo(tarfile.TarInfo):
    """TarInfo that refuses oversized extended headers before tarfile buffers them."""

    @classmethod
    def frombuf(cls, buf: bytes | bytearray, encoding: str, errors: str) -> Self:
        info = super().frombuf(buf, encoding, errors)
        if info.type in _EXT_HEADER_TYPES and info.size > _MAX_EXT_HEADER:
            raise UnsafeContent(
                f"layer has a {info.size}-byte extended tar header (limit {_MAX_EXT_HEADER})"
            )
        return info


@dataclass(frozen=True)
class UnpackResult:
    diff_id: str  # "sha256:" + sha256 of the uncompressed tar stream
    size: int  # uncompressed bytes read


class ChunkSource(Protocol):
    """Decoded chunks in order (b"" at the end), counted and hashed by the source."""

    def next_chunk(self) -> bytes: ...
    def diff_id(self) -> str: ...
    @property
    def size(self) -> int: ...


class _Inline:
    """A caller's uncompressed stream as a chunk source, counted and hashed as it is read."""

    def __init__(self, stream: BinaryIO, max_bytes: int) -> None:
        self._stream = stream
        self._tally = Tally(max_bytes)

    def next_chunk(self) -> bytes:
        data = self._stream.read(CHUNK)
        self._tally.add(data)
        return data

    def diff_id(self) -> str:
        return self._tally.diff_id()

    @property
    def size(self) -> int:
        return self._tally.size


class Meter:
    """Read-only tar source: serves decoded chunks to tarfile, counting what it consumed.

    The chunk source (a DecodedLayer's thread, or `_Inline` for any other stream) hashes
    every byte and enforces the uncompressed size limit (UnsafeContent); the Meter keeps
    the last >= _RECENT consumed bytes for `check_trailer`.
    """

    def __init__(self, stream: BinaryIO | DecodedLayer, max_bytes: int) -> None:
        self._source: ChunkSource
        if isinstance(stream, DecodedLayer):
            stream.start(max_bytes)
            self._source = stream
        else:
            self._source = _Inline(stream, max_bytes)
        self.size = 0  # bytes handed out by read() (or skipped by drain())
        self._chunk = b""  # the current chunk; bytes before _pos are consumed
        self._pos = 0
        self._ended = False
        # Chunks up to the current one: the consumed ones before it add up to >= _RECENT.
        self._recent: deque[bytes] = deque()
        self._recent_len = 0

    def read(self, size: int = -1, /) -> bytes:
        """At most `size` bytes (the rest of the current chunk if negative); b"" at the end."""
        if self._pos == len(self._chunk) and not self._next():
            return b""
        pos = self._pos
        end = len(self._chunk) if size < 0 else min(pos + size, len(self._chunk))
        self._pos = end
        self.size += end - pos
        return self._chunk[pos:end]

    def _next(self) -> bool:
        """Make the next chunk current; False at the end of the stream."""
        if self._ended:
            return False
        chunk = self._source.next_chunk()
        if not chunk:
            self._ended = True
            return False
        # All chunks in the window are consumed now: keep only what check_trailer needs.
        while self._recent and self._recent_len - len(self._recent[0]) >= _RECENT:
            self._recent_len -= len(self._recent.popleft())
        self._recent.append(chunk)
        self._recent_len += len(chunk)
        self._chunk, self._pos = chunk, 0
        return True

    def write(self, b: bytes, /) -> int:
        raise io.UnsupportedOperation("layer streams are read-only")

    def tell(self) -> int:
        return self.size

    def seek(self, pos: int, /) -> int:
        raise io.UnsupportedOperation("layer streams cannot seek")

    def close(self) -> None:
        """The caller owns the underlying stream."""

    def check_trailer(self, end: int) -> None:
        """DataLoss unless the bytes after the last member (offset `end`) are zeros.

        tarfile silently stops at a corrupt or cut-off header; what follows the last
        member must be the end-of-archive zero block (or nothing, as Go's reader allows).
        Bytes tarfile read ahead past `end` are still in our recent-bytes window.
        """
        lag = self.size - end
        consumed = self._recent_len - (len(self._chunk) - self._pos)  # in the window
        if lag > consumed:
            raise Internal(f"tar read-ahead of {lag} bytes exceeds the {_RECENT}-byte window")
        tail = b"".join(self._recent)[consumed - lag : consumed] if lag else b""
        while len(tail) < _BLOCK and (more := self.read(_BLOCK - len(tail))):
            tail += more
        if tail[:_BLOCK].strip(b"\0"):
            raise DataLoss(f"layer tar has a corrupt or truncated header at offset {end}")

    def drain(self) -> None:
        """Consume the rest of the stream, so the result covers every byte."""
        while True:
            self.size += len(self._chunk) - self._pos
            self._pos = len(self._chunk)
            if not self._next():
                return

    def result(self) -> UnpackResult:
        if self._source.size != self.size:
            raise Internal(f"layer stream: read {self.size} bytes of {self._source.size}")
        return UnpackResult(diff_id=self._source.diff_id(), size=self.size)
