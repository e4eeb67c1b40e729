"""apply_layer resolves parent symlinks inside dest (chroot semantics), no root needed.

Native mode: dest is the full tree. Overlay mode with `lowers`: parents are looked up
through read-only lower dirs and copied up into dest (whiteouts and opaque dirs in lowers
need root to create; those cases are in tests/integration/test_snapshots.py).
"""

from __future__ import annotations

import io
import os
import stat
from pathlib import Path

import pytest

from podling.errors import InvalidArgument, UnsafeContent
from podling.image.rootpath import MAX_SYMLINKS
from podling.image.unpack import apply_layer
from tests.support.tars import MTIME, TarBuilder, tree_state

MAX = 1 << 30


def native(layer: TarBuilder, dest: Path) -> None:
    apply_layer(io.BytesIO(layer.bytes()), dest, whiteouts="native", max_bytes=MAX)


def overlay(layer: TarBuilder, dest: Path, lowers: list[Path]) -> None:
    apply_layer(io.BytesIO(layer.bytes()), dest, whiteouts="overlay", max_bytes=MAX, lowers=lowers)


@pytest.fixture
def dest(tmp_path: Path) -> Path:
    d = tmp_path / "rootfs"
    d.mkdir()
    return d


def usrmerge_base() -> TarBuilder:
    return (
        TarBuilder()
        .dir("usr", mode=0o750, mtime=MTIME + 50)
        .dir("usr/lib")
        .file("usr/lib/old", b"o")
        .symlink("lib", "usr/lib")
    )


def test_usrmerge_across_layers(dest: Path) -> None:
    native(usrmerge_base(), dest)
    native(TarBuilder().file("lib/x", b"new"), dest)
    assert os.readlink(dest / "lib") == "usr/lib"
    assert (dest / "usr/lib/x").read_bytes() == b"new"
    assert sorted(os.listdir(dest / "usr/lib")) == ["old", "x"]


def test_link_created_earlier_in_the_same_layer(dest: Path) -> None:
    native(TarBuilder().dir("run").dir("var").symlink("var/run", "/run").file("var/run/x"), dest)
    assert os.readlink(dest / "var/run") == "/run"
    assert (dest / "run/x").exists()


def test_absolute_in_tree_link_creates_missing_dirs(dest: Path) -> None:
    native(TarBuilder().dir("etc").symlink("etc/alt", "/usr/share/alt").file("etc/alt/c"), dest)
    assert (dest / "usr/share/alt/c").is_file()
    assert stat.S_IMODE(os.stat(dest / "usr/share").st_mode) == 0o755


def test_link_chain(dest: Path) -> None:
    layer = (
        TarBuilder()
        .dir("real/d")
        .symlink("c", "real")
        .symlink("b", "c/d/../d")
        .symlink("a", "/b")
        .file("a/x", b"chained")
    )
    native(layer, dest)
    assert (dest / "real/d/x").read_bytes() == b"chained"
    assert sorted(os.listdir(dest)) == ["a", "b", "c", "real"]


def test_link_chain_limit(dest: Path) -> None:
    def chain(count: int) -> TarBuilder:
        b = TarBuilder().dir("d")
        for i in range(count):
            b.symlink(f"l{i}", f"l{i + 1}" if i + 1 < count else "d")
        return b.file("l0/x")

    native(chain(MAX_SYMLINKS), dest)  # exactly at the limit
    assert (dest / "d/x").is_file()
    with pytest.raises(UnsafeContent, match="too many levels of symbolic links"):
        native(chain(MAX_SYMLINKS + 1), dest)


def test_link_loop(dest: Path) -> None:
    with pytest.raises(UnsafeContent, match="symlink loop"):
        native(TarBuilder().symlink("a", "b/c").symlink("b", "a/..").file("a/x"), dest)


def test_link_to_slash_stays_inside(dest: Path) -> None:
    native(TarBuilder().symlink("link", "/").file("link/etc/shadow", b"s"), dest)
    assert (dest / "etc/shadow").read_bytes() == b"s"


def test_dotdot_in_link_is_clamped_at_root(dest: Path) -> None:
    native(TarBuilder().dir("a").symlink("a/link", "../../..").file("a/link/x", b"x"), dest)
    assert (dest / "x").read_bytes() == b"x"


def test_last_component_is_never_followed(dest: Path) -> None:
    native(TarBuilder().dir("real").file("real/keep").symlink("d", "real").symlink("f", "t"), dest)
    native(TarBuilder().dir("d", mode=0o700).file("f", b"file"), dest)
    assert stat.S_ISDIR(os.lstat(dest / "d").st_mode)  # the link was replaced, not followed
    assert os.listdir(dest / "d") == [] and os.listdir(dest / "real") == ["keep"]
    assert stat.S_ISREG(os.lstat(dest / "f").st_mode) and not (dest / "t").exists()


def test_existing_dir_kept_by_dir_entry(dest: Path) -> None:
    native(TarBuilder().dir("d").file("d/keep"), dest)
    native(TarBuilder().dir("d", mode=0o711), dest)
    assert os.listdir(dest / "d") == ["keep"]
    assert stat.S_IMODE(os.stat(dest / "d").st_mode) == 0o711


def test_hardlink_target_through_link(dest: Path) -> None:
    native(usrmerge_base().hardlink("top", "lib/old").hardlink("lib/again", "/lib/old"), dest)
    ino = os.stat(dest / "usr/lib/old").st_ino
    assert os.stat(dest / "top").st_ino == ino
    assert os.stat(dest / "usr/lib/again").st_ino == ino


def test_whiteout_and_opaque_through_link(dest: Path) -> None:
    native(usrmerge_base().dir("usr/share").file("usr/share/s"), dest)
    native(TarBuilder().whiteout("lib/old").file("lib/new", b"n"), dest)
    assert sorted(os.listdir(dest / "usr/lib")) == ["new"]
    native(TarBuilder().symlink("share", "usr/share").file("share/t").opaque("share"), dest)
    assert os.listdir(dest / "usr/share") == ["t"]  # this layer's entry survives its marker


def test_opaque_dir_reached_through_link_keeps_this_layers_entries(dest: Path) -> None:
    native(usrmerge_base(), dest)
    native(TarBuilder().file("lib/new").opaque("usr/lib"), dest)  # written via the link
    assert os.listdir(dest / "usr/lib") == ["new"]


def test_non_directory_parent(dest: Path) -> None:
    native(TarBuilder().file("f"), dest)
    with pytest.raises(UnsafeContent, match="not a directory"):
        native(TarBuilder().symlink("l", "/f").file("l/x"), dest)


def test_lowers_need_overlay_mode(dest: Path, tmp_path: Path) -> None:
    with pytest.raises(InvalidArgument, match="overlay"):
        apply_layer(
            io.BytesIO(TarBuilder().bytes()),
            dest,
            whiteouts="native",
            max_bytes=MAX,
            lowers=[tmp_path],
        )


# --- overlay mode: resolution through lower dirs ---------------------------------------


def lower_dir(tmp_path: Path, name: str, layer: TarBuilder) -> Path:
    d = tmp_path / name
    d.mkdir()
    native(layer, d)
    return d


def test_overlay_usrmerge_copies_up_parents(dest: Path, tmp_path: Path) -> None:
    lower = lower_dir(tmp_path, "l1", usrmerge_base())
    before = tree_state(lower, skip=dest)
    overlay(TarBuilder().file("lib/x", b"new"), dest, [lower])
    assert tree_state(lower, skip=dest) == before, "a lower dir was written"
    assert (dest / "usr/lib/x").read_bytes() == b"new"
    assert sorted(os.listdir(dest)) == ["usr"]  # the link itself stays in the lower
    assert os.listdir(dest / "usr/lib") == ["x"]
    src, copy = os.stat(lower / "usr"), os.stat(dest / "usr")
    assert stat.S_IMODE(copy.st_mode) == 0o750 and copy.st_mtime == MTIME + 50
    assert (copy.st_uid, copy.st_gid) == (src.st_uid, src.st_gid)


def test_overlay_nearest_lower_wins(dest: Path, tmp_path: Path) -> None:
    far = lower_dir(tmp_path, "far", TarBuilder().dir("a").dir("b").symlink("l", "a"))
    near = lower_dir(tmp_path, "near", TarBuilder().dir("b").symlink("l", "b"))
    overlay(TarBuilder().file("l/x"), dest, [near, far])
    assert (dest / "b/x").is_file() and not (dest / "a").exists()


def test_overlay_dest_shadows_lowers(dest: Path, tmp_path: Path) -> None:
    lower = lower_dir(tmp_path, "l1", TarBuilder().dir("t").symlink("l", "t"))
    overlay(TarBuilder().dir("l").file("l/x"), dest, [lower])  # a real dir over the link
    assert (dest / "l/x").is_file() and not (dest / "t").exists()


def test_overlay_escaping_lower_link_stays_in_dest(dest: Path, tmp_path: Path) -> None:
    lower = lower_dir(tmp_path, "l1", TarBuilder().symlink("up", "../../..").symlink("e", "/etc"))
    outside = tree_state(tmp_path, skip=dest)
    overlay(TarBuilder().file("up/x", b"x").file("e/passwd", b"p"), dest, [lower])
    assert tree_state(tmp_path, skip=dest) == outside
    assert (dest / "x").read_bytes() == b"x" and (dest / "etc/passwd").read_bytes() == b"p"


def test_overlay_lower_file_is_not_a_directory(dest: Path, tmp_path: Path) -> None:
    lower = lower_dir(tmp_path, "l1", TarBuilder().file("f").symlink("l", "f"))
    with pytest.raises(UnsafeContent, match="not a directory"):
        overlay(TarBuilder().file("l/x"), dest, [lower])


def test_overlay_whiteout_under_missing_dir_is_a_no_op(dest: Path, tmp_path: Path) -> None:
    lower = lower_dir(tmp_path, "l1", TarBuilder().dir("d"))
    overlay(TarBuilder().whiteout("nowhere/x").whiteout("l/x"), dest, [lower])
    assert os.listdir(dest) == []
