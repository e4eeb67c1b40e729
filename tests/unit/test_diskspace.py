"""A full disk becomes ResourceExhausted naming where, in the helpers and in both SQLite
stores (SQLite's max_page_count makes a database answer SQLITE_FULL on demand)."""

from __future__ import annotations

import errno
import sqlite3
from pathlib import Path

import pytest

from podling.diskspace import exhausted, is_full, space_checked
from podling.errors import ResourceExhausted
from podling.snapshots.metadata import MetaStore
from podling.store.metadata import ImageRecord, open_store


def test_is_full() -> None:
    assert is_full(OSError(errno.ENOSPC, "No space left on device"))
    assert is_full(OSError(errno.EDQUOT, "Disk quota exceeded"))
    assert not is_full(OSError(errno.EACCES, "Permission denied"))
    assert is_full(sqlite3.OperationalError("database or disk is full"))
    assert not is_full(sqlite3.OperationalError("database is locked"))
    assert not is_full(ValueError("no"))


def test_exhausted_names_the_place_and_the_remedy(tmp_path: Path) -> None:
    err = exhausted(tmp_path, "storing blob x", OSError(errno.ENOSPC, "No space left on device"))
    assert str(tmp_path) in err.message and "storing blob x" in err.message
    assert "No space left on device" in err.message and "free space" in err.message


def test_space_checked_converts_only_full_disk_errors(tmp_path: Path) -> None:
    with pytest.raises(ResourceExhausted, match="writing"), space_checked(tmp_path, "writing"):
        raise OSError(errno.ENOSPC, "No space left on device")
    with pytest.raises(PermissionError), space_checked(tmp_path, "writing"):
        raise PermissionError(errno.EACCES, "Permission denied")


def _image(n: int) -> ImageRecord:
    names = (("x" * 2000 + f":{n}", "tag"),)
    return ImageRecord(f"sha256:{n}", "sha256:m", b"{}" * 1000, 10, False, 1, names, ("c",))


def test_metadata_store_full_then_recovers(tmp_path: Path) -> None:
    store = open_store(tmp_path / "m.db")
    pages = store.query("PRAGMA page_count")[0][0]
    store.query(f"PRAGMA max_page_count = {pages + 2}")
    with pytest.raises(ResourceExhausted, match=str(tmp_path / "m.db")):
        for n in range(100):
            store.put_image(_image(n), [])
    store.query("PRAGMA max_page_count = 1000000")  # space returns: the store still works
    store.put_image(_image(1000), [])
    assert store.get_image("sha256:1000") is not None
    store.close()


def test_snapshot_metadata_full_then_recovers(tmp_path: Path) -> None:
    meta = MetaStore(tmp_path / "s.db")
    with meta._lock:
        pages = meta._db.execute("PRAGMA page_count").fetchone()[0]
        meta._db.execute(f"PRAGMA max_page_count = {pages + 1}")
    with pytest.raises(ResourceExhausted, match="snapshot metadata"):
        for n in range(2000):
            meta.add_pending("k" * 500 + str(n), None)
    with meta._lock:
        meta._db.execute("PRAGMA max_page_count = 1000000")
    assert meta.add_pending("after", None).key == "after"
    meta.close()
