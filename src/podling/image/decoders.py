"""Layer blob decoders: a compressed blob file in, its uncompressed bytes out, in chunks.

Each decoder is a generator over an open blob file yielding non-empty chunks of at most
CHUNK bytes (so a decompression bomb never needs more memory than one chunk), and raises
`CORRUPT` errors for undecodable, truncated or trailing-garbage input. Generators hold no
resources of their own: the caller owns the file.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable, Generator
from typing import IO, BinaryIO, cast

import zstandard

CHUNK = 1 << 20  # the largest decoded chunk
_IN_CHUNK = 1 << 18  # compressed bytes read at a time

_ZSTD_FRAME = 0xFD2FB528
_ZSTD_SKIPPABLE = range(0x184D2A50, 0x184D2A60)
_ZSTD_DICT_ID_BYTES = (0, 1, 2, 4)
_ZSTD_CONTENT_SIZE_BYTES = (0, 2, 4, 8)  # flag 0 means 1 byte in single-segment frames


class Corrupt(Exception):
    """The compressed stream breaks its format (our own structural checks)."""


# Everything a decoder raises for bad input (OSError: the blob file cannot be read).
CORRUPT = (Corrupt, OSError, EOFError, zlib.error, zstandard.ZstdError)

Decoder = Callable[[BinaryIO], Generator[bytes, None, None]]


def plain(f: BinaryIO) -> Generator[bytes, None, None]:
    """An uncompressed blob, as it is."""
    while data := f.read(CHUNK):
        yield data


def gunzip(f: BinaryIO) -> Generator[bytes, None, None]:
    """A gzip stream of one or more members (RFC 1952); zlib checks each CRC and length.

    Zero bytes between and after members are skipped, as gzip(1) does; anything else
    after a member must be another member. A stream that ends inside a member, or holds
    no member at all, is Corrupt.
    """
    member: zlib._Decompress | None = None
    started = False
    while data := f.read(_IN_CHUNK):
        while True:
            if member is None:
                data = data.lstrip(b"\0") if started else data
                if not data:
                    break
                member, started = zlib.decompressobj(wbits=31), True
            out = member.decompress(data, CHUNK)
            if out:
                yield out
            if member.eof:
                data, member = member.unused_data, None
            # Output still pending inside zlib comes out with the next input (the trailer
            # is always read last, so a stream that ends here is truncated).
            elif not (data := member.unconsumed_tail):
                break
    if member is not None:
        raise Corrupt("the gzip stream ends inside a member (truncated)")
    if not started:
        raise Corrupt("the gzip stream is empty")


def unzstd(f: BinaryIO) -> Generator[bytes, None, None]:
    """A zstd stream of one or more frames (RFC 8878), skippable frames allowed.

    The zstd library ends a cut-off stream silently, so the frame structure is followed
    alongside (ZstdFrames) to tell a truncated stream from a complete one.
    """
    frames = ZstdFrames()
    source = cast(IO[bytes], _Tap(f, frames.feed))  # the reader only calls read()
    reader = zstandard.ZstdDecompressor().stream_reader(
        source, read_size=_IN_CHUNK, read_across_frames=True
    )
    with reader:
        while data := reader.read(CHUNK):
            yield data
    frames.check_complete()


class _Tap:
    """A readable file that shows every byte read to `see` first."""

    def __init__(self, f: BinaryIO, see: Callable[[bytes], None]) -> None:
        self._f = f
        self._see = see

    def read(self, size: int = -1, /) -> bytes:
        data = self._f.read(size)
        self._see(data)
        return data


class ZstdFrames:
    """Walks zstd frame and block headers through the compressed bytes without decoding.

    Only sizes are followed: block contents are skipped, so this costs a few steps per
    128 KiB block. Unknown magics and reserved block types are Corrupt (the decoder
    would refuse them too).
    """

    def __init__(self) -> None:
        self._want = 4  # header bytes the next step needs
        self._step: Callable[[bytes], None] = self._magic
        self._buf = b""
        self._skip = 0  # content bytes to pass over before the next header
        self._checksum = False
        self.frames = 0

    def feed(self, data: bytes) -> None:
        view = memoryview(data)
        i = 0
        while i < len(view):
            if self._skip:
                n = min(self._skip, len(view) - i)
                self._skip -= n
                i += n
                continue
            need = self._want - len(self._buf)
            self._buf += view[i : i + need]
            i += need
            if len(self._buf) == self._want:
                header, self._buf = self._buf, b""
                self._step(header)

    def check_complete(self) -> None:
        """Corrupt unless the bytes seen end right after a whole frame."""
        if self._step != self._magic or self._buf or self._skip:
            raise Corrupt("the zstd stream ends inside a frame (truncated)")
        if not self.frames:
            raise Corrupt("the zstd stream holds no frame")

    def _expect(self, want: int, step: Callable[[bytes], None]) -> None:
        self._want, self._step = want, step

    def _magic(self, b: bytes) -> None:
        magic = int.from_bytes(b, "little")
        if magic == _ZSTD_FRAME:
            self.frames += 1
            self._expect(1, self._descriptor)
        elif magic in _ZSTD_SKIPPABLE:
            self._expect(4, self._skippable)
        else:
            raise Corrupt(f"unknown zstd frame magic {magic:#010x}")

    def _descriptor(self, b: bytes) -> None:
        fhd = b[0]
        single_segment = bool(fhd & 0x20)
        self._checksum = bool(fhd & 0x04)
        size_flag = fhd >> 6
        rest = (
            (0 if single_segment else 1)  # the window descriptor
            + _ZSTD_DICT_ID_BYTES[fhd & 0x03]
            + (_ZSTD_CONTENT_SIZE_BYTES[size_flag] or int(single_segment))
        )
        if rest:
            self._expect(rest, self._header_rest)
        else:
            self._expect(3, self._block)

    def _header_rest(self, b: bytes) -> None:
        self._expect(3, self._block)

    def _block(self, b: bytes) -> None:
        header = int.from_bytes(b, "little")
        kind, size = (header >> 1) & 0x03, header >> 3
        if kind == 3:
            raise Corrupt("reserved zstd block type")
        self._skip = 1 if kind == 1 else size  # an RLE block stores its byte once
        if not header & 0x01:
            self._expect(3, self._block)
        elif self._checksum:
            self._expect(4, self._frame_end)
        else:
            self._expect(4, self._magic)

    def _frame_end(self, b: bytes) -> None:
        self._expect(4, self._magic)

    def _skippable(self, b: bytes) -> None:
        self._skip = int.from_bytes(b, "little")
        self._expect(4, self._magic)


DECODERS: dict[str, Decoder] = {"gzip": gunzip, "zstd": unzstd, "plain": plain}
