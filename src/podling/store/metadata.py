"""The SQLite metadata store: schema, version, migrations, and the image records.

One file (`root/metadata.db`) in WAL mode. `MIGRATIONS[i]` takes the schema from version
i to i+1; `open_store` applies the missing ones in one transaction each, so a crash
mid-migration leaves the previous version intact. A database newer than this code
refuses to open rather than be misread.

Queries are tiny and indexed, so they run directly on the caller's thread; a lock
serialises writers from the event loop and from worker threads.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from podling.diskspace import exhausted, is_full
from podling.errors import FailedPrecondition

MIGRATIONS: tuple[str, ...] = (
    # 0 → 1: images, their names (tags and digests), the blobs and snapshots they use.
    """
    CREATE TABLE images (
        id TEXT PRIMARY KEY,            -- config digest: the image id
        manifest_digest TEXT NOT NULL,
        config BLOB NOT NULL,
        size INTEGER NOT NULL,          -- compressed size of config + layers
        pinned INTEGER NOT NULL DEFAULT 0,
        created_ns INTEGER NOT NULL
    );
    CREATE TABLE image_names (
        name TEXT PRIMARY KEY,          -- 'domain/path:tag' or 'domain/path@sha256:...'
        kind TEXT NOT NULL CHECK (kind IN ('tag', 'digest')),
        image_id TEXT NOT NULL REFERENCES images(id) ON DELETE CASCADE
    );
    CREATE INDEX image_names_by_image ON image_names(image_id);
    CREATE TABLE image_blobs (
        image_id TEXT NOT NULL REFERENCES images(id) ON DELETE CASCADE,
        digest TEXT NOT NULL,
        PRIMARY KEY (image_id, digest)
    );
    CREATE INDEX image_blobs_by_digest ON image_blobs(digest);
    CREATE TABLE image_layers (
        image_id TEXT NOT NULL REFERENCES images(id) ON DELETE CASCADE,
        idx INTEGER NOT NULL,
        chain_id TEXT NOT NULL,
        PRIMARY KEY (image_id, idx)
    );
    CREATE INDEX image_layers_by_chain ON image_layers(chain_id);
    """,
    # 1 → 2: pod sandboxes and containers. Columns for what is filtered or unique; the
    # CRI config as the proto's bytes; everything else in `doc` (JSON, see store/pods.py).
    """
    CREATE TABLE pods (
        id TEXT PRIMARY KEY,
        reservation TEXT NOT NULL UNIQUE,   -- name_namespace_uid_attempt: one pod per name
        state TEXT NOT NULL,
        created_ns INTEGER NOT NULL,
        config BLOB NOT NULL,
        doc TEXT NOT NULL
    );
    CREATE TABLE containers (
        id TEXT PRIMARY KEY,
        pod_id TEXT NOT NULL REFERENCES pods(id),
        reservation TEXT NOT NULL,          -- name_attempt, unique within the pod
        state TEXT NOT NULL,
        created_ns INTEGER NOT NULL,
        config BLOB NOT NULL,
        doc TEXT NOT NULL,
        UNIQUE (pod_id, reservation)
    );
    CREATE INDEX containers_by_pod ON containers(pod_id);
    """,
)


@dataclass(frozen=True)
class ImageRecord:
    id: str
    manifest_digest: str
    config: bytes
    size: int
    pinned: bool
    created_ns: int
    names: tuple[tuple[str, str], ...]  # (name, kind), sorted
    chain_ids: tuple[str, ...]  # per layer, bottom first

    @property
    def repo_tags(self) -> list[str]:
        return [n for n, k in self.names if k == "tag"]

    @property
    def repo_digests(self) -> list[str]:
        return [n for n, k in self.names if k == "digest"]


class MetadataStore:
    """Typed access to the metadata database."""

    def __init__(self, conn: sqlite3.Connection, path: Path | None = None) -> None:
        self._conn = conn
        self._path = path  # named in errors: which filesystem filled up
        self._lock = threading.RLock()

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    @contextmanager
    def tx(self) -> Iterator[sqlite3.Connection]:
        """A write transaction; commits on success, rolls back on any exception.

        A full disk is ResourceExhausted naming the database file. SQLite may already
        have rolled back on its own (SQLITE_FULL does), so ROLLBACK only runs while a
        transaction is open: a failing ROLLBACK must not hide the real error.
        """
        with self._lock:
            try:
                self._conn.execute("BEGIN IMMEDIATE")
                yield self._conn
                self._conn.execute("COMMIT")
            except BaseException as e:
                if self._conn.in_transaction:
                    self._conn.execute("ROLLBACK")
                if is_full(e):
                    where = self._path or Path("(in memory)")
                    raise exhausted(where, "writing the metadata database", e) from e
                raise

    def query(self, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        """Run a read query under the lock and return all rows."""
        with self._lock:
            return list(self._conn.execute(sql, params).fetchall())

    def schema_version(self) -> int:
        with self._lock:
            return int(self._conn.execute("PRAGMA user_version").fetchone()[0])

    # ---- images -------------------------------------------------------------------------

    def put_image(self, rec: ImageRecord, blobs: list[str]) -> list[str]:
        """Insert or update an image and point its names at it.

        Returns the ids of other images that lost their last name in the process (a tag
        moved to this image): the caller decides whether to collect them.
        """
        with self.tx() as c:
            losers = self._point_names(c, rec)
            c.execute(
                "INSERT INTO images (id, manifest_digest, config, size, pinned, created_ns)"
                " VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT(id) DO UPDATE SET"
                " manifest_digest = excluded.manifest_digest, size = excluded.size,"
                " pinned = MAX(images.pinned, excluded.pinned)",
                (
                    rec.id,
                    rec.manifest_digest,
                    rec.config,
                    rec.size,
                    int(rec.pinned),
                    rec.created_ns,
                ),
            )
            c.executemany(
                "INSERT OR IGNORE INTO image_blobs (image_id, digest) VALUES (?, ?)",
                [(rec.id, d) for d in blobs],
            )
            c.executemany(
                "INSERT OR REPLACE INTO image_layers (image_id, idx, chain_id) VALUES (?, ?, ?)",
                [(rec.id, i, ch) for i, ch in enumerate(rec.chain_ids)],
            )
            c.executemany(
                "INSERT OR REPLACE INTO image_names (name, kind, image_id) VALUES (?, ?, ?)",
                [(n, k, rec.id) for n, k in rec.names],
            )
        return losers

    def _point_names(self, c: sqlite3.Connection, rec: ImageRecord) -> list[str]:
        losers: list[str] = []
        for name, _kind in rec.names:
            row = c.execute("SELECT image_id FROM image_names WHERE name = ?", (name,)).fetchone()
            if row is None or row[0] == rec.id:
                continue
            c.execute("DELETE FROM image_names WHERE name = ?", (name,))
            left = c.execute(
                "SELECT COUNT(*) FROM image_names WHERE image_id = ?", (row[0],)
            ).fetchone()[0]
            if left == 0:
                losers.append(row[0])
        return losers

    def get_image(self, image_id: str) -> ImageRecord | None:
        with self._lock:
            row = self._conn.execute(
                "SELECT id, manifest_digest, config, size, pinned, created_ns FROM images"
                " WHERE id = ?",
                (image_id,),
            ).fetchone()
            if row is None:
                return None
            names = self._conn.execute(
                "SELECT name, kind FROM image_names WHERE image_id = ? ORDER BY name", (image_id,)
            ).fetchall()
            chains = self._conn.execute(
                "SELECT chain_id FROM image_layers WHERE image_id = ? ORDER BY idx", (image_id,)
            ).fetchall()
        return ImageRecord(
            id=row[0],
            manifest_digest=row[1],
            config=bytes(row[2]),
            size=row[3],
            pinned=bool(row[4]),
            created_ns=row[5],
            names=tuple((n, k) for n, k in names),
            chain_ids=tuple(c[0] for c in chains),
        )

    def image_ids(self) -> list[str]:
        with self._lock:
            return [r[0] for r in self._conn.execute("SELECT id FROM images ORDER BY created_ns")]

    def image_by_name(self, name: str) -> str | None:
        with self._lock:
            row = self._conn.execute(
                "SELECT image_id FROM image_names WHERE name = ?", (name,)
            ).fetchone()
        return None if row is None else str(row[0])

    def images_by_id_prefix(self, prefix: str) -> list[str]:
        with self._lock:
            rows = self._conn.execute(
                "SELECT id FROM images WHERE id >= ? AND id < ?", (prefix, prefix + "\uffff")
            ).fetchall()
        return [r[0] for r in rows]

    def delete_image(self, image_id: str) -> bool:
        """Delete the record (names, blobs, layers cascade). False if it was not there."""
        with self.tx() as c:
            cur = c.execute("DELETE FROM images WHERE id = ?", (image_id,))
            return cur.rowcount > 0

    def blob_in_use(self, digest: str) -> bool:
        with self._lock:
            row = self._conn.execute(
                "SELECT 1 FROM image_blobs WHERE digest = ? LIMIT 1", (digest,)
            ).fetchone()
        return row is not None

    def chain_in_use(self, chain_id: str) -> bool:
        with self._lock:
            row = self._conn.execute(
                "SELECT 1 FROM image_layers WHERE chain_id = ? LIMIT 1", (chain_id,)
            ).fetchone()
        return row is not None


def open_store(path: Path) -> MetadataStore:
    """Open (creating if needed) and migrate the database at `path`."""
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=30)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")
    conn.execute("PRAGMA foreign_keys=ON")
    version = int(conn.execute("PRAGMA user_version").fetchone()[0])
    if version > len(MIGRATIONS):
        conn.close()
        raise FailedPrecondition(
            f"{path} has schema version {version}, newer than this podling understands "
            f"({len(MIGRATIONS)}); upgrade podling or move the state away"
        )
    for i in range(version, len(MIGRATIONS)):
        conn.execute("BEGIN IMMEDIATE")
        try:
            for stmt in _statements(MIGRATIONS[i]):
                conn.execute(stmt)
            conn.execute(f"PRAGMA user_version = {i + 1}")
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            conn.close()
            raise
    return MetadataStore(conn, path)


def _statements(script: str) -> list[str]:
    """Split a migration into statements (executescript would commit on its own)."""
    return [s.strip() for s in script.split(";") if s.strip() and not s.strip().startswith("--")]
