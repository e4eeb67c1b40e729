from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from podling.errors import DataLoss, InvalidArgument
from podling.image.content import ContentStore, sha256_digest


def test_put_and_read(tmp_path: Path) -> None:
    store = ContentStore(tmp_path)
    d = store.put_bytes(b"hello")
    assert d == "sha256:" + hashlib.sha256(b"hello").hexdigest()
    assert store.has(d) and store.read_bytes(d) == b"hello" and store.size(d) == 5
    assert list(store.digests()) == [d]
    store.delete(d)
    assert not store.has(d)


def test_mismatch_leaves_nothing(tmp_path: Path) -> None:
    store = ContentStore(tmp_path)
    wrong = sha256_digest(b"other")
    with pytest.raises(DataLoss, match="does not match its digest"):
        store.put_bytes(b"hello", wrong)
    assert not store.has(wrong)
    assert list((tmp_path / "ingest").iterdir()) == []


def test_size_overrun_is_caught_while_writing(tmp_path: Path) -> None:
    store = ContentStore(tmp_path)
    ing = store.ingest(sha256_digest(b"abc"), 2)
    with pytest.raises(DataLoss, match="larger than the 2 bytes"):
        ing.write(b"abc")
    assert list((tmp_path / "ingest").iterdir()) == []


def test_short_blob_fails_commit(tmp_path: Path) -> None:
    store = ContentStore(tmp_path)
    ing = store.ingest(sha256_digest(b"abcd"), 4)
    ing.write(b"ab")
    with pytest.raises(DataLoss, match="got 2 bytes"):
        ing.commit()


def test_resume_continues_where_it_stopped(tmp_path: Path) -> None:
    data = bytes(range(256)) * 1000
    d = sha256_digest(data)
    store = ContentStore(tmp_path)
    first = store.ingest(d, len(data))
    first.write(data[:1000])
    first.close()
    second = store.ingest(d, len(data))
    assert second.offset == 1000
    second.write(data[1000:])
    path = second.commit()
    assert path.read_bytes() == data and store.has(d)


def test_reset_discards_partial(tmp_path: Path) -> None:
    store = ContentStore(tmp_path)
    d = sha256_digest(b"xyz")
    ing = store.ingest(d, 3)
    ing.write(b"q")
    ing.reset()
    assert ing.offset == 0
    ing.write(b"xyz")
    ing.commit()
    assert store.read_bytes(d) == b"xyz"


def test_bad_digest_strings_are_rejected(tmp_path: Path) -> None:
    store = ContentStore(tmp_path)
    for bad in ("md5:abc", "sha256:XYZ", "sha256:" + "a" * 63, "../../etc/passwd"):
        with pytest.raises(InvalidArgument):
            store.path(bad)


def test_abandoned_partial_downloads_are_pruned(tmp_path: Path) -> None:
    import os

    store = ContentStore(tmp_path)
    old = store.ingest("sha256:" + "a" * 64, 10)
    old.write(b"abc")
    old.close()
    fresh = store.ingest("sha256:" + "b" * 64, 10)
    fresh.write(b"abc")
    fresh.close()
    os.utime(old.path, (1000.0, 1000.0))
    now = fresh.path.stat().st_mtime + 10
    assert store.prune_ingests(3600, now) == ["a" * 64]
    assert not old.path.exists() and fresh.path.exists()
    assert store.prune_ingests(3600, now) == []
