"""Root filesystems and image volumes for containers of a pod with a user namespace.

The image layers stay as they are on disk (owned by host ids, shared by every pod): each
lower dir of the snapshot's overlay mount is first bound, id-mapped through the pod's
user namespace, on a scratch dir, and the overlay is stacked on those binds (overlayfs
cannot be id-mapped itself, its layers can). overlayfs keeps private clones of its
layers, so the scratch binds are detached right after. The writable upper dir is a plain
dir given to the container's root (chowned to its host uid and gid), so what the
container writes is owned, on disk, by the pod's host ids.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

from podling.errors import Internal
from podling.oslib.mount import bind_idmapped, mount, unmount
from podling.snapshots.base import Mount


def mount_idmapped(
    mounts: list[Mount], target: Path, userns: Path, scratch: Path, root: tuple[int, int]
) -> None:
    """Mount the snapshot `mounts` on `target` as the user namespace `userns` sees them.

    `scratch` is a dir this function may create and removes again; `root` the host uid
    and gid of the container's root, which gets the writable upper dir."""
    for m in mounts:
        if m.type == "bind":
            bind_idmapped(Path(m.source), target, userns, readonly="ro" in m.options)
        elif m.type == "overlay":
            _overlay(m, target, userns, scratch, root)
        else:
            raise Internal(f"cannot id-map a {m.type} mount of {m.source}")


def _overlay(m: Mount, target: Path, userns: Path, scratch: Path, root: tuple[int, int]) -> None:
    options = dict(o.partition("=")[::2] for o in m.options)
    lowers = options.get("lowerdir", "").split(":")
    scratch.mkdir(exist_ok=True)
    binds: list[Path] = []
    try:
        for i, lower in enumerate(lowers):
            binds.append(scratch / str(i))
            binds[-1].mkdir()
            bind_idmapped(Path(lower), binds[-1], userns, readonly=True)
        upper = options.get("upperdir")
        if upper:
            os.chown(upper, *root)
        mapped = [o for o in m.options if not o.startswith("lowerdir=")]
        mapped.append("lowerdir=" + ":".join(str(b) for b in binds))
        mount(Mount("overlay", m.source, tuple(mapped)), target)
    finally:
        _release(binds, scratch)


def _release(binds: list[Path], scratch: Path) -> None:
    for b in binds:
        unmount(b, detach=True)
        with contextlib.suppress(FileNotFoundError):
            b.rmdir()
    scratch.rmdir()
