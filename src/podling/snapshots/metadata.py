"""Snapshot metadata in SQLite: key -> numeric id, parent, kind.

The numeric id names the snapshot's directory (`root/<id>/`); ids come from
AUTOINCREMENT, so they grow and are never reused (a stale directory can never be
mistaken for a new snapshot). Every change is one IMMEDIATE transaction with
synchronous=FULL, so a row that was reported written survives a crash; except the
"pending" row, which a crash may lose: its dirs then have no row, which the next open
deletes too. In WAL mode the next synced commit (the row turning "active") syncs it
anyway; one fdatasync per new snapshot is spared. (A power loss may so hand out a lost
pending row's id again; its stale dir is gone by then: open deletes it, and a new
snapshot's dir is cleared before it is made.)

Kinds: "pending" (intent recorded, directories not complete yet: invisible to callers
and deleted on the next open), "active", "committed", "view".
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from podling.diskspace import space_checked
from podling.errors import AlreadyExists, FailedPrecondition, NotFound

PENDING, ACTIVE, COMMITTED, VIEW = "pending", "active", "committed", "view"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS snapshots (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    key TEXT NOT NULL UNIQUE,
    parent INTEGER REFERENCES snapshots(id),
    kind TEXT NOT NULL CHECK (kind IN ('pending', 'active', 'committed', 'view'))
);
CREATE INDEX IF NOT EXISTS snapshots_parent ON snapshots(parent);
CREATE TABLE IF NOT EXISTS settings (name TEXT PRIMARY KEY, value TEXT NOT NULL);
"""


@dataclass(frozen=True)
class Info:
    id: int
    key: str
    parent: int | None
    kind: str


class MetaStore:
    """Thread-safe access to `metadata.db`; one connection guarded by a lock."""

    def __init__(self, path: Path) -> None:
        self._path = path
        self._lock = threading.Lock()
        self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.execute("PRAGMA foreign_keys=ON")
        self._db.executescript(_SCHEMA)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    @contextmanager
    def _tx(self, durable: bool = True) -> Iterator[sqlite3.Connection]:
        # SQLite may have rolled back already (SQLITE_FULL does): ROLLBACK only while a
        # transaction is open, so the real error is the one raised
        with self._lock, space_checked(self._path, "writing snapshot metadata"):
            self._db.execute(f"PRAGMA synchronous={'FULL' if durable else 'NORMAL'}")
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
                self._db.execute("COMMIT")
            except BaseException:
                if self._db.in_transaction:
                    self._db.execute("ROLLBACK")
                raise

    def claim_kind(self, kind: str) -> str:
        """Record which snapshotter owns this db; returns the owner (first claim wins)."""
        with self._tx() as db:
            db.execute("INSERT OR IGNORE INTO settings VALUES ('snapshotter', ?)", (kind,))
            row = db.execute("SELECT value FROM settings WHERE name = 'snapshotter'").fetchone()
        return str(row[0])

    def owner(self) -> str | None:
        """The snapshotter kind recorded by `claim_kind`, if any."""
        with self._lock:
            row = self._db.execute(
                "SELECT value FROM settings WHERE name = 'snapshotter'"
            ).fetchone()
        return None if row is None else str(row[0])

    @staticmethod
    def _get(db: sqlite3.Connection, key: str) -> Info | None:
        row = db.execute(
            "SELECT id, key, parent, kind FROM snapshots WHERE key = ? AND kind != 'pending'",
            (key,),
        ).fetchone()
        return None if row is None else Info(*row)

    def get(self, key: str) -> Info:
        """The visible snapshot `key`; NotFound otherwise."""
        with self._lock:
            info = self._get(self._db, key)
        if info is None:
            raise NotFound(f"snapshot {key!r} does not exist")
        return info

    def find(self, key: str) -> Info | None:
        with self._lock:
            return self._get(self._db, key)

    def key_of(self, sid: int) -> str:
        with self._lock:
            row = self._db.execute("SELECT key FROM snapshots WHERE id = ?", (sid,)).fetchone()
        if row is None:
            raise NotFound(f"snapshot #{sid} does not exist")
        return str(row[0])

    def add_pending(self, key: str, parent: str | None) -> Info:
        """Record intent to create `key` on committed `parent`; returns the pending row
        (not synced to disk: see the module docstring)."""
        with self._tx(durable=False) as db:
            if db.execute("SELECT 1 FROM snapshots WHERE key = ?", (key,)).fetchone():
                raise AlreadyExists(f"snapshot {key!r} already exists")
            pid = None
            if parent is not None:
                p = self._get(db, parent)
                if p is None:
                    raise NotFound(f"parent snapshot {parent!r} does not exist")
                if p.kind != COMMITTED:
                    raise FailedPrecondition(
                        f"parent snapshot {parent!r} is {p.kind}: only committed snapshots "
                        "can be parents; commit it first"
                    )
                pid = p.id
            cur = db.execute(
                "INSERT INTO snapshots (key, parent, kind) VALUES (?, ?, 'pending')", (key, pid)
            )
            assert cur.lastrowid is not None
            return Info(cur.lastrowid, key, pid, PENDING)

    def set_kind(self, sid: int, kind: str) -> None:
        with self._tx() as db:
            db.execute("UPDATE snapshots SET kind = ? WHERE id = ?", (kind, sid))

    def commit(self, name: str, key: str) -> Info:
        """Rename active `key` to committed `name`; returns the updated row."""
        with self._tx() as db:
            info = self._get(db, key)
            if info is None:
                raise NotFound(f"snapshot {key!r} does not exist")
            if info.kind != ACTIVE:
                raise FailedPrecondition(
                    f"snapshot {key!r} is {info.kind}; only active ones commit"
                )
            if db.execute("SELECT 1 FROM snapshots WHERE key = ?", (name,)).fetchone():
                raise AlreadyExists(f"snapshot {name!r} already exists")
            db.execute(
                "UPDATE snapshots SET key = ?, kind = 'committed' WHERE id = ?", (name, info.id)
            )
            return Info(info.id, name, info.parent, COMMITTED)

    def delete(self, key: str) -> Info:
        """Delete the row of `key` unless it has children; returns the deleted row."""
        with self._tx() as db:
            info = self._get(db, key)
            if info is None:
                raise NotFound(f"snapshot {key!r} does not exist")
            kids = db.execute("SELECT key FROM snapshots WHERE parent = ?", (info.id,)).fetchall()
            if kids:
                names = ", ".join(repr(k[0]) for k in kids[:3])
                raise FailedPrecondition(
                    f"snapshot {key!r} still has {len(kids)} child snapshot(s) ({names}); "
                    "remove them first"
                )
            db.execute("DELETE FROM snapshots WHERE id = ?", (info.id,))
            return info

    def delete_id(self, sid: int) -> None:
        with self._tx() as db:
            db.execute("DELETE FROM snapshots WHERE id = ?", (sid,))

    def chain(self, sid: int) -> list[int]:
        """Ids of `sid` and its ancestors, nearest first."""
        with self._lock:
            rows = self._db.execute(
                """WITH RECURSIVE up(id, parent, depth) AS (
                       SELECT id, parent, 0 FROM snapshots WHERE id = ?
                       UNION ALL
                       SELECT s.id, s.parent, up.depth + 1
                       FROM snapshots s JOIN up ON s.id = up.parent)
                   SELECT id FROM up ORDER BY depth""",
                (sid,),
            ).fetchall()
        return [int(r[0]) for r in rows]

    def all(self) -> list[Info]:
        with self._lock:
            rows = self._db.execute("SELECT id, key, parent, kind FROM snapshots").fetchall()
        return [Info(*r) for r in rows]
