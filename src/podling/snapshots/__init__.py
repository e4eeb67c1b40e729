"""Snapshotters: turn extracted image layers into mountable root filesystems.

`create_snapshotter(root, preferred)` picks the backend: "overlayfs" (falls back to
"native", with a warning, when an overlay mount test in `root` fails) or "native".
"""

from __future__ import annotations

import logging
from pathlib import Path

from podling.errors import FailedPrecondition, InvalidArgument
from podling.snapshots.base import Mount, Snapshotter, WhiteoutMode
from podling.snapshots.metadata import MetaStore
from podling.snapshots.native import NativeSnapshotter
from podling.snapshots.overlay import OverlaySnapshotter, probe_overlay

log = logging.getLogger(__name__)

SNAPSHOTTERS = ("overlayfs", "native")


def create_snapshotter(root: Path, preferred: str = "overlayfs") -> Snapshotter:
    """Open (creating if needed) the snapshotter `preferred` in `root`.

    "overlayfs" falls back to "native" with a warning when overlay mounts fail in `root`,
    and keeps using "native" for a root that already holds native snapshots (from an
    earlier fallback). InvalidArgument for an unknown name; FailedPrecondition when
    `root` holds overlayfs snapshots but overlayfs is unusable or "native" was asked for.
    """
    if preferred not in SNAPSHOTTERS:
        raise InvalidArgument(
            f"unknown snapshotter {preferred!r}: choose one of {', '.join(SNAPSHOTTERS)}"
        )
    if preferred == "native":
        return NativeSnapshotter(root)
    recorded = _recorded_kind(root)
    if recorded == "native":
        log.warning(
            "%s holds native snapshots, so the native snapshotter is used; remove it "
            "(all images are pulled again) to switch to overlayfs",
            root,
        )
        return NativeSnapshotter(root)
    reason = probe_overlay(root)
    if reason is None:
        return OverlaySnapshotter(root)
    if recorded == "overlayfs":
        raise FailedPrecondition(
            f"{root} holds overlayfs snapshots but overlay mounts fail there ({reason}); "
            "fix overlayfs support or use another snapshot root"
        )
    log.warning(
        "overlayfs does not work in %s (%s); falling back to the native snapshotter, "
        "which copies every layer (slower, more disk)",
        root,
        reason,
    )
    return NativeSnapshotter(root)


def _recorded_kind(root: Path) -> str | None:
    db = root / "metadata.db"
    if not db.exists():
        return None
    meta = MetaStore(db)
    try:
        return meta.owner()
    finally:
        meta.close()


__all__ = [
    "Mount",
    "NativeSnapshotter",
    "OverlaySnapshotter",
    "Snapshotter",
    "WhiteoutMode",
    "create_snapshotter",
]
