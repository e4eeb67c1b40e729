"""The native snapshotter: every active snapshot is a full copy of its parent's tree.

Works on any filesystem and without mount privileges, at the cost of disk space and
time (a copy per layer; `cp --reflink=auto` shares blocks on btrfs/xfs). Layers are
extracted with native whiteouts (deletions). Mounts are bind mounts of the tree.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

from podling.errors import Internal
from podling.snapshots.base import Mount, WhiteoutMode
from podling.snapshots.metadata import Info
from podling.snapshots.store import DirSnapshotter


class NativeSnapshotter(DirSnapshotter):
    name = "native"
    whiteouts: WhiteoutMode = "native"

    def _populate(self, sid: int, parent: int | None) -> None:
        fs = self._fs(sid)
        if parent is None:
            fs.mkdir(mode=0o755)
            return
        # cp -a keeps owners, modes, times, xattrs, hardlinks, devices and sparse files.
        proc = subprocess.run(
            ["cp", "-a", "--reflink=auto", "--", str(self._fs(parent)), str(fs)],
            capture_output=True,
            text=True,
            check=False,
        )
        if proc.returncode != 0:
            raise Internal(
                f"copying snapshot tree {self._fs(parent)} failed: {proc.stderr.strip()}; "
                "check free space in the snapshot root"
            )

    def _active_mounts(self, info: Info) -> list[Mount]:
        return [Mount("bind", str(self._fs(info.id)), ("rbind", "rw"))]

    def _view_mounts(self, parent: int) -> list[Mount]:
        return [Mount("bind", str(self._fs(parent)), ("rbind", "ro"))]

    def _lower_paths(self, info: Info) -> list[Path]:
        return []  # the active dir is a full copy of its parent's tree
