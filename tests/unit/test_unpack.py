"""apply_layer / open_layer on well-formed layers (native whiteouts; no root needed)."""

from __future__ import annotations

import hashlib
import io
import os
import stat
from pathlib import Path

import pytest

from podling.errors import InvalidArgument
from podling.image.manifest import LAYER_GZIP, LAYER_PLAIN, LAYER_ZSTD
from podling.image.unpack import UnpackResult, apply_layer, open_layer
from tests.support.tars import MTIME, TarBuilder, gzipped, zstded

MAX = 1 << 30


def apply(data: bytes, dest: Path) -> UnpackResult:
    return apply_layer(io.BytesIO(data), dest, whiteouts="native", max_bytes=MAX)


@pytest.fixture
def dest(tmp_path: Path) -> Path:
    d = tmp_path / "rootfs"
    d.mkdir()
    return d


def test_basic_entries_and_metadata(dest: Path) -> None:
    layer = (
        TarBuilder()
        .dir("etc", mode=0o755, mtime=MTIME + 5)
        .file("etc/hosts", b"127.0.0.1 localhost\n", mode=0o640, mtime=MTIME + 7)
        .file("bin/tool", b"#!/bin/sh\n", mode=0o4755)
        .symlink("etc/localtime", "/usr/share/zoneinfo/UTC")
        .hardlink("bin/tool2", "bin/tool")
        .fifo("run/fifo")
        .bytes()
    )
    result = apply(layer, dest)

    assert result.diff_id == "sha256:" + hashlib.sha256(layer).hexdigest()
    assert result.size == len(layer)
    assert (dest / "etc/hosts").read_bytes() == b"127.0.0.1 localhost\n"
    assert stat.S_IMODE(os.stat(dest / "etc/hosts").st_mode) == 0o640
    assert os.stat(dest / "etc/hosts").st_mtime == MTIME + 7
    assert stat.S_IMODE(os.stat(dest / "bin/tool").st_mode) == 0o4755
    assert os.readlink(dest / "etc/localtime") == "/usr/share/zoneinfo/UTC"
    assert os.lstat(dest / "etc/localtime").st_mtime == MTIME
    assert os.stat(dest / "bin/tool2").st_ino == os.stat(dest / "bin/tool").st_ino
    assert stat.S_ISFIFO(os.lstat(dest / "run/fifo").st_mode)
    # implicit parent dirs get a fixed mode; the directory's own mtime survives its children
    assert stat.S_IMODE(os.stat(dest / "bin").st_mode) == 0o755
    assert os.stat(dest / "etc").st_mtime == MTIME + 5


def test_directory_modes_applied_after_children(dest: Path) -> None:
    layer = TarBuilder().dir("ro", mode=0o555).file("ro/inner", b"x").bytes()
    apply(layer, dest)
    assert (dest / "ro/inner").read_bytes() == b"x"
    assert stat.S_IMODE(os.stat(dest / "ro").st_mode) == 0o555
    os.chmod(dest / "ro", 0o755)  # let tmp_path cleanup work as non-root


def test_leading_slash_and_dot_are_relative_to_dest(dest: Path) -> None:
    apply(TarBuilder().dir("./").file("/abs/file", b"a").file("./rel/file", b"b").bytes(), dest)
    assert (dest / "abs/file").read_bytes() == b"a"
    assert (dest / "rel/file").read_bytes() == b"b"


def test_xattrs_from_pax_headers(dest: Path) -> None:
    b = TarBuilder()
    b.file(
        "x",
        b"data",
        pax_headers={
            "SCHILY.xattr.user.test": "value",
            "SCHILY.xattr.trusted.overlay.redirect": "/etc",
        },
    )
    apply(b.bytes(), dest)
    assert os.getxattr(dest / "x", "user.test") == b"value"
    assert "trusted.overlay.redirect" not in os.listxattr(dest / "x")


def test_duplicates_later_entry_wins(dest: Path) -> None:
    layer = (
        TarBuilder()
        .file("a", b"first")
        .file("a", b"second")
        .file("b", b"file")
        .dir("b")
        .file("b/child", b"c")
        .dir("c")
        .file("c/child", b"c")
        .file("c", b"now a file")
        .dir("d", mode=0o700)
        .file("d/keep", b"k")
        .dir("d", mode=0o750)
        .symlink("e", "a")
        .file("e", b"replaced the link")
        .bytes()
    )
    apply(layer, dest)
    assert (dest / "a").read_bytes() == b"second"
    assert (dest / "b/child").read_bytes() == b"c"
    assert (dest / "c").read_bytes() == b"now a file"
    assert (dest / "d/keep").read_bytes() == b"k"
    assert stat.S_IMODE(os.stat(dest / "d").st_mode) == 0o750
    assert not os.path.islink(dest / "e")
    assert (dest / "e").read_bytes() == b"replaced the link"
    assert (dest / "a").read_bytes() == b"second"


def base_layer() -> bytes:
    return (
        TarBuilder()
        .file("keep", b"k")
        .file("gone", b"g")
        .dir("gonedir")
        .file("gonedir/f", b"f")
        .dir("opq")
        .file("opq/lower", b"l")
        .dir("opq/sub")
        .file("opq/sub/lower", b"l")
        .dir("opq2")
        .file("opq2/lower", b"l")
        .bytes()
    )


def test_native_whiteouts_across_two_layers(dest: Path) -> None:
    apply(base_layer(), dest)
    top = (
        TarBuilder()
        .whiteout("gone")
        .whiteout("gonedir")
        .whiteout("never-existed/x")
        # marker first, then this layer's content
        .dir("opq")
        .opaque("opq")
        .file("opq/new", b"n")
        # this layer's content first, then the marker (order must not matter)
        .dir("opq2")
        .dir("opq2/sub")
        .file("opq2/sub/new", b"n")
        .file("opq2/new", b"n")
        .opaque("opq2")
        .bytes()
    )
    apply(top, dest)
    assert sorted(os.listdir(dest)) == ["keep", "opq", "opq2"]
    assert sorted(os.listdir(dest / "opq")) == ["new"]
    assert sorted(os.listdir(dest / "opq2")) == ["new", "sub"]
    assert os.listdir(dest / "opq2/sub") == ["new"]
    assert not (dest / "never-existed").exists()


def test_opaque_removes_lower_content_of_merged_subdirs(dest: Path) -> None:
    apply(base_layer(), dest)
    top = TarBuilder().dir("opq").dir("opq/sub").file("opq/sub/new").opaque("opq").bytes()
    apply(top, dest)
    assert sorted(os.listdir(dest / "opq")) == ["sub"]
    assert os.listdir(dest / "opq/sub") == ["new"]


def test_whiteout_files_never_appear(dest: Path) -> None:
    apply(TarBuilder().whiteout("x").opaque("d").file(".wh..wh.plnk/1", b"").bytes(), dest)
    assert not any(n.startswith(".wh.") for _, dirs, files in os.walk(dest) for n in dirs + files)


def test_drains_trailing_padding(dest: Path) -> None:
    layer = TarBuilder().file("a", b"x").bytes() + b"\0" * 4096
    result = apply(layer, dest)
    assert result.size == len(layer)
    assert result.diff_id == "sha256:" + hashlib.sha256(layer).hexdigest()


def test_empty_tar_is_valid(dest: Path) -> None:
    layer = TarBuilder().bytes()
    assert apply(layer, dest).size == len(layer)
    assert os.listdir(dest) == []


@pytest.mark.parametrize(
    ("media_type", "encode"),
    [
        (LAYER_GZIP[0], gzipped),
        (LAYER_GZIP[1], gzipped),
        (LAYER_ZSTD[0], zstded),
        (LAYER_PLAIN[0], lambda d: d),
        # generic or plain labels: the codec is sniffed from the magic bytes
        ("application/octet-stream", gzipped),
        ("application/octet-stream", zstded),
        ("", lambda d: d),
        (LAYER_PLAIN[1], gzipped),
    ],
)
def test_open_layer_codecs(tmp_path: Path, dest: Path, media_type: str, encode: object) -> None:
    assert callable(encode)
    tar = TarBuilder().file("hello", b"world").bytes()
    blob = tmp_path / "blob"
    blob.write_bytes(encode(tar))
    with open_layer(blob, media_type) as stream:
        result = apply_layer(stream, dest, whiteouts="native", max_bytes=MAX)
    assert result.diff_id == "sha256:" + hashlib.sha256(tar).hexdigest()
    assert (dest / "hello").read_bytes() == b"world"


def test_open_layer_multi_frame_zstd(tmp_path: Path) -> None:
    tar = TarBuilder().file("big", os.urandom(3000)).bytes()
    blob = tmp_path / "blob"
    blob.write_bytes(zstded(tar[:1000]) + zstded(tar[1000:]))
    with open_layer(blob, LAYER_ZSTD[0]) as stream:
        assert stream.read() == tar


def test_open_layer_unknown_media_type(tmp_path: Path) -> None:
    blob = tmp_path / "blob"
    blob.write_bytes(b"")
    with (
        pytest.raises(InvalidArgument, match="unsupported layer media type"),
        open_layer(blob, "application/vnd.oci.image.layer.v1.tar+bzip2"),
    ):
        pass


def test_dest_must_be_a_directory(tmp_path: Path) -> None:
    with pytest.raises(InvalidArgument):
        apply(TarBuilder().bytes(), tmp_path / "missing")


class _Dribble(io.RawIOBase):
    """Returns at most 1..700 bytes per read, to exercise read-ahead bookkeeping."""

    def __init__(self, data: bytes) -> None:
        self._data = memoryview(data)
        self._pos = 0
        self._n = 0

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        self._n += 1
        step = min(size if size >= 0 else len(self._data), 1 + (self._n * 7919) % 700)
        chunk = bytes(self._data[self._pos : self._pos + step])
        self._pos += len(chunk)
        return chunk


def test_short_reads_from_stream(dest: Path) -> None:
    b = TarBuilder()
    for i in range(30):
        b.file(f"d/f{i}", os.urandom(i * 997))
    layer = b.bytes() + b"\0" * 20000
    result = apply_layer(_Dribble(layer), dest, whiteouts="native", max_bytes=MAX)  # type: ignore[arg-type]
    assert result.size == len(layer)
    assert result.diff_id == "sha256:" + hashlib.sha256(layer).hexdigest()
    assert len(os.listdir(dest / "d")) == 30
