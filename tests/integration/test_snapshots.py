"""Snapshotters with real mounts (root): overlayfs and native, same contract.

Also runs the hostile layer corpus with overlay whiteouts, which needs root (mknod).
"""

from __future__ import annotations

import errno
import io
import logging
import os
import stat
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from podling.errors import AlreadyExists, FailedPrecondition, InvalidArgument, NotFound
from podling.image.unpack import apply_layer
from podling.oslib.mount import mount, unmount
from podling.snapshots import (
    Mount,
    NativeSnapshotter,
    OverlaySnapshotter,
    Snapshotter,
    create_snapshotter,
)
from podling.snapshots.metadata import MetaStore
from podling.snapshots.overlay import probe_overlay
from tests.support.tars import HOSTILE, Hostile, TarBuilder
from tests.unit.test_unpack_hostile import run_case

pytestmark = pytest.mark.root

if os.geteuid() != 0:
    pytest.skip("snapshot integration tests need root", allow_module_level=True)


def _mounts() -> list[str]:
    with open("/proc/self/mounts") as f:
        return f.read().splitlines()


@pytest.fixture(autouse=True)
def no_mounts_left(tmp_path: Path) -> Iterator[None]:
    before = _mounts()
    yield
    leaked = [m for m in _mounts() if m not in before]
    for line in leaked:  # clean up so one failure does not cascade, then fail
        unmount(Path(line.split()[1]), detach=True)
    assert leaked == [], "mounts left behind"


@contextmanager
def mounted(mounts: list[Mount], target: Path) -> Iterator[Path]:
    assert len(mounts) == 1
    target.mkdir(exist_ok=True)
    mount(mounts[0], target)
    try:
        yield target
    finally:
        unmount(target)


@pytest.fixture(params=["overlayfs", "native"])
def snap(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Snapshotter]:
    s = create_snapshotter(tmp_path / "snaps", request.param)
    assert s.name == request.param
    yield s
    s.close()


def add_layer(s: Snapshotter, parent: str | None, name: str, layer: bytes) -> str:
    key = f"extract-{name}"
    dest = s.prepare(key, parent)
    lowers = s.lower_dirs(key)
    apply_layer(io.BytesIO(layer), dest, whiteouts=s.whiteouts, max_bytes=1 << 30, lowers=lowers)
    s.commit(name, key)
    return name


L1 = (
    TarBuilder()
    .dir("etc")
    .file("etc/hostname", b"one\n")
    .file("etc/passwd", b"root:x:0:0::/root:/bin/sh\n")
    .file("bin/tool", b"#!/bin/sh\n", mode=0o4755, uid=1000, gid=1000)
    .file("rm_me", b"x")
    .dir("gone")
    .file("gone/x", b"x")
    .dir("opq")
    .file("opq/lower", b"l")
    .bytes()
)
L2 = (
    TarBuilder()
    .whiteout("rm_me")
    .whiteout("gone")
    .dir("opq")
    .opaque("opq")
    .file("opq/new", b"n")
    .file("l2", b"2")
    .bytes()
)
L3 = TarBuilder().dir("etc").file("etc/hostname", b"three\n").symlink("sh", "bin/tool").bytes()


def build_image(s: Snapshotter) -> str:
    c1 = add_layer(s, None, "sha256:c1", L1)
    c2 = add_layer(s, c1, "sha256:c2", L2)
    return add_layer(s, c2, "sha256:c3", L3)


def check_merged(root: Path) -> None:
    assert sorted(os.listdir(root)) == ["bin", "etc", "l2", "opq", "sh"]
    assert (root / "etc/hostname").read_bytes() == b"three\n"
    assert (root / "etc/passwd").read_bytes().startswith(b"root:")
    assert os.listdir(root / "opq") == ["new"]
    st = os.stat(root / "bin/tool")
    assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (1000, 1000, 0o4755)
    assert os.readlink(root / "sh") == "bin/tool"


def test_layers_active_snapshot_and_view(snap: Snapshotter, tmp_path: Path) -> None:
    top = build_image(snap)
    assert snap.parent(top) == "sha256:c2" and snap.parent("sha256:c1") is None
    rootfs = snap.prepare("ctr", top)
    with mounted(snap.mounts("ctr"), tmp_path / "merged") as merged:
        check_merged(merged)
        (merged / "written").write_bytes(b"w")
        (merged / "etc/hostname").write_bytes(b"changed\n")
    # writes land in the active snapshot only
    assert (rootfs / "written").read_bytes() == b"w"
    with mounted(snap.view("view", top), tmp_path / "view") as view:
        check_merged(view)
        with pytest.raises(OSError) as e:
            (view / "nope").write_bytes(b"")
        assert e.value.errno == errno.EROFS
    assert snap.usage("ctr")[1] >= 2
    assert sorted(snap.keys()) == ["ctr", "sha256:c1", "sha256:c2", "sha256:c3", "view"]


def test_view_of_base_layer_is_read_only(snap: Snapshotter, tmp_path: Path) -> None:
    c1 = add_layer(snap, None, "c1", L1)
    (m,) = snap.view("v", c1)
    assert m.type == "bind" and "ro" in m.options
    with mounted([m], tmp_path / "v") as view:
        assert (view / "etc/hostname").read_bytes() == b"one\n"
        with pytest.raises(OSError) as e:
            (view / "etc/hostname").write_bytes(b"x")
        assert e.value.errno == errno.EROFS
    with pytest.raises(FailedPrecondition, match="child"):
        snap.remove(c1)  # the view keeps its parent alive
    snap.remove("v")
    snap.remove(c1)


def test_overlay_upper_dirs_hold_overlay_whiteouts(tmp_path: Path) -> None:
    s = OverlaySnapshotter(tmp_path / "snaps")
    c1 = add_layer(s, None, "c1", L1)
    add_layer(s, c1, "c2", L2)
    upper = tmp_path / "snaps" / "2" / "fs"  # c2 is the second snapshot made
    for name in ("rm_me", "gone"):
        st = os.lstat(upper / name)
        assert stat.S_ISCHR(st.st_mode) and st.st_rdev == os.makedev(0, 0)
    assert os.getxattr(upper / "opq", "trusted.overlay.opaque") == b"y"
    assert sorted(os.listdir(upper / "opq")) == ["new"]
    s.close()


def test_remove_rules_and_cleanup(snap: Snapshotter, tmp_path: Path) -> None:
    top = build_image(snap)
    snap.prepare("ctr", top)
    with pytest.raises(FailedPrecondition, match="child"):
        snap.remove(top)
    with pytest.raises(NotFound):
        snap.remove("nope")
    for key in ("ctr", top, "sha256:c2", "sha256:c1"):
        snap.remove(key)
        assert not snap.exists(key)
    assert snap.keys() == []
    assert [p.name for p in (tmp_path / "snaps").iterdir() if p.name.isdigit()] == []
    assert snap.total_usage() == (0, 0)


def test_errors(snap: Snapshotter) -> None:
    snap.prepare("a", None)
    with pytest.raises(AlreadyExists):
        snap.prepare("a", None)
    with pytest.raises(NotFound):
        snap.prepare("b", "missing")
    with pytest.raises(FailedPrecondition, match="only committed"):
        snap.prepare("b", "a")
    snap.commit("A", "a")
    snap.prepare("c", "A")
    with pytest.raises(AlreadyExists):
        snap.commit("A", "c")
    with pytest.raises(FailedPrecondition):
        snap.commit("X", "A")
    with pytest.raises(FailedPrecondition, match="committed"):
        snap.mounts("A")
    with pytest.raises(NotFound):
        snap.parent("zzz")
    assert not snap.exists("b") and snap.exists("c")


@pytest.mark.parametrize("count", [60, 150])
def test_many_layers_mount(snap: Snapshotter, tmp_path: Path, count: int) -> None:
    if snap.name == "native" and count > 60:
        pytest.skip("long chains only matter for overlay lowerdir lists")
    parent = None
    for i in range(count):
        layer = TarBuilder().file(f"f{i}", b"x").file("top", str(i).encode()).bytes()
        parent = add_layer(snap, parent, f"sha256:{i:064x}", layer)
    snap.prepare("ctr", parent)
    (m,) = snap.mounts("ctr")
    if snap.name == "overlayfs":
        assert m.type == "overlay"
        assert sum(len(o) for o in m.options) > (4096 if count > 100 else 0)
    with mounted([m], tmp_path / "merged") as merged:
        assert len(os.listdir(merged)) == count + 1
        assert (merged / "top").read_bytes() == str(count - 1).encode()


def test_usage_counts_own_dir(snap: Snapshotter) -> None:
    c1 = add_layer(snap, None, "c1", TarBuilder().file("big", os.urandom(1 << 20)).bytes())
    c2 = add_layer(snap, c1, "c2", TarBuilder().file("small", b"s").bytes())
    size1, inodes1 = snap.usage(c1)
    assert size1 >= 1 << 20 and inodes1 == 2
    size2, inodes2 = snap.usage(c2)
    if snap.name == "overlayfs":
        assert size2 < 1 << 20 and inodes2 == 2
    else:
        assert size2 >= 1 << 20 and inodes2 == 3  # a full copy
    total = snap.total_usage()
    assert total[0] >= size1 + size2 - (1 << 20) and total[1] >= inodes1 + inodes2


def test_recovery_removes_incomplete_and_orphaned(tmp_path: Path) -> None:
    root = tmp_path / "snaps"
    s = NativeSnapshotter(root)
    s.prepare("kept", None)
    s.close()
    meta = MetaStore(root / "metadata.db")
    pending = meta.add_pending("half-made", None)
    meta.close()
    (root / str(pending.id)).mkdir()
    (root / "9999" / "fs").mkdir(parents=True)
    s = NativeSnapshotter(root)
    assert s.keys() == ["kept"]
    assert not (root / str(pending.id)).exists() and not (root / "9999").exists()
    s.prepare("half-made", None)  # the key is free again
    s.close()


def test_root_belongs_to_one_kind(tmp_path: Path) -> None:
    NativeSnapshotter(tmp_path / "snaps").close()
    with pytest.raises(FailedPrecondition, match="native"):
        OverlaySnapshotter(tmp_path / "snaps")


def test_factory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    with pytest.raises(InvalidArgument, match="unknown snapshotter"):
        create_snapshotter(tmp_path / "x", "zfs")
    assert probe_overlay(tmp_path / "probe") is None
    assert os.listdir(tmp_path / "probe") == []  # the probe cleaned up after itself
    monkeypatch.setattr("podling.snapshots.probe_overlay", lambda root: "no overlay here")
    with caplog.at_level(logging.WARNING):
        s = create_snapshotter(tmp_path / "fallback")
    assert isinstance(s, NativeSnapshotter)
    assert "no overlay here" in caplog.text
    s.close()
    # the fallback root stays native, even once overlayfs works again
    monkeypatch.setattr("podling.snapshots.probe_overlay", lambda root: None)
    s = create_snapshotter(tmp_path / "fallback")
    assert isinstance(s, NativeSnapshotter)
    s.close()
    # an overlayfs root cannot silently become native
    create_snapshotter(tmp_path / "ovl").close()
    monkeypatch.setattr("podling.snapshots.probe_overlay", lambda root: "broken")
    with pytest.raises(FailedPrecondition, match="broken"):
        create_snapshotter(tmp_path / "ovl")
    with pytest.raises(FailedPrecondition, match="overlayfs"):
        create_snapshotter(tmp_path / "ovl", "native")


def test_lower_dirs(snap: Snapshotter, tmp_path: Path) -> None:
    c1 = add_layer(snap, None, "c1", L1)
    c2 = add_layer(snap, c1, "c2", L2)
    snap.prepare("top", c2)
    snap.prepare("base", None)
    assert snap.lower_dirs("base") == []
    lowers = snap.lower_dirs("top")
    if snap.name == "overlayfs":
        assert [p.parent.name for p in lowers] == ["2", "1"]  # c2's dir, then c1's
        assert (lowers[0] / "l2").is_file() and (lowers[1] / "etc/passwd").is_file()
    else:
        assert lowers == []
    with pytest.raises(FailedPrecondition, match="active"):
        snap.lower_dirs(c2)
    with pytest.raises(NotFound):
        snap.lower_dirs("nope")


def merged_tree(s: Snapshotter, top: str, target: Path) -> Iterator[Path]:
    s.prepare("ctr", top)
    return mounted(s.mounts("ctr"), target)


def test_usrmerge_later_layer_writes_through_link(snap: Snapshotter, tmp_path: Path) -> None:
    base = (
        TarBuilder()
        .dir("usr", mode=0o750, uid=1000, gid=1001, mtime=1_600_000_123)
        .dir("usr/lib")
        .file("usr/lib/old", b"o")
        .symlink("lib", "usr/lib")
        .dir("tmp", mode=0o1777)
        .dir("var")
        .symlink("var/run", "/run")
        .dir("run")
        .bytes()
    )
    top = TarBuilder().file("lib/x", b"new").file("var/run/pid", b"1").file("tmp/t").bytes()
    c2 = add_layer(snap, add_layer(snap, None, "c1", base), "c2", top)
    with merged_tree(snap, c2, tmp_path / "merged") as root:
        assert (root / "lib/x").read_bytes() == b"new"
        assert sorted(os.listdir(root / "usr/lib")) == ["old", "x"]
        assert os.readlink(root / "lib") == "usr/lib"
        assert (root / "run/pid").read_bytes() == b"1"
        usr = os.stat(root / "usr")  # copied up with the lower's metadata in overlay mode
        assert (usr.st_uid, usr.st_gid, stat.S_IMODE(usr.st_mode)) == (1000, 1001, 0o750)
        assert usr.st_mtime == 1_600_000_123
        assert stat.S_IMODE(os.stat(root / "tmp").st_mode) == 0o1777


def test_links_hidden_by_upper_whiteout_or_opaque_are_not_followed(
    snap: Snapshotter, tmp_path: Path
) -> None:
    l1 = (
        TarBuilder()
        .dir("w")
        .symlink("w/lnk", "/t1")
        .dir("o")
        .symlink("o/lnk", "/t2")
        .dir("t1")
        .dir("t2")
        .bytes()
    )
    l2 = TarBuilder().whiteout("w/lnk").dir("o").opaque("o").file("o/other").bytes()
    l3 = TarBuilder().file("w/lnk/f", b"w").file("o/lnk/f", b"o").bytes()
    c1 = add_layer(snap, None, "c1", l1)
    c3 = add_layer(snap, add_layer(snap, c1, "c2", l2), "c3", l3)
    with merged_tree(snap, c3, tmp_path / "merged") as root:
        assert stat.S_ISDIR(os.lstat(root / "w/lnk").st_mode)
        assert (root / "w/lnk/f").read_bytes() == b"w"
        assert stat.S_ISDIR(os.lstat(root / "o/lnk").st_mode)
        assert (root / "o/lnk/f").read_bytes() == b"o"
        assert sorted(os.listdir(root / "o")) == ["lnk", "other"]
        assert os.listdir(root / "t1") == [] and os.listdir(root / "t2") == []


def test_dir_recreated_after_its_whiteout_hides_lower_content(
    snap: Snapshotter, tmp_path: Path
) -> None:
    c1 = add_layer(snap, None, "c1", TarBuilder().dir("d").file("d/old").bytes())
    top = TarBuilder().whiteout("d").dir("d").file("d/new").bytes()
    c2 = add_layer(snap, c1, "c2", top)
    with merged_tree(snap, c2, tmp_path / "merged") as root:
        assert os.listdir(root / "d") == ["new"]


def test_escaping_link_in_lower_lands_in_snapshot(snap: Snapshotter, tmp_path: Path) -> None:
    c1 = add_layer(
        snap, None, "c1", TarBuilder().symlink("link", "/").symlink("up", "../..").bytes()
    )
    top = TarBuilder().file("link/etc/shadow", b"s").file("up/x", b"x").bytes()
    shadow = os.stat("/etc/shadow")
    c2 = add_layer(snap, c1, "c2", top)
    assert os.stat("/etc/shadow") == shadow and not os.path.lexists("/x")
    with merged_tree(snap, c2, tmp_path / "merged") as root:
        assert (root / "etc/shadow").read_bytes() == b"s"
        assert (root / "x").read_bytes() == b"x"


@pytest.mark.parametrize("case", HOSTILE, ids=[c.name for c in HOSTILE])
def test_hostile_layer_overlay_mode(case: Hostile, tmp_path: Path) -> None:
    run_case(case, tmp_path / "box", "overlay")
