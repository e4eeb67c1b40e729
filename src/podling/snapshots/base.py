"""The snapshotter contract: how image layers become mountable root filesystems.

Vocabulary (as in containerd):
- key: the caller's name for a snapshot; unique among all snapshots of a snapshotter.
- active snapshot: writable; made by `prepare(key, parent)`. An image pull extracts one
  layer into it, a container uses one as its rootfs.
- committed snapshot: read-only and immutable; made by `commit(name, key)` from an active
  one. Image layers are committed under their chain id ("sha256:..."), so identical
  layer stacks are shared between images.
- view: a read-only snapshot of a committed snapshot's full tree (`view(key, parent)`),
  e.g. to read an image's /etc/passwd. Removed like any other snapshot.
- parent chain: a committed snapshot's parent, its parent's parent, ... down to the base
  layer. Only committed snapshots can be parents; a snapshot with children cannot be removed.

Errors: NotFound (unknown key), AlreadyExists (key or name taken), FailedPrecondition
(wrong kind for the operation, or removing a snapshot that has children).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Protocol

WhiteoutMode = Literal["overlay", "native"]


@dataclass(frozen=True)
class Mount:
    """One mount(2) to perform: `type` is "overlay" or "bind"; options as in fstab."""

    type: str
    source: str
    options: tuple[str, ...]


class Snapshotter(Protocol):
    name: str  # "overlayfs" or "native"
    whiteouts: WhiteoutMode  # what apply_layer must write into a prepared dir

    def prepare(self, key: str, parent: str | None) -> Path:
        """Create active snapshot `key` on committed `parent`; returns the dir to fill.

        overlayfs: an empty upper dir (extract with overlay whiteouts);
        native: a full copy of the parent's tree (extract with native whiteouts).
        """
        ...

    def lower_dirs(self, key: str) -> list[Path]:
        """Dirs of active snapshot `key`'s committed parent chain, nearest parent first.

        What apply_layer needs to resolve paths through the layers below a prepared dir:
        overlayfs: the parents' upper dirs ([] for a base layer); native: always [] (the
        prepared dir is a full copy). NotFound if unknown, FailedPrecondition if `key` is
        not an active snapshot.
        """
        ...

    def commit(self, name: str, key: str) -> None:
        """Active `key` becomes committed `name` (AlreadyExists if `name` is taken)."""
        ...

    def remove(self, key: str) -> None:
        """Remove any snapshot; FailedPrecondition if it has children, NotFound if unknown."""
        ...

    def exists(self, key: str) -> bool: ...

    def parent(self, key: str) -> str | None:
        """Key of the parent snapshot, None for a base layer; NotFound if unknown."""
        ...

    def mounts(self, key: str) -> list[Mount]:
        """How to mount active (or view) snapshot `key` as a root filesystem."""
        ...

    def view(self, key: str, parent: str) -> list[Mount]:
        """Create view `key` of committed `parent`; returns its read-only mounts."""
        ...

    def usage(self, key: str) -> tuple[int, int]:
        """(bytes on disk, inodes) of the snapshot's own dir (not its parents)."""
        ...

    def keys(self) -> list[str]: ...

    def total_usage(self) -> tuple[int, int]:
        """(bytes on disk, inodes) of all snapshots together (hardlinks counted once)."""
        ...

    def close(self) -> None:
        """Release the metadata database; the snapshotter is unusable afterwards."""
        ...
