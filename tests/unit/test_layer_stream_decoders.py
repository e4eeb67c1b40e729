"""Layer decoders (podling.image.decoders): gzip and zstd streams in, exact bytes out.

Every decoder must yield exactly the uncompressed bytes in non-empty chunks of at most
CHUNK, whatever the chunk and read sizes, and raise one of CORRUPT for corrupt,
truncated or trailing-garbage input (the zstd library alone ends cut-off streams
silently, so every proper prefix of a frame is checked).
"""

from __future__ import annotations

import gzip
import io
import os
import zlib
from collections.abc import Callable, Iterator

import pytest
import zstandard

from podling.image import decoders
from podling.image.decoders import CORRUPT, Corrupt, gunzip, plain, unzstd


def _compressible(n: int) -> bytes:
    line = b"2024-01-01T00:00:00Z INFO request handled status=200 id="
    out = bytearray()
    while len(out) < n:
        out += line + os.urandom(8).hex().encode() + b"\n"
    return bytes(out[:n])


# Random (stored / raw blocks), text (ordinary compression) and zeros (long matches, a
# tiny input expanding far beyond one output chunk).
DATA = {
    "random": os.urandom(300_000),
    "text": _compressible(700_000),
    "zeros": bytes(3 << 20),
    "mixed": os.urandom(50_000) + bytes(400_000) + _compressible(200_000),
}

# (output chunk, compressed read size): tiny ones cross every boundary, then the defaults.
SIZES = [(7, 5), (1000, 64), (7, 1 << 18), (4096, 1 << 18), (decoders.CHUNK, 1 << 18)]


@pytest.fixture(params=SIZES, ids=[f"chunk{c}-in{i}" for c, i in SIZES])
def sizes(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> int:
    chunk, read = request.param
    monkeypatch.setattr(decoders, "CHUNK", chunk)
    monkeypatch.setattr(decoders, "_IN_CHUNK", read)
    return int(chunk)


def decode(fn: Callable[[io.BytesIO], Iterator[bytes]], blob: bytes, chunk: int) -> bytes:
    out = []
    for piece in fn(io.BytesIO(blob)):
        assert 0 < len(piece) <= chunk
        out.append(piece)
    return b"".join(out)


def zstd_stream(data: bytes, *, checksum: bool = True) -> bytes:
    """A frame without a content size (not single-segment), as streaming tools write."""
    buf = io.BytesIO()
    cctx = zstandard.ZstdCompressor(write_checksum=checksum)
    with cctx.stream_writer(buf, closefd=False) as w:
        w.write(data)
    return buf.getvalue()


@pytest.mark.parametrize("name", DATA)
def test_gzip_single_and_multi_member(name: str, sizes: int) -> None:
    data = DATA[name]
    assert decode(gunzip, gzip.compress(data), sizes) == data
    third = len(data) // 3
    multi = gzip.compress(data[:third]) + gzip.compress(data[third:], compresslevel=1)
    assert decode(gunzip, multi, sizes) == data


def test_gzip_zero_padding_between_and_after_members(sizes: int) -> None:
    a, b = os.urandom(5000), _compressible(9000)
    blob = gzip.compress(a) + bytes(700) + gzip.compress(b) + bytes(3)
    assert decode(gunzip, blob, sizes) == a + b


def test_gzip_empty_member_is_valid() -> None:
    assert decode(gunzip, gzip.compress(b""), decoders.CHUNK) == b""


@pytest.mark.parametrize("name", DATA)
def test_zstd_frames(name: str, sizes: int) -> None:
    data = DATA[name]
    assert decode(unzstd, zstandard.ZstdCompressor().compress(data), sizes) == data
    assert decode(unzstd, zstd_stream(data, checksum=False), sizes) == data


def test_zstd_multi_frame_and_skippable_frames(sizes: int) -> None:
    a, b = _compressible(200_000), os.urandom(1000)
    skippable = (0x184D2A53).to_bytes(4, "little") + (5).to_bytes(4, "little") + b"meta!"
    blob = skippable + zstd_stream(a) + skippable + zstandard.ZstdCompressor().compress(b)
    assert decode(unzstd, blob, sizes) == a + b


def test_plain_is_passed_through(sizes: int) -> None:
    data = DATA["mixed"]
    assert decode(plain, data, sizes) == data


def _cuts(n: int) -> list[int]:
    """Proper prefix lengths: every one near both ends, a spread in between."""
    return sorted({*range(min(n, 40)), *range(max(0, n - 40), n), *range(0, n, max(1, n // 50))})


@pytest.mark.parametrize("name", ["random", "text", "mixed"])
def test_truncated_gzip_is_corrupt(name: str) -> None:
    blob = gzip.compress(DATA[name])
    for cut in _cuts(len(blob)):
        with pytest.raises(CORRUPT):
            decode(gunzip, blob[:cut], decoders.CHUNK)


@pytest.mark.parametrize("name", ["random", "text", "mixed"])
def test_truncated_zstd_is_corrupt(name: str) -> None:
    data = DATA[name]
    for blob in (zstandard.ZstdCompressor().compress(data), zstd_stream(data)):
        for cut in _cuts(len(blob)):
            with pytest.raises(CORRUPT):
                decode(unzstd, blob[:cut], decoders.CHUNK)


def test_zstd_without_its_checksum_is_truncated() -> None:
    """The library returns all the data when only the checksum is cut off; we do not."""
    data = _compressible(50_000)
    blob = zstd_stream(data)
    reader = zstandard.ZstdDecompressor().stream_reader(io.BytesIO(blob[:-4]))
    assert reader.read() == data  # what the library alone would accept
    with pytest.raises(Corrupt, match="truncated"):
        decode(unzstd, blob[:-4], decoders.CHUNK)


@pytest.mark.parametrize(
    ("what", "mangle"),
    [
        ("crc", lambda b: b[:-8] + bytes([b[-8] ^ 1]) + b[-7:]),
        ("length", lambda b: b[:-4] + bytes([b[-4] ^ 1]) + b[-3:]),
        ("deflate data", lambda b: b[:200] + bytes([b[200] ^ 0xFF]) + b[201:]),
        ("header", lambda b: b"\x1f\x8c" + b[2:]),
        ("garbage after a member", lambda b: b + b"not gzip"),
        ("empty", lambda b: b""),
    ],
)
def test_corrupt_gzip(what: str, mangle: Callable[[bytes], bytes]) -> None:
    blob = mangle(gzip.compress(_compressible(20_000)))
    with pytest.raises(CORRUPT):
        decode(gunzip, blob, decoders.CHUNK)


@pytest.mark.parametrize(
    ("what", "mangle"),
    [
        ("checksum", lambda b: b[:-1] + bytes([b[-1] ^ 1])),
        ("block data", lambda b: b[:100] + bytes([b[100] ^ 0xFF]) + b[101:]),
        ("magic", lambda b: b"\x29" + b[1:]),
        ("garbage after a frame", lambda b: b + b"not zstd"),
        ("zero padding", lambda b: b + bytes(8)),
        ("empty", lambda b: b""),
        ("only a skippable frame", lambda b: (0x184D2A50).to_bytes(4, "little") + bytes(4)),
    ],
)
def test_corrupt_zstd(what: str, mangle: Callable[[bytes], bytes]) -> None:
    blob = mangle(zstd_stream(_compressible(20_000)))
    with pytest.raises(CORRUPT):
        decode(unzstd, blob, decoders.CHUNK)


def test_zstd_reserved_block_type_is_corrupt() -> None:
    frames = decoders.ZstdFrames()
    frames.feed((0xFD2FB528).to_bytes(4, "little") + b"\x00\x58")  # descriptor, window
    with pytest.raises(Corrupt, match="reserved"):
        frames.feed((0b110).to_bytes(3, "little"))  # block type 3


def test_gzip_corruption_is_a_zlib_error_not_silence() -> None:
    """A flipped CRC is only caught because zlib itself checks the gzip trailer."""
    blob = gzip.compress(b"hello world")
    bad = blob[:-8] + bytes([blob[-8] ^ 1]) + blob[-7:]
    with pytest.raises(zlib.error, match="incorrect data check"):
        decode(gunzip, bad, decoders.CHUNK)
