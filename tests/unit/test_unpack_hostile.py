"""The hostile layer corpus (tests/support/tars.py HOSTILE), native whiteouts, no root needed.

Error classes by case family (see each case's `expect`):
- UnsafeContent: names whose `..` lexically escapes dest, symlink loops and over-long
  link chains, non-directories used as parents, hardlinks to missing or outside targets,
  escaping whiteouts, replacing the root, over-long names, bombs.
- DataLoss: truncated or corrupt tar, gzip or zstd streams; data that is not a tar.
- None (handled safely): absolute names (relative to dest); symlinks met in parent
  components, which resolve inside dest as if it were "/" (absolute targets relative to
  dest, `..` clamped at dest), so "escapes" through them land inside dest; symlink entries
  pointing anywhere; duplicates replacing symlinks; device nodes (created as root,
  skipped otherwise).
Every case also checks that nothing outside dest changed and that dest can be removed.
"""

from __future__ import annotations

import io
import os
import shutil
import stat
from pathlib import Path

import pytest

from podling.errors import UnsafeContent
from podling.image.unpack import apply_layer, open_layer
from tests.support.tars import HOSTILE, Hostile, TarBuilder, make_box, tree_state


def run_case(case: Hostile, box: Path, whiteouts: str) -> None:
    """Apply a hostile case in `box` and assert it failed cleanly or was handled safely."""
    assert whiteouts in ("native", "overlay")
    dest = make_box(box)
    if case.lower is not None:
        apply_layer(io.BytesIO(case.lower(box)), dest, whiteouts="native", max_bytes=1 << 20)
    blob = box.parent / f"{box.name}.blob"
    blob.write_bytes(case.build(box))
    before = tree_state(box, skip=dest)
    passwd = os.stat("/etc/passwd")
    try:
        with open_layer(blob, case.media_type) as stream:
            if case.expect is None:
                apply_layer(stream, dest, whiteouts=whiteouts, max_bytes=case.max_bytes)  # type: ignore[arg-type]
            else:
                with pytest.raises(case.expect) as info:
                    apply_layer(stream, dest, whiteouts=whiteouts, max_bytes=case.max_bytes)  # type: ignore[arg-type]
                assert str(info.value), "errors must say what is wrong"
        assert tree_state(box, skip=dest) == before, "something outside dest changed"
        assert os.stat("/etc/passwd") == passwd
        if case.check is not None:
            assert case.check(box), f"{case.name}: post-condition failed"
        _remove_tree(dest)  # the caller must always be able to delete a failed snapshot
        assert not dest.exists()
    finally:
        blob.unlink()


def _remove_tree(dest: Path) -> None:
    def fix(func: object, path: str, exc: object) -> None:
        os.chmod(os.path.dirname(path), 0o700)  # non-root: restore write permission
        shutil.rmtree(path) if os.path.isdir(path) else os.unlink(path)

    for dirpath, dirs, _ in os.walk(dest):
        for d in dirs:
            p = os.path.join(dirpath, d)
            if not os.path.islink(p):
                os.chmod(p, stat.S_IMODE(os.lstat(p).st_mode) | 0o700)
    shutil.rmtree(dest, onerror=fix)


@pytest.mark.parametrize("case", HOSTILE, ids=[c.name for c in HOSTILE])
def test_hostile_layer(case: Hostile, tmp_path: Path) -> None:
    run_case(case, tmp_path / "box", "native")


def test_device_nodes_skipped_without_mknod_permission(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def refuse(*args: object, **kwargs: object) -> None:
        raise PermissionError(1, "Operation not permitted")

    monkeypatch.setattr(os, "mknod", refuse)
    layer = TarBuilder().chardev("dev/null").blockdev("dev/sda").file("ok", b"1").bytes()
    apply_layer(io.BytesIO(layer), tmp_path, whiteouts="native", max_bytes=1 << 20)
    assert sorted(os.listdir(tmp_path)) == ["dev", "ok"]
    assert os.listdir(tmp_path / "dev") == []


def test_overlay_whiteout_without_mknod_fails_cleanly(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from podling.errors import FailedPrecondition

    def refuse(*args: object, **kwargs: object) -> None:
        raise PermissionError(1, "Operation not permitted")

    monkeypatch.setattr(os, "mknod", refuse)
    layer = TarBuilder().whiteout("gone").bytes()
    with pytest.raises(FailedPrecondition, match="CAP_MKNOD"):
        apply_layer(io.BytesIO(layer), tmp_path, whiteouts="overlay", max_bytes=1 << 20)


def test_bomb_limit_counts_uncompressed_bytes(tmp_path: Path) -> None:
    layer = TarBuilder().file("f", bytes(100_000)).bytes()
    with pytest.raises(UnsafeContent, match="decompression bomb"):
        apply_layer(io.BytesIO(layer), tmp_path, whiteouts="native", max_bytes=50_000)
    # exactly at the limit is fine
    out = tmp_path / "ok"
    out.mkdir()
    apply_layer(io.BytesIO(layer), out, whiteouts="native", max_bytes=len(layer))
