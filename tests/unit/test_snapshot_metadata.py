"""Snapshot metadata (SQLite, no root): which writes are synced to disk."""

from __future__ import annotations

from pathlib import Path

from podling.snapshots.metadata import ACTIVE, MetaStore


def _writes_and_their_sync_mode(statements: list[str]) -> list[tuple[str, str | None]]:
    mode: str | None = None
    out = []
    for sql in statements:
        if sql.startswith("PRAGMA synchronous="):
            mode = sql.split("=", 1)[1]
        elif sql.startswith(("INSERT", "UPDATE", "DELETE")):
            out.append((sql.split()[0], mode))
    return out


def test_only_the_pending_row_is_committed_without_a_sync(tmp_path: Path) -> None:
    """A lost pending row leaves dirs without a row, which the next open deletes; every
    other change must survive a power loss once reported (synchronous=FULL)."""
    meta = MetaStore(tmp_path / "metadata.db")
    statements: list[str] = []
    meta._db.set_trace_callback(statements.append)
    info = meta.add_pending("layer", None)
    meta.set_kind(info.id, ACTIVE)
    meta.commit("layer-done", "layer")
    meta.delete("layer-done")
    meta.close()
    assert _writes_and_their_sync_mode(statements) == [
        ("INSERT", "NORMAL"),
        ("UPDATE", "FULL"),
        ("UPDATE", "FULL"),
        ("DELETE", "FULL"),
    ]
