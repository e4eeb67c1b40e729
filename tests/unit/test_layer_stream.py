"""open_layer's background decoding thread, Meter and apply_layer's result over it.

The diff id and size must equal a plain sha256 over the uncompressed tar whatever the
codec, chunking and read pattern; decoder errors and the size limit must surface in the
reading thread as DataLoss / UnsafeContent; and however the reader stops, leaving
open_layer must have joined the thread and closed the blob.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import zstandard

from podling.errors import DataLoss, Internal, UnsafeContent
from podling.image import decoders
from podling.image.decode_thread import QUEUE_DEPTH
from podling.image.layer_stream import Meter, open_layer
from podling.image.manifest import LAYER_GZIP, LAYER_PLAIN, LAYER_ZSTD
from podling.image.unpack import apply_layer
from tests.support.tars import TarBuilder

MAX = 1 << 30
GZ, ZST, TAR = LAYER_GZIP[0], LAYER_ZSTD[0], LAYER_PLAIN[0]


def _zstd_multi(data: bytes) -> bytes:
    cctx = zstandard.ZstdCompressor(write_checksum=True)
    cut = len(data) // 3
    return cctx.compress(data[:cut]) + cctx.compress(data[cut:])


ENCODINGS: dict[str, tuple[str, Callable[[bytes], bytes]]] = {
    "gzip": (GZ, gzip.compress),
    "gzip-multi": (GZ, lambda d: gzip.compress(d[:5000]) + gzip.compress(d[5000:])),
    "zstd": (ZST, zstandard.ZstdCompressor().compress),
    "zstd-multi": (ZST, _zstd_multi),
    "plain": (TAR, lambda d: d),
}


def decoder_threads() -> set[threading.Thread]:
    return {t for t in threading.enumerate() if t.name.startswith("podling-decode-")}


def fds_to(path: Path) -> list[str]:
    out = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            if os.readlink(f"/proc/self/fd/{fd}") == str(path):
                out.append(fd)
        except FileNotFoundError:
            pass  # the listing's own fd
    return out


@pytest.fixture(autouse=True)
def no_thread_or_fd_left(tmp_path: Path) -> Iterator[None]:
    before = set(threading.enumerate())
    yield
    assert decoder_threads() == set(), "a decoding thread outlived open_layer"
    assert set(threading.enumerate()) <= before
    assert not [p for p in tmp_path.iterdir() if fds_to(p)], "a blob was left open"


def sample_tar() -> bytes:
    """Entries of many sizes (one spanning several 1 MiB chunks) and extra end padding."""
    b = TarBuilder().dir("d")
    for i, n in enumerate((0, 1, 511, 512, 513, 10240, 70_000)):
        b.file(f"d/f{i}", os.urandom(n))
    b.file("big", os.urandom(3 << 20) + bytes(1 << 20))
    return b.bytes() + bytes(20 * 512)


def blob_of(tmp_path: Path, data: bytes) -> Path:
    path = tmp_path / "blob"
    path.write_bytes(data)
    return path


@pytest.mark.parametrize("chunk", [decoders.CHUNK, 777], ids=["chunk1MiB", "chunk777"])
@pytest.mark.parametrize("enc", ENCODINGS)
def test_diff_id_and_size_equal_sha256_of_the_tar(
    tmp_path: Path, enc: str, chunk: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(decoders, "CHUNK", chunk)
    tar = sample_tar()
    media_type, encode = ENCODINGS[enc]
    blob = blob_of(tmp_path, encode(tar))
    dest = tmp_path / "dest"
    dest.mkdir()
    with open_layer(blob, media_type) as stream:
        result = apply_layer(stream, dest, whiteouts="native", max_bytes=MAX)
    assert result.diff_id == "sha256:" + hashlib.sha256(tar).hexdigest()
    assert result.size == len(tar)
    assert (dest / "d/f6").stat().st_size == 70_000
    assert (dest / "big").stat().st_size == 4 << 20


@pytest.mark.parametrize("enc", ["gzip", "zstd", "plain"])
def test_many_small_and_huge_reads(tmp_path: Path, enc: str) -> None:
    data = os.urandom(2 << 20) + bytes(3 << 20)
    media_type, encode = ENCODINGS[enc]
    blob = blob_of(tmp_path, encode(data))
    with open_layer(blob, media_type) as stream:
        pieces, i = [], 0
        while piece := stream.read(1 + i % 700):
            pieces.append(piece)
            i += 1
            if i == 3000:
                pieces.append(stream.read(50 << 20))  # the rest, in one huge read
        assert b"".join(pieces) == data
        assert stream.read(10) == b""
        assert stream.diff_id() == "sha256:" + hashlib.sha256(data).hexdigest()
        assert stream.size == len(data)
    with open_layer(blob, media_type) as stream:
        assert stream.read() == data


def test_meter_small_reads_then_drain(tmp_path: Path) -> None:
    data = os.urandom(3 << 20)
    with open_layer(blob_of(tmp_path, gzip.compress(data)), GZ) as stream:
        meter = Meter(stream, MAX)
        got = b"".join(meter.read(n) for n in (1, 10, 512, 10240, 1 << 20, 3, 70_000))
        assert got == data[: len(got)]
        assert meter.tell() == len(got)
        meter.drain()
        result = meter.result()
    assert result.diff_id == "sha256:" + hashlib.sha256(data).hexdigest()
    assert result.size == len(data)


@pytest.mark.parametrize("chunk", [decoders.CHUNK, 100], ids=["chunk1MiB", "chunk100"])
def test_garbage_after_the_last_member_is_data_loss(
    tmp_path: Path, chunk: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """check_trailer looks back through tarfile's read-ahead across chunk boundaries."""
    monkeypatch.setattr(decoders, "CHUNK", chunk)
    member = TarBuilder().file("a", os.urandom(3000)).bytes()[: 512 + 3072]
    tar = member + b"\x01" + bytes(1023)
    dest = tmp_path / "dest"
    dest.mkdir()
    with (
        open_layer(blob_of(tmp_path, gzip.compress(tar)), GZ) as stream,
        pytest.raises(DataLoss, match="corrupt or truncated header"),
    ):
        apply_layer(stream, dest, whiteouts="native", max_bytes=MAX)


def _flip(b: bytes, at: int) -> bytes:
    return b[:at] + bytes([b[at] ^ 0xFF]) + b[at + 1 :]


@pytest.mark.parametrize(
    ("media_type", "blob"),
    [
        (GZ, lambda tar: gzip.compress(tar)[:-100]),
        (GZ, lambda tar: _flip(gzip.compress(tar), -6)),  # the length in the trailer
        (GZ, lambda tar: gzip.compress(tar) + b"trailing junk"),
        (ZST, lambda tar: _zstd_multi(tar)[:-4]),  # cut off the checksum only
        (ZST, lambda tar: _flip(_zstd_multi(tar), -1)),
        (ZST, lambda tar: _zstd_multi(tar)[:-2000]),
    ],
    ids=["gzip-cut", "gzip-length", "gzip-junk", "zstd-checksum-cut", "zstd-bad-sum", "zstd-cut"],
)
def test_corrupt_blobs_are_data_loss_in_the_reader(
    tmp_path: Path, media_type: str, blob: Callable[[bytes], bytes]
) -> None:
    tar = sample_tar()
    path = blob_of(tmp_path, blob(tar))
    dest = tmp_path / "dest"
    dest.mkdir()
    with open_layer(path, media_type) as stream:
        with pytest.raises(DataLoss, match=r"layer blob \((gzip|zstd)\) is corrupt or truncated"):
            apply_layer(stream, dest, whiteouts="native", max_bytes=MAX)
        with pytest.raises(DataLoss):  # and again on every later read
            stream.next_chunk()


def test_size_limit_is_unsafe_content(tmp_path: Path) -> None:
    """Zero padding after the tar: only the stream limit can catch it, in the thread."""
    tar = TarBuilder().file("a", b"x").bytes() + bytes(64 << 20)
    dest = tmp_path / "dest"
    dest.mkdir()
    with (
        open_layer(blob_of(tmp_path, gzip.compress(tar)), GZ) as stream,
        pytest.raises(UnsafeContent, match="decompression bomb"),
    ):
        apply_layer(stream, dest, whiteouts="native", max_bytes=8 << 20)


def test_size_limit_stops_before_handing_over_more(tmp_path: Path) -> None:
    data = bytes(40 << 20)
    with open_layer(blob_of(tmp_path, gzip.compress(data)), GZ) as stream:
        stream.start(5 << 20)
        seen = 0
        with pytest.raises(UnsafeContent):
            while chunk := stream.next_chunk():
                seen += len(chunk)
        assert seen <= 5 << 20
        with pytest.raises(Internal):
            stream.start(1)


def _hostile_first(big: int) -> bytes:
    """A refused entry first, then far more data than the queue holds."""
    b = TarBuilder().file("ok", b"1").file("../escape", b"x").file("big", os.urandom(big))
    return b.bytes()


@pytest.mark.parametrize("enc", ["gzip", "zstd", "plain"])
def test_early_stop_joins_the_thread_and_closes_the_blob(tmp_path: Path, enc: str) -> None:
    media_type, encode = ENCODINGS[enc]
    path = blob_of(tmp_path, encode(_hostile_first((QUEUE_DEPTH + 8) * decoders.CHUNK)))
    dest = tmp_path / "dest"
    dest.mkdir()
    with open_layer(path, media_type) as stream:
        with pytest.raises(UnsafeContent, match="escapes"):
            apply_layer(stream, dest, whiteouts="native", max_bytes=MAX)
        # The thread cannot have finished: nobody takes the chunks it still has to hand over.
        assert len(decoder_threads()) == 1
        assert fds_to(path)
        started = time.monotonic()
    assert time.monotonic() - started < 2, "stopping the thread took too long"
    assert decoder_threads() == set()
    assert fds_to(path) == []


def test_exception_in_the_with_block_stops_the_thread(tmp_path: Path) -> None:
    path = blob_of(tmp_path, gzip.compress(os.urandom(20 << 20)))
    with pytest.raises(RuntimeError), open_layer(path, GZ) as stream:
        assert len(stream.read(100)) == 100
        raise RuntimeError("the applier gave up")
    assert decoder_threads() == set()
    assert fds_to(path) == []


def test_unread_layer_starts_no_thread(tmp_path: Path) -> None:
    path = blob_of(tmp_path, gzip.compress(b"abc"))
    with open_layer(path, GZ):
        assert decoder_threads() == set()
    assert fds_to(path) == []
