"""The overlayfs snapshotter: each snapshot stores only its own layer's changes.

An active snapshot is an empty upper dir (`<id>/fs`) plus a workdir (`<id>/work`);
mounted, it is an overlay whose lowerdir is the parent chain, nearest parent first.
Layers are extracted with overlay whiteouts (0/0 char devices, trusted.overlay.opaque),
so extraction needs root. A snapshot without parents mounts as a plain bind mount;
a view of a one-layer chain is a read-only bind mount (overlayfs needs two lowers when
there is no upper dir).
"""

from __future__ import annotations

import os
import shutil
import stat
import tempfile
from pathlib import Path

from podling.errors import PodlingError
from podling.oslib.mount import mount, unmount
from podling.snapshots.base import Mount, WhiteoutMode
from podling.snapshots.metadata import Info
from podling.snapshots.store import DirSnapshotter


class OverlaySnapshotter(DirSnapshotter):
    name = "overlayfs"
    whiteouts: WhiteoutMode = "overlay"

    def _populate(self, sid: int, parent: int | None) -> None:
        self._fs(sid).mkdir(mode=0o755)
        (self._dir(sid) / "work").mkdir(mode=0o700)

    def _active_mounts(self, info: Info) -> list[Mount]:
        fs = str(self._fs(info.id))
        if info.parent is None:
            return [Mount("bind", fs, ("rbind", "rw"))]
        work = str(self._dir(info.id) / "work")
        lowers = ":".join(self._lower_dirs(info.parent))
        return [
            Mount("overlay", "overlay", (f"workdir={work}", f"upperdir={fs}", f"lowerdir={lowers}"))
        ]

    def _lower_paths(self, info: Info) -> list[Path]:
        return [] if info.parent is None else [Path(d) for d in self._lower_dirs(info.parent)]

    def _view_mounts(self, parent: int) -> list[Mount]:
        lowers = self._lower_dirs(parent)
        if len(lowers) == 1:
            return [Mount("bind", lowers[0], ("rbind", "ro"))]
        return [Mount("overlay", "overlay", ("ro", f"lowerdir={':'.join(lowers)}"))]


def probe_overlay(root: Path) -> str | None:
    """Check that overlayfs with whiteouts works in `root`; None if so, else why not.

    Mounts a two-lower overlay whose upper dir whites out one lower file, in a temporary
    dir under `root` that is always unmounted and removed afterwards.
    """
    root.mkdir(mode=0o700, parents=True, exist_ok=True)
    probe = Path(tempfile.mkdtemp(prefix=".probe-", dir=root))
    merged = probe / "merged"
    try:
        for d in ("l1", "l2", "upper", "work", "merged"):
            (probe / d).mkdir()
        (probe / "l1" / "kept").write_bytes(b"ok")
        (probe / "l2" / "hidden").write_bytes(b"no")
        os.mknod(probe / "upper" / "hidden", stat.S_IFCHR | 0o600, os.makedev(0, 0))
        opts = (f"lowerdir={probe / 'l1'}:{probe / 'l2'}", f"upperdir={probe / 'upper'}")
        mount(Mount("overlay", "overlay", (*opts, f"workdir={probe / 'work'}")), merged)
        try:
            names = sorted(os.listdir(merged))
        finally:
            unmount(merged, detach=True)
        return None if names == ["kept"] else f"unexpected merged view {names}"
    except (OSError, PodlingError) as e:
        return str(e)
    finally:
        shutil.rmtree(probe, ignore_errors=True)
