from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from podling.errors import FailedPrecondition
from podling.store.metadata import MIGRATIONS, ImageRecord, open_store


def rec(image_id: str, *names: tuple[str, str], chains: tuple[str, ...] = ("c1",)) -> ImageRecord:
    return ImageRecord(image_id, "sha256:m", b"{}", 10, False, 1, tuple(names), chains)


def test_schema_is_migrated_and_reopens(tmp_path: Path) -> None:
    s = open_store(tmp_path / "m.db")
    assert s.schema_version() == len(MIGRATIONS)
    s.put_image(rec("sha256:a", ("x:1", "tag")), ["sha256:a"])
    s.close()
    s = open_store(tmp_path / "m.db")
    got = s.get_image("sha256:a")
    assert got is not None and got.repo_tags == ["x:1"]
    assert s.image_by_name("x:1") == "sha256:a"


def test_newer_schema_refuses_to_open(tmp_path: Path) -> None:
    conn = sqlite3.connect(tmp_path / "m.db")
    conn.execute(f"PRAGMA user_version = {len(MIGRATIONS) + 1}")
    conn.close()
    with pytest.raises(FailedPrecondition, match="newer than this podling"):
        open_store(tmp_path / "m.db")


def test_moving_a_tag_reports_the_image_left_without_names(tmp_path: Path) -> None:
    s = open_store(tmp_path / "m.db")
    s.put_image(rec("sha256:a", ("x:1", "tag")), [])
    assert s.put_image(rec("sha256:b", ("x:1", "tag")), []) == ["sha256:a"]
    a = s.get_image("sha256:a")
    assert a is not None and a.names == ()
    assert s.image_by_name("x:1") == "sha256:b"


def test_one_image_gathers_names_and_delete_cascades(tmp_path: Path) -> None:
    s = open_store(tmp_path / "m.db")
    s.put_image(rec("sha256:a", ("r1/x:1", "tag")), ["sha256:l1"])
    s.put_image(rec("sha256:a", ("r2/x:1", "tag"), ("r2/x@sha256:d", "digest")), ["sha256:l1"])
    got = s.get_image("sha256:a")
    assert got is not None
    assert got.repo_tags == ["r1/x:1", "r2/x:1"] and got.repo_digests == ["r2/x@sha256:d"]
    assert s.blob_in_use("sha256:l1") and s.chain_in_use("c1")
    assert s.delete_image("sha256:a")
    assert not s.delete_image("sha256:a")
    assert s.image_by_name("r1/x:1") is None
    assert not s.blob_in_use("sha256:l1") and not s.chain_in_use("c1")


def test_id_prefix_lookup(tmp_path: Path) -> None:
    s = open_store(tmp_path / "m.db")
    s.put_image(rec("sha256:abc1"), [])
    s.put_image(rec("sha256:abc2"), [])
    assert sorted(s.images_by_id_prefix("sha256:abc")) == ["sha256:abc1", "sha256:abc2"]
    assert s.images_by_id_prefix("sha256:abc1") == ["sha256:abc1"]
