"""Streaming, hostile-input-safe extraction of OCI/Docker layer tarballs into a snapshot dir.

Contract of `apply_layer`:
- Nothing is ever created, changed or deleted outside `dest`, and lower dirs are only
  read. Entry names are cleaned lexically (a leading "/" means "relative to dest", as in
  containerd); a name whose `..` climbs above dest is refused.
- Parent components of entries, hardlink targets and whiteouts are resolved inside dest
  as if it were `/` (see rootpath.py): symlinks are followed, absolute targets are taken
  relative to dest and `..` is clamped at dest, as containerd and Docker do. So a layer
  may write through in-tree links (`lib -> usr/lib`, then `lib/x` lands in `usr/lib/x`),
  and a link pointing outside (`link -> /etc`) resolves inside dest (`dest/etc/...`).
  The last component is never followed: an entry replaces a symlink at its own name.
  The checks assume nothing else modifies `dest` meanwhile (a snapshot being extracted
  is private to its caller).
- Overlay mode: `lowers` are the committed dirs under `dest` (nearest first); parents
  are looked up through them as overlayfs shows them, and a parent that exists only in
  a lower is copied up into dest (mode, owner, times, xattrs) before use.
- The whole stream is consumed, so `diff_id` covers the tar including its end padding.
- Duplicates: the later entry wins; a directory over an existing directory only updates
  its metadata; anything else replaces what was there.
- Whiteouts: "native" deletes the named path (opaque markers delete every lower-layer
  child of the dir but keep this layer's entries, whatever their order in the tar);
  "overlay" writes overlayfs whiteouts (0/0 char devices, `trusted.overlay.opaque=y`).
  Whiteouts under a dir that does not exist (in dest or the lowers) do nothing.
- Device nodes are created with mknod when permitted (root) and skipped with a warning
  when not (non-root, user namespaces). FIFOs are always created. Ownership is applied
  only when running as root. Layers cannot set `trusted.overlay.*` xattrs (skipped).

Errors: InvalidArgument (unknown media type, bad dest, lowers without overlay mode);
DataLoss (corrupt or truncated gzip/zstd/tar); UnsafeContent (`..` escapes, symlink
loops, a non-directory used as a parent, hardlinks to missing targets, unsupported
entry types, more than `max_bytes` of tar); FailedPrecondition (overlay whiteouts or
xattrs the filesystem refuses); ResourceExhausted (disk full); Internal (other OS
errors). On any error `dest` may be half-written but can always be removed by the caller.
"""

from __future__ import annotations

import errno
import logging
import os
import shutil
import stat
import tarfile
from collections.abc import Sequence
from pathlib import Path
from typing import BinaryIO, Literal

from podling.diskspace import exhausted, is_full
from podling.errors import (
    DataLoss,
    FailedPrecondition,
    Internal,
    InvalidArgument,
    PodlingError,
    UnsafeContent,
)
from podling.image.decode_thread import DecodedLayer
from podling.image.layer_stream import GuardedInfo, Meter, UnpackResult, open_layer
from podling.image.rootpath import RootView, is_whiteout, lstat_or_none, set_opaque

log = logging.getLogger(__name__)

WhiteoutMode = Literal["overlay", "native"]
WHITEOUT_PREFIX = ".wh."
OPAQUE_MARKER = ".wh..wh..opq"
# File contents are copied in pieces well under 1 MiB: tarfile and BufferedReader make
# a fresh buffer of the piece size per read, and 1 MiB ones cost page faults every time
# (measured: 1.4 s of CPU per 600 MB at 1 MiB, 0.2 s at 256 KiB).
_COPY = 1 << 18

__all__ = ["UnpackResult", "WhiteoutMode", "apply_layer", "open_layer"]


def apply_layer(
    stream: BinaryIO | DecodedLayer,
    dest: Path,
    *,
    whiteouts: WhiteoutMode,
    max_bytes: int,
    lowers: Sequence[Path] = (),
) -> UnpackResult:
    """Extract the uncompressed tar `stream` into `dest` (see the module docstring).

    `stream` is what `open_layer` yields (decoded and hashed in its own thread) or any
    readable uncompressed tar stream (hashed in this thread).

    `lowers` (overlay mode only) are the dirs of the committed layers below `dest`,
    nearest first; they are used to resolve parent directories and are never written.
    """
    st = lstat_or_none(dest)
    if st is None or not stat.S_ISDIR(st.st_mode):
        raise InvalidArgument(f"cannot unpack into {dest}: not an existing directory")
    if lowers and whiteouts != "overlay":
        raise InvalidArgument(
            "lower dirs only apply to overlay extraction; native snapshots are full trees"
        )
    meter = Meter(stream, max_bytes)
    extractor = _Extractor(dest, whiteouts, lowers, max_bytes)
    try:
        with tarfile.open(fileobj=meter, mode="r|", tarinfo=GuardedInfo) as tar:
            while (member := tar.next()) is not None:
                vars(tar)["members"].clear()  # stream mode would keep every member (memory)
                extractor.apply(member, tar)
            end = tar.offset
    except tarfile.TarError as e:
        raise DataLoss(f"layer is not a valid tar stream ({e}); delete it and pull again") from e
    meter.check_trailer(end)
    meter.drain()
    extractor.finish()
    return meter.result()


def _clean(name: str) -> list[str]:
    """Lexically clean a tar name into components below dest; UnsafeContent if it escapes."""
    if "\x00" in name:
        raise UnsafeContent(f"layer entry {name!r} contains a NUL byte")
    parts: list[str] = []
    for comp in name.split("/"):
        if comp in ("", "."):
            continue
        if comp != "..":
            parts.append(comp)
        elif parts:
            parts.pop()
        else:
            raise UnsafeContent(f"layer entry {name!r} escapes the snapshot through '..'")
    return parts


def _remove(path: Path) -> None:
    """Delete whatever is at `path` (never following a symlink)."""
    st = lstat_or_none(path)
    if st is None:
        return
    if stat.S_ISDIR(st.st_mode):
        shutil.rmtree(path)
    else:
        os.unlink(path)


class _Extractor:
    """Applies tar members one by one; directory modes and times are set in `finish`.

    Paths are tracked as resolved relative paths ("usr/lib/x", "" for the root): the
    real location an entry was written to, whatever symlinks its name went through.
    """

    def __init__(
        self, root: Path, whiteouts: WhiteoutMode, lowers: Sequence[Path], max_bytes: int
    ) -> None:
        self.root = root
        # File bytes written so far. The stream meter cannot see them all: a sparse
        # entry expands its holes to zeros, so a tiny tar can declare terabytes.
        self.budget = max_bytes
        self.written = 0
        self.overlay = whiteouts == "overlay"
        self.view = RootView(root, lowers, overlay=self.overlay)
        self.as_root = os.geteuid() == 0
        self.touched: set[str] = set()  # paths this layer wrote, with all their ancestors
        self.dirs: dict[str, tuple[int, float]] = {}  # dir -> (mode, mtime) from its entry

    def apply(self, m: tarfile.TarInfo, tar: tarfile.TarFile) -> None:
        parts = _clean(m.name)
        if len(parts) > 1 and parts[0].startswith(WHITEOUT_PREFIX * 2):
            return  # inside aufs metadata dirs (.wh..wh.plnk/...): not part of the rootfs
        try:
            if parts and parts[-1].startswith(WHITEOUT_PREFIX):
                self._whiteout(m.name, parts)
            else:
                self._entry(m, parts, tar)
        except OSError as e:
            raise _os_error(m.name, e, self.root) from e
        except (ValueError, OverflowError) as e:  # NUL in a link name, absurd times or ids
            raise UnsafeContent(f"layer entry {m.name!r} has invalid metadata: {e}") from e

    def _touch(self, parts: list[str]) -> None:
        for i in range(len(parts) + 1):
            self.touched.add("/".join(parts[:i]))

    def _entry(self, m: tarfile.TarInfo, parts: list[str], tar: tarfile.TarFile) -> None:
        if not parts:
            if not m.isdir():
                raise UnsafeContent(f"layer entry {m.name!r} would replace the snapshot root")
            self._touch([])
            self._directory(m, [], self.root)
            return
        parent_parts, _ = self.view.resolve(m.name, parts[:-1])
        path = self.view.ensure_dir(m.name, parent_parts) / parts[-1]
        resolved = [*parent_parts, parts[-1]]
        self._touch(resolved)
        if m.isdir():
            self._directory(m, resolved, path)
        elif m.islnk():
            self._hardlink(m, resolved, path)
        else:
            self._leaf(m, path, tar)

    def _directory(self, m: tarfile.TarInfo, parts: list[str], path: Path) -> None:
        st = lstat_or_none(path)
        over_whiteout = False
        if st is not None and not stat.S_ISDIR(st.st_mode):
            over_whiteout = self.overlay and is_whiteout(st)
            os.unlink(path)
            st = None
        if st is None:
            os.mkdir(path, 0o700)  # final mode in finish(), so children can be added first
            if over_whiteout:  # this layer deleted the lower dir: do not merge with it
                set_opaque(path, m.name)
        if self.as_root:
            os.lchown(path, m.uid, m.gid)
        self._xattrs(path, m)
        self.dirs["/".join(parts)] = (m.mode & 0o7777, m.mtime)

    def _hardlink(self, m: tarfile.TarInfo, parts: list[str], path: Path) -> None:
        target_parts = _clean(m.linkname)
        target = None
        if target_parts:
            tparent, exists = self.view.resolve(m.name, target_parts[:-1])
            tdir = self.view.existing_dir(tparent) if exists else None
            if tdir is not None and [*tparent, target_parts[-1]] != parts:
                target = tdir / target_parts[-1]
        st = None if target is None else lstat_or_none(target)
        if (
            target is None
            or st is None
            or stat.S_ISDIR(st.st_mode)
            or (self.overlay and is_whiteout(st))
        ):
            raise UnsafeContent(
                f"layer hardlink {m.name!r} -> {m.linkname!r}: the target is not a file "
                "already extracted inside the snapshot"
            )
        _remove(path)
        os.link(target, path, follow_symlinks=False)

    def _leaf(self, m: tarfile.TarInfo, path: Path, tar: tarfile.TarFile) -> None:
        _remove(path)
        if m.isreg():
            self._file(m, path, tar)
        elif m.issym():
            if not m.linkname:  # symlink(2) refuses it: ENOENT
                raise UnsafeContent(f"layer symlink {m.name!r} has an empty target")
            os.symlink(m.linkname, path)
            self._meta(path, m, chmod=False)
        elif m.ischr() or m.isblk() or m.isfifo():
            self._special(m, path)
        else:
            raise UnsafeContent(f"layer entry {m.name!r} has unsupported tar type {m.type!r}")

    def _file(self, m: tarfile.TarInfo, path: Path, tar: tarfile.TarFile) -> None:
        self.written += m.size  # a sparse entry's size is its expanded size
        if self.written > self.budget:
            raise UnsafeContent(
                f"layer entry {m.name!r}: the layer's files expand to more than {self.budget} "
                "bytes (sparse entries count expanded): refusing a possible decompression bomb"
            )
        src = tar.extractfile(m)
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        with os.fdopen(os.open(path, flags, 0o600), "wb") as out:
            if src is not None:
                shutil.copyfileobj(src, out, _COPY)
        self._meta(path, m)

    def _special(self, m: tarfile.TarInfo, path: Path) -> None:
        if m.isfifo():
            os.mkfifo(path, 0o600)
        else:
            kind = stat.S_IFCHR if m.ischr() else stat.S_IFBLK
            try:
                os.mknod(path, kind | 0o600, os.makedev(m.devmajor, m.devminor))
            except PermissionError:
                log.warning("skipping device node %s: creating it needs CAP_MKNOD", m.name)
                return
        self._meta(path, m)

    def _meta(self, path: Path, m: tarfile.TarInfo, *, chmod: bool = True) -> None:
        # Order matters: chown clears setuid bits and file capabilities, so it goes first.
        if self.as_root:
            os.lchown(path, m.uid, m.gid)
        if chmod:
            os.chmod(path, m.mode & 0o7777)
        self._xattrs(path, m)
        os.utime(path, (m.mtime, m.mtime), follow_symlinks=False)

    def _xattrs(self, path: Path, m: tarfile.TarInfo) -> None:
        for key, value in m.pax_headers.items():
            if not key.startswith("SCHILY.xattr."):
                continue
            name = key[len("SCHILY.xattr.") :]
            if name.startswith("trusted.overlay."):
                log.warning("layer entry %s: ignoring overlayfs-private xattr %s", m.name, name)
                continue
            try:
                os.setxattr(
                    path, name, value.encode("utf-8", "surrogateescape"), follow_symlinks=False
                )
            except OSError as e:
                if name.startswith("security.") and e.errno in (errno.EPERM, errno.EOPNOTSUPP):
                    log.debug("layer entry %s: skipping xattr %s: %s", m.name, name, e)
                    continue
                raise FailedPrecondition(
                    f"layer entry {m.name!r}: cannot set xattr {name} ({e.strerror}); the "
                    "snapshot filesystem must support it"
                ) from e

    def _whiteout(self, name: str, parts: list[str]) -> None:
        base = parts[-1]
        if base == OPAQUE_MARKER:
            self._opaque(name, parts[:-1])
            return
        if base.startswith(WHITEOUT_PREFIX * 2):
            return  # other aufs metadata (e.g. .wh..wh.plnk): meaningless here
        target = base[len(WHITEOUT_PREFIX) :]
        if target in ("", ".", ".."):
            raise UnsafeContent(f"layer whiteout {name!r} names no valid entry")
        parent = self._whiteout_dir(name, parts[:-1])
        if parent is None:
            return  # nothing below to hide
        _remove(parent / target)
        if self.overlay:
            self._overlay_whiteout(name, parent / target)

    def _whiteout_dir(self, name: str, dir_parts: list[str]) -> Path | None:
        """The real dir a whiteout acts in (copied up in overlay mode); None if none exists."""
        resolved, exists = self.view.resolve(name, dir_parts)
        if not exists:
            return None
        if self.overlay:
            return self.view.ensure_dir(name, resolved)
        return self.view.existing_dir(resolved)

    def _overlay_whiteout(self, name: str, path: Path) -> None:
        try:
            os.mknod(path, stat.S_IFCHR | 0o600, os.makedev(0, 0))
        except PermissionError as e:
            raise FailedPrecondition(
                f"layer whiteout {name!r}: overlay whiteouts need CAP_MKNOD; run as root or "
                "use the native snapshotter"
            ) from e

    def _opaque(self, name: str, dir_parts: list[str]) -> None:
        path = self._whiteout_dir(name, dir_parts)
        if path is None:
            return
        if self.overlay:
            set_opaque(path, name)
        else:
            rel = path.relative_to(self.root).as_posix()
            self._prune(path, "" if rel == "." else rel)

    def _prune(self, path: Path, rel: str) -> None:
        """Delete everything under dir `path` that this layer did not write."""
        with os.scandir(path) as it:
            children = list(it)
        for child in children:
            child_rel = f"{rel}/{child.name}" if rel else child.name
            if child_rel not in self.touched:
                _remove(Path(child.path))
            elif child.is_dir(follow_symlinks=False):
                self._prune(Path(child.path), child_rel)

    def finish(self) -> None:
        """Set directory modes and times, deepest first (adding children changed them).

        Dirs copied up from lowers get their lower's mode and times back, unless this
        layer has an entry for them. A dir replaced later in the layer is skipped.
        """
        final = {
            rel: (stat.S_IMODE(st.st_mode), st.st_atime, st.st_mtime)
            for rel, st in self.view.copied_up.items()
        }
        final.update((rel, (mode, mtime, mtime)) for rel, (mode, mtime) in self.dirs.items())
        for rel in sorted(final, key=lambda r: r.count("/") + bool(r), reverse=True):
            path = self.view.existing_dir(rel.split("/") if rel else [])
            if path is None:  # removed, or replaced by a symlink or file later in this layer
                continue
            mode, atime, mtime = final[rel]
            try:
                os.chmod(path, mode)
                os.utime(path, (atime, mtime), follow_symlinks=False)
            except OSError as e:
                raise _os_error(rel, e, self.root) from e
            except (ValueError, OverflowError) as e:
                raise UnsafeContent(f"layer entry {rel!r} has invalid metadata: {e}") from e


def _os_error(name: str, e: OSError, root: Path) -> PodlingError:
    where = f"extracting layer entry {name!r}"
    if is_full(e):
        return exhausted(root, where, e)
    if e.errno == errno.ENAMETOOLONG:
        return UnsafeContent(f"{where}: name too long")
    return Internal(f"{where}: {e}")
