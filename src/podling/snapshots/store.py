"""What the overlayfs and native snapshotters share: numbered dirs plus SQLite metadata.

Layout under `root`:
  metadata.db       key -> id, parent, kind (see metadata.py)
  <id>/fs           the snapshot's tree (overlay: its upper dir; native: a full tree)
  <id>/work         overlay workdir (overlayfs only)

Ids are small integers so that many layer paths fit in overlay's mount options.
Crash safety: a row is written as "pending" before its directories are created and
becomes visible only when they are complete; removal deletes the row first, then the
directory. On open, pending rows and numbered dirs without a row are deleted.
The root and its metadata belong to one snapshotter kind; opening it as another kind
raises FailedPrecondition.
"""

from __future__ import annotations

import logging
import os
import shutil
import stat
from pathlib import Path

from podling.diskspace import space_checked
from podling.errors import FailedPrecondition, ResourceExhausted
from podling.snapshots.base import Mount, WhiteoutMode
from podling.snapshots.metadata import ACTIVE, COMMITTED, PENDING, VIEW, Info, MetaStore

log = logging.getLogger(__name__)


def disk_usage(path: Path, seen: set[tuple[int, int]] | None = None) -> tuple[int, int]:
    """(bytes on disk, inodes) under `path`, staying on its filesystem.

    Inodes already in `seen` (hardlinks) are counted once; `seen` is updated.
    """
    seen = set() if seen is None else seen
    try:
        top = os.lstat(path)
    except FileNotFoundError:
        return 0, 0
    size = inodes = 0
    stack = [(str(path), top)]
    while stack:
        p, st = stack.pop()
        if (st.st_dev, st.st_ino) not in seen:
            seen.add((st.st_dev, st.st_ino))
            size += st.st_blocks * 512
            inodes += 1
        if stat.S_ISDIR(st.st_mode) and st.st_dev == top.st_dev:
            with os.scandir(p) as it:
                stack.extend((e.path, e.stat(follow_symlinks=False)) for e in it)
    return size, inodes


def remove_tree(path: Path) -> None:
    """Delete `path` entirely; missing is fine. Never follows symlinks."""
    if os.path.lexists(path):
        shutil.rmtree(path)


class DirSnapshotter:
    """Implements the Snapshotter protocol except for the backend-specific hooks."""

    name = "abstract"
    whiteouts: WhiteoutMode = "native"

    def __init__(self, root: Path) -> None:
        root.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.root = root
        self._meta = MetaStore(root / "metadata.db")
        owner = self._meta.claim_kind(self.name)
        if owner != self.name:
            self._meta.close()
            raise FailedPrecondition(
                f"snapshot root {root} holds {owner} snapshots; configure the {owner} "
                f"snapshotter, or use another root for {self.name}"
            )
        self._recover()

    def close(self) -> None:
        self._meta.close()

    # --- backend hooks -------------------------------------------------------------

    def _populate(self, sid: int, parent: int | None) -> None:
        """Create the dirs of new active snapshot `sid` (its `<id>/` exists)."""
        raise NotImplementedError

    def _active_mounts(self, info: Info) -> list[Mount]:
        raise NotImplementedError

    def _view_mounts(self, parent: int) -> list[Mount]:
        raise NotImplementedError

    def _lower_paths(self, info: Info) -> list[Path]:
        """The dirs below active snapshot `info` that apply_layer must see through."""
        raise NotImplementedError

    # --- shared implementation -----------------------------------------------------

    def _dir(self, sid: int) -> Path:
        return self.root / str(sid)

    def _fs(self, sid: int) -> Path:
        return self._dir(sid) / "fs"

    def _recover(self) -> None:
        """Finish what a crash interrupted: drop pending rows and dirs without a row."""
        known = set()
        for info in self._meta.all():
            if info.kind == PENDING:
                log.warning("removing snapshot %r left incomplete by a crash", info.key)
                remove_tree(self._dir(info.id))
                self._meta.delete_id(info.id)
            else:
                known.add(str(info.id))
        for entry in os.scandir(self.root):
            if entry.name.isdigit() and entry.name not in known:
                log.warning("removing orphaned snapshot dir %s", entry.path)
                remove_tree(Path(entry.path))

    def _create(self, key: str, parent: str | None, kind: str) -> Info:
        info = self._meta.add_pending(key, parent)
        try:
            remove_tree(self._dir(info.id))
            with space_checked(self.root, f"creating snapshot {key!r}"):
                self._dir(info.id).mkdir(mode=0o700)
                if kind == ACTIVE:
                    self._populate(info.id, info.parent)
            self._meta.set_kind(info.id, kind)
        except BaseException:
            remove_tree(self._dir(info.id))
            self._meta.delete_id(info.id)
            raise
        return Info(info.id, key, info.parent, kind)

    def prepare(self, key: str, parent: str | None) -> Path:
        return self._fs(self._create(key, parent, ACTIVE).id)

    def commit(self, name: str, key: str) -> None:
        self._meta.commit(name, key)

    def remove(self, key: str) -> None:
        try:
            info = self._meta.delete(key)
        except ResourceExhausted:
            # The disk is too full even to record the removal. An uncommitted snapshot
            # (a failed extraction, a container's layer) is garbage from here on: free
            # its space, then record. A committed layer stays whole until there is room.
            info = self._meta.get(key)
            if info.kind == COMMITTED:
                raise
            remove_tree(self._dir(info.id))
            info = self._meta.delete(key)
        try:
            remove_tree(self._dir(info.id))
        except OSError as e:  # the row is gone: the next open retries the cleanup
            log.warning(
                "snapshot %r removed, but deleting %s failed: %s", key, self._dir(info.id), e
            )

    def lower_dirs(self, key: str) -> list[Path]:
        info = self._meta.get(key)
        if info.kind != ACTIVE:
            raise FailedPrecondition(
                f"snapshot {key!r} is {info.kind}: only active snapshots have a dir to extract "
                "into; prepare one"
            )
        return self._lower_paths(info)

    def exists(self, key: str) -> bool:
        return self._meta.find(key) is not None

    def parent(self, key: str) -> str | None:
        info = self._meta.get(key)
        return None if info.parent is None else self._meta.key_of(info.parent)

    def mounts(self, key: str) -> list[Mount]:
        info = self._meta.get(key)
        if info.kind == VIEW:
            assert info.parent is not None
            return self._view_mounts(info.parent)
        if info.kind != ACTIVE:
            raise FailedPrecondition(
                f"snapshot {key!r} is committed; prepare an active snapshot or a view on it "
                "to mount it"
            )
        return self._active_mounts(info)

    def view(self, key: str, parent: str) -> list[Mount]:
        info = self._create(key, parent, VIEW)
        assert info.parent is not None
        return self._view_mounts(info.parent)

    def usage(self, key: str) -> tuple[int, int]:
        return disk_usage(self._fs(self._meta.get(key).id))

    def keys(self) -> list[str]:
        return sorted(i.key for i in self._meta.all() if i.kind != PENDING)

    def total_usage(self) -> tuple[int, int]:
        seen: set[tuple[int, int]] = set()
        size = inodes = 0
        for info in self._meta.all():
            s, n = disk_usage(self._dir(info.id), seen)
            size, inodes = size + s, inodes + n
        return size, inodes

    def _lower_dirs(self, sid: int) -> list[str]:
        """fs dirs of committed `sid` and its ancestors, nearest first."""
        return [str(self._fs(i)) for i in self._meta.chain(sid)]
