"""Layer blobs as verified tar streams: decompression, byte counting, header limits.

`open_layer` turns a gzip, zstd or plain layer blob into its uncompressed tar stream;
`Meter` wraps that stream for tarfile, hashing every byte (the diff id), enforcing the
uncompressed size limit and checking what follows the last member; `GuardedInfo` stops
tarfile from buffering oversized extended headers. Decoder failures raise DataLoss,
limit violations UnsafeContent.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import tarfile
import zlib
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO, Protocol, Self

import zstandard

from podling.errors import DataLoss, Internal, InvalidArgument, UnsafeContent
from podling.image.manifest import LAYER_GZIP, LAYER_PLAIN, LAYER_ZSTD

if TYPE_CHECKING:
    from _typeshed import WriteableBuffer

_GZIP_MAGIC = b"\x1f\x8b"
_ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
# Media types whose compression we decide by sniffing: generic ones, and plain tar (tools
# are known to label compressed layers as plain; a tar never starts with these magics).
_SNIFFED = ("", "application/octet-stream", *LAYER_PLAIN)
CHUNK = 1 << 20
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


class _Readable(Protocol):
    def read(self, size: int = ..., /) -> bytes: ...
    def close(self) -> None: ...


class _Decoded(io.RawIOBase):
    """Raw stream over a decompressor: decoder failures become DataLoss."""

    def __init__(self, inner: _Readable, what: str) -> None:
        super().__init__()
        self._inner = inner
        self._what = what

    def readable(self) -> bool:
        return True

    def readinto(self, buf: WriteableBuffer) -> int:
        view = memoryview(buf).cast("B")
        try:
            data = self._inner.read(len(view))
        except (OSError, EOFError, zlib.error, zstandard.ZstdError) as e:
            raise DataLoss(
                f"layer {self._what} is corrupt or truncated ({e}); delete the blob and pull again"
            ) from e
        view[: len(data)] = data
        return len(data)

    def close(self) -> None:
        if not self.closed:
            self._inner.close()
        super().close()


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
def open_layer(path: Path, media_type: str) -> Iterator[BinaryIO]:
    """Open a layer blob as its decompressed tar stream (gzip, zstd or plain).

    The codec follows the media type; for generic or plain-tar media types it is sniffed
    from the magic bytes. Unknown media types raise InvalidArgument; undecodable data
    raises DataLoss while reading.
    """
    with path.open("rb") as f:
        head = f.read(4)
        f.seek(0)
        codec = _codec(media_type, head)
        inner: _Readable
        if codec == "gzip":
            inner = gzip.GzipFile(fileobj=f, mode="rb")
        elif codec == "zstd":
            inner = zstandard.ZstdDecompressor().stream_reader(f, read_across_frames=True)
        else:
            inner = f
        with io.BufferedReader(_Decoded(inner, f"{path.name} ({codec})"), CHUNK) as stream:
            yield stream


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


class Meter:
    """Read-only tar source: hashes and counts every byte, enforces the size limit."""

    def __init__(self, stream: BinaryIO, max_bytes: int) -> None:
        self._stream = stream
        self._max = max_bytes
        self.hash = hashlib.sha256()
        self.size = 0
        self._recent: deque[bytes] = deque()  # the last >= _RECENT bytes read, as chunks
        self._recent_len = 0

    def read(self, size: int = -1, /) -> bytes:
        data = self._stream.read(size if size >= 0 else CHUNK)
        self.size += len(data)
        if self.size > self._max:
            raise UnsafeContent(
                f"layer expands to more than {self._max} bytes: refusing a possible "
                "decompression bomb (raise the unpack size limit if the image is genuine)"
            )
        self.hash.update(data)
        self._recent.append(data)
        self._recent_len += len(data)
        while self._recent_len - len(self._recent[0]) >= _RECENT:
            self._recent_len -= len(self._recent.popleft())
        return data

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
        if lag > self._recent_len:
            raise Internal(f"tar read-ahead of {lag} bytes exceeds the {_RECENT}-byte window")
        recent = b"".join(self._recent)
        tail = recent[len(recent) - lag :] if lag else b""
        while len(tail) < _BLOCK and (more := self.read(_BLOCK - len(tail))):
            tail += more
        if tail[:_BLOCK].strip(b"\0"):
            raise DataLoss(f"layer tar has a corrupt or truncated header at offset {end}")

    def drain(self) -> None:
        while self.read(CHUNK):
            pass

    def result(self) -> UnpackResult:
        return UnpackResult(diff_id="sha256:" + self.hash.hexdigest(), size=self.size)
