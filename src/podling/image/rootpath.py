"""Resolve paths inside a snapshot as if it were `/` (chroot semantics), with overlay lowers.

A layer entry's parent components are resolved the way containerd and Docker resolve
them: every symlink met is followed, an absolute target is taken relative to the root,
and `..` never climbs above the root (it is clamped there). At most `MAX_SYMLINKS`
links are followed per path. The walk is lexical (lstat and readlink, component by
component), so nothing outside the root is ever opened, and the result is a list of
components that are real directories (or missing) below the root: writing there can
never land outside it. This relies on nothing but the caller modifying the root while
it is being extracted (a snapshot being extracted is private to its caller).

In overlay mode the root is only the upper dir; the parent dirs may live in committed
lower dirs (nearest first). `RootView` then looks names up as overlayfs would: in the
root first, then in each lower, where a 0/0 char device (whiteout) hides what is below
it, a non-directory hides everything below it, and an opaque directory
(`trusted.overlay.opaque=y`) stops the search below it. A directory that exists only in
a lower is created in the root on demand with the lower's mode, owner, times and xattrs
(what overlayfs copy-up does). Lowers are never written.
"""

from __future__ import annotations

import errno
import logging
import os
import stat
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from podling.errors import FailedPrecondition, UnsafeContent

log = logging.getLogger(__name__)

MAX_SYMLINKS = 255
OVERLAY_OPAQUE_XATTR = "trusted.overlay.opaque"


def lstat_or_none(path: Path) -> os.stat_result | None:
    """lstat, or None when the path (or one of its parents) does not exist."""
    try:
        return os.lstat(path)
    except (FileNotFoundError, NotADirectoryError):
        return None


def is_whiteout(st: os.stat_result) -> bool:
    """An overlayfs whiteout: a character device with device number 0/0."""
    return stat.S_ISCHR(st.st_mode) and st.st_rdev == os.makedev(0, 0)


def is_opaque(path: Path) -> bool:
    try:
        return os.getxattr(path, OVERLAY_OPAQUE_XATTR, follow_symlinks=False) == b"y"
    except OSError:  # no such xattr, or (non-root) no access to the trusted namespace
        return False


def set_opaque(path: Path, name: str) -> None:
    """Mark dir `path` opaque for overlayfs; FailedPrecondition without CAP_SYS_ADMIN."""
    try:
        os.setxattr(path, OVERLAY_OPAQUE_XATTR, b"y", follow_symlinks=False)
    except PermissionError as e:
        raise FailedPrecondition(
            f"layer entry {name!r}: setting {OVERLAY_OPAQUE_XATTR} needs CAP_SYS_ADMIN; run "
            "as root or use the native snapshotter"
        ) from e


@dataclass(frozen=True)
class Found:
    """The visible entry for a path: where it lives and its lstat."""

    path: Path
    st: os.stat_result
    in_root: bool = False  # in the writable root, not in a lower


class LowerView:
    """The merged read-only view of lower dirs (nearest first), memoised.

    Lowers are committed snapshots, immutable while a layer is extracted, so lookups can
    be cached for the life of the view.
    """

    def __init__(self, lowers: Sequence[Path]) -> None:
        # For each merged dir: the lower dirs that make it up, top first.
        self._dirs: dict[tuple[str, ...], list[Path]] = {(): list(lowers)}
        self._found: dict[tuple[str, ...], Found | None] = {}

    def lookup(self, parts: tuple[str, ...]) -> Found | None:
        """The visible entry at `parts` (non-empty), or None if there is none."""
        if parts not in self._found:
            self._found[parts] = self._merge(self._sources(parts[:-1]), parts)
        return self._found[parts]

    def _sources(self, parts: tuple[str, ...]) -> list[Path]:
        """Lower dirs making up merged dir `parts`; [] if it is not a directory."""
        known = len(parts)
        while parts[:known] not in self._dirs:
            if parts[:known] in self._found:  # looked up before: missing or not a dir
                return []
            known -= 1
        for i in range(known + 1, len(parts) + 1):
            self.lookup(parts[:i])
            if parts[:i] not in self._dirs:
                return []
        return self._dirs[parts]

    def _merge(self, sources: list[Path], parts: tuple[str, ...]) -> Found | None:
        top: Found | None = None
        below: list[Path] = []
        for src in sources:
            path = src / parts[-1]
            st = lstat_or_none(path)
            if st is None:
                continue
            if is_whiteout(st) or (top is not None and not stat.S_ISDIR(st.st_mode)):
                break  # hides this name in everything further down
            top = top or Found(path, st)
            if not stat.S_ISDIR(st.st_mode):
                break
            below.append(path)
            if is_opaque(path):
                break
        if below:
            self._dirs[parts] = below
        return top


@dataclass
class _Level:
    present: bool  # the dir exists in the merged view
    lowers_visible: bool  # lower dirs may still contribute below it


class RootView:
    """`root` (writable) over `lowers` (read-only, nearest first); see the module doc.

    `overlay` says whether 0/0 char devices and opaque xattrs in `root` are overlayfs
    markers (overlay extraction) or ordinary content (native extraction, no lowers).
    Dirs copied up from lowers get mode 0700 at first, so children can be added; their
    lower's mode and times are in `copied_up` (relative path -> lstat) for the caller to
    apply once the layer is written.
    """

    def __init__(self, root: Path, lowers: Sequence[Path], *, overlay: bool) -> None:
        self.root = root
        self._overlay = overlay
        self._lower = LowerView(lowers) if lowers else None
        self._as_root = os.geteuid() == 0
        self.copied_up: dict[str, os.stat_result] = {}

    def _top_visible(self) -> bool:
        return self._lower is not None and not is_opaque(self.root)

    def find(self, parts: Sequence[str], lowers_visible: bool) -> Found | None:
        """The merged-view entry at `parts`, given whether the lowers show below its parent."""
        path = self.root.joinpath(*parts)
        st = lstat_or_none(path)
        if st is not None:
            return None if self._overlay and is_whiteout(st) else Found(path, st, True)
        if lowers_visible and self._lower is not None:
            return self._lower.lookup(tuple(parts))
        return None

    def resolve(self, name: str, parts: Sequence[str]) -> tuple[list[str], bool]:
        """Resolve dir path `parts` in-root; returns (real components, whether it exists).

        Every component of the result is a directory, or missing, in the merged view.
        UnsafeContent for a non-directory in the path or more than MAX_SYMLINKS links;
        `name` is the tar entry, for messages.
        """
        todo = list(reversed(parts))
        out: list[str] = []
        levels = [_Level(True, self._top_visible())]
        links = 0
        while todo:
            comp = todo.pop()
            if comp in ("", "."):
                continue
            if comp == "..":
                if out:
                    out.pop()
                    levels.pop()
                continue
            found = (
                self.find([*out, comp], levels[-1].lowers_visible) if levels[-1].present else None
            )
            if found is not None and stat.S_ISLNK(found.st.st_mode):
                links += 1
                if links > MAX_SYMLINKS:
                    raise UnsafeContent(
                        f"layer entry {name!r}: too many levels of symbolic links (more than "
                        f"{MAX_SYMLINKS}): the image has a symlink loop or an over-long link chain"
                    )
                target = os.readlink(found.path)
                if target.startswith("/"):
                    del out[:], levels[1:]
                todo.extend(reversed(target.split("/")))
                continue
            if found is not None and not stat.S_ISDIR(found.st.st_mode):
                raise UnsafeContent(
                    f"layer entry {name!r}: {'/'.join([*out, comp])} is not a directory"
                )
            out.append(comp)
            levels.append(self._level_below(found, levels[-1]))
        return out, levels[-1].present

    def _level_below(self, found: Found | None, parent: _Level) -> _Level:
        if found is None:
            return _Level(False, False)
        visible = parent.lowers_visible and not (found.in_root and is_opaque(found.path))
        return _Level(True, visible)

    def existing_dir(self, parts: Sequence[str]) -> Path | None:
        """root/parts if each component is a real directory in root (no symlinks), else None."""
        cur = self.root
        for comp in parts:
            cur = cur / comp
            st = lstat_or_none(cur)
            if st is None or not stat.S_ISDIR(st.st_mode):
                return None
        return cur

    def ensure_dir(self, name: str, parts: Sequence[str]) -> Path:
        """Create resolved dir path `parts` in root (copying up from lowers); returns it.

        `parts` must come from `resolve`. Each component is checked with lstat right
        before use: a symlink or non-directory there raises UnsafeContent.
        """
        cur = self.root
        visible = self._top_visible()
        for i, comp in enumerate(parts):
            cur = cur / comp
            st = lstat_or_none(cur)
            if st is not None and self._overlay and is_whiteout(st):
                os.unlink(cur)  # a dir over this layer's whiteout: nothing below shows
                self._mkdir(cur, None, "")
                set_opaque(cur, name)
                visible = False
            elif st is None:
                src = self._lower.lookup(tuple(parts[: i + 1])) if self._lower and visible else None
                self._mkdir(cur, src, "/".join(parts[: i + 1]))
                visible = visible and src is not None
            elif not stat.S_ISDIR(st.st_mode):
                what = "a symlink" if stat.S_ISLNK(st.st_mode) else "not a directory"
                raise UnsafeContent(
                    f"layer entry {name!r}: {cur.relative_to(self.root)} is {what}; refusing"
                )
            elif visible and is_opaque(cur):
                visible = False
        return cur

    def _mkdir(self, path: Path, src: Found | None, rel: str) -> None:
        if src is None or not stat.S_ISDIR(src.st.st_mode):
            os.mkdir(path)
            os.chmod(path, 0o755)  # implicit parent: fixed mode, whatever the umask
            return
        os.mkdir(path, 0o700)  # the lower's mode is applied last (see copied_up)
        if self._as_root:
            os.lchown(path, src.st.st_uid, src.st.st_gid)
        _copy_xattrs(src.path, path)
        self.copied_up[rel] = src.st


def _copy_xattrs(src: Path, dst: Path) -> None:
    """Copy xattrs as overlayfs copy-up does: all but overlayfs' own, best effort for security.*."""
    try:
        names = os.listxattr(src, follow_symlinks=False)
    except OSError as e:
        if e.errno in (errno.ENOTSUP, errno.EOPNOTSUPP):
            return
        raise
    for xname in names:
        if xname.startswith("trusted.overlay."):
            continue
        try:
            value = os.getxattr(src, xname, follow_symlinks=False)
            os.setxattr(dst, xname, value, follow_symlinks=False)
        except OSError as e:
            if xname.startswith(("security.", "trusted.")) and e.errno in (
                errno.EPERM,
                errno.EOPNOTSUPP,
                errno.ENODATA,
            ):
                log.debug("copy-up of %s: skipping xattr %s: %s", dst, xname, e)
                continue
            raise
