"""Streaming, hostile-input-safe extraction of OCI/Docker layer tarballs into a snapshot dir.

Contract of `apply_layer`:
- Nothing is ever created, changed or deleted outside `dest`. Entry names are cleaned
  lexically (a leading "/" means "relative to dest", as in containerd); a name whose `..`
  climbs above dest is refused. Every parent component is checked with lstat right before
  use and must be a real directory: entries, hardlink targets and whiteouts are never
  written *through* a symlink, wherever it points (layer diffs record real paths, so a
  layer that does this is malformed or hostile). A symlink entry itself may point anywhere.
  The checks assume nothing else modifies `dest` meanwhile (a snapshot being extracted is
  private to its caller).
- The whole stream is consumed, so `diff_id` covers the tar including its end padding.
- Duplicates: the later entry wins; a directory over an existing directory only updates
  its metadata; anything else replaces what was there.
- Whiteouts: "native" deletes the named path (opaque markers delete every lower-layer
  child of the dir but keep this layer's entries, whatever their order in the tar);
  "overlay" writes overlayfs whiteouts (0/0 char devices, `trusted.overlay.opaque=y`).
- Device nodes are created with mknod when permitted (root) and skipped with a warning
  when not (non-root, user namespaces). FIFOs are always created. Ownership is applied
  only when running as root. Layers cannot set `trusted.overlay.*` xattrs (skipped).

Errors: InvalidArgument (unknown media type, bad dest); DataLoss (corrupt or truncated
gzip/zstd/tar); UnsafeContent (escape attempts, writing through symlinks, hardlinks to
missing or outside targets, unsupported entry types, more than `max_bytes` of tar);
FailedPrecondition (overlay whiteouts or xattrs the filesystem refuses);
ResourceExhausted (disk full); Internal (other OS errors). On any error `dest` may be
half-written but can always be removed by the caller.
"""

from __future__ import annotations

import errno
import gzip
import hashlib
import io
import logging
import os
import shutil
import stat
import tarfile
import zlib
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO, Literal, Protocol, Self

import zstandard

from podling.errors import (
    DataLoss,
    FailedPrecondition,
    Internal,
    InvalidArgument,
    PodlingError,
    ResourceExhausted,
    UnsafeContent,
)
from podling.image.manifest import LAYER_GZIP, LAYER_PLAIN, LAYER_ZSTD

if TYPE_CHECKING:
    from _typeshed import WriteableBuffer

log = logging.getLogger(__name__)

WhiteoutMode = Literal["overlay", "native"]
WHITEOUT_PREFIX = ".wh."
OPAQUE_MARKER = ".wh..wh..opq"
OVERLAY_OPAQUE_XATTR = "trusted.overlay.opaque"
_GZIP_MAGIC = b"\x1f\x8b"
_ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
# Media types whose compression we decide by sniffing: generic ones, and plain tar (tools
# are known to label compressed layers as plain; a tar never starts with these magics).
_SNIFFED = ("", "application/octet-stream", *LAYER_PLAIN)
_CHUNK = 1 << 20
_RECENT = 1 << 16  # > tarfile's read-ahead (one 10 KiB record), see _Meter.check_trailer
_BLOCK = 512
# Extended headers are read into memory whole: cap them (real ones are a few KiB).
_MAX_EXT_HEADER = 1 << 20
_EXT_HEADER_TYPES = (
    tarfile.XHDTYPE,
    tarfile.XGLTYPE,
    tarfile.SOLARIS_XHDTYPE,
    tarfile.GNUTYPE_LONGNAME,
    tarfile.GNUTYPE_LONGLINK,
)


class _Readable(Protocol):
    def read(self, size: int = ..., /) -> bytes: ...
    def close(self) -> None: ...


class _Decoded(io.RawIOBase):
    """Raw stream over a decompressor: decoder failures become DataLoss."""

    def __init__(self, inner: _Readable, what: str) -> None:
        super().__init__()
        self._inner = inner
        self._what = what

    def readable(self) -> bool:
        return True

    def readinto(self, buf: WriteableBuffer) -> int:
        view = memoryview(buf).cast("B")
        try:
            data = self._inner.read(len(view))
        except (OSError, EOFError, zlib.error, zstandard.ZstdError) as e:
            raise DataLoss(
                f"layer {self._what} is corrupt or truncated ({e}); delete the blob and pull again"
            ) from e
        view[: len(data)] = data
        return len(data)

    def close(self) -> None:
        if not self.closed:
            self._inner.close()
        super().close()


def _codec(media_type: str, head: bytes) -> str:
    mt = media_type.split(";")[0].strip()
    if mt in LAYER_GZIP:
        return "gzip"
    if mt in LAYER_ZSTD:
        return "zstd"
    if mt in _SNIFFED:
        if head.startswith(_GZIP_MAGIC):
            return "gzip"
        return "zstd" if head.startswith(_ZSTD_MAGIC) else "plain"
    raise InvalidArgument(
        f"unsupported layer media type {media_type!r}: expected a tar, tar+gzip or tar+zstd layer"
    )


@contextmanager
def open_layer(path: Path, media_type: str) -> Iterator[BinaryIO]:
    """Open a layer blob as its decompressed tar stream (gzip, zstd or plain).

    The codec follows the media type; for generic or plain-tar media types it is sniffed
    from the magic bytes. Unknown media types raise InvalidArgument; undecodable data
    raises DataLoss while reading.
    """
    with path.open("rb") as f:
        head = f.read(4)
        f.seek(0)
        codec = _codec(media_type, head)
        inner: _Readable
        if codec == "gzip":
            inner = gzip.GzipFile(fileobj=f, mode="rb")
        elif codec == "zstd":
            inner = zstandard.ZstdDecompressor().stream_reader(f, read_across_frames=True)
        else:
            inner = f
        with io.BufferedReader(_Decoded(inner, f"{path.name} ({codec})"), _CHUNK) as stream:
            yield stream


class _GuardedInfo(tarfile.TarInfo):
    """TarInfo that refuses oversized extended headers before tarfile buffers them."""

    @classmethod
    def frombuf(cls, buf: bytes | bytearray, encoding: str, errors: str) -> Self:
        info = super().frombuf(buf, encoding, errors)
        if info.type in _EXT_HEADER_TYPES and info.size > _MAX_EXT_HEADER:
            raise UnsafeContent(
                f"layer has a {info.size}-byte extended tar header (limit {_MAX_EXT_HEADER})"
            )
        return info


@dataclass(frozen=True)
class UnpackResult:
    diff_id: str  # "sha256:" + sha256 of the uncompressed tar stream
    size: int  # uncompressed bytes read


class _Meter:
    """Read-only tar source: hashes and counts every byte, enforces the size limit."""

    def __init__(self, stream: BinaryIO, max_bytes: int) -> None:
        self._stream = stream
        self._max = max_bytes
        self.hash = hashlib.sha256()
        self.size = 0
        self._recent: deque[bytes] = deque()  # the last >= _RECENT bytes read, as chunks
        self._recent_len = 0

    def read(self, size: int = -1, /) -> bytes:
        data = self._stream.read(size if size >= 0 else _CHUNK)
        self.size += len(data)
        if self.size > self._max:
            raise UnsafeContent(
                f"layer expands to more than {self._max} bytes: refusing a possible "
                "decompression bomb (raise the unpack size limit if the image is genuine)"
            )
        self.hash.update(data)
        self._recent.append(data)
        self._recent_len += len(data)
        while self._recent_len - len(self._recent[0]) >= _RECENT:
            self._recent_len -= len(self._recent.popleft())
        return data

    def write(self, b: bytes, /) -> int:
        raise io.UnsupportedOperation("layer streams are read-only")

    def tell(self) -> int:
        return self.size

    def seek(self, pos: int, /) -> int:
        raise io.UnsupportedOperation("layer streams cannot seek")

    def close(self) -> None:
        """The caller owns the underlying stream."""

    def check_trailer(self, end: int) -> None:
        """DataLoss unless the bytes after the last member (offset `end`) are zeros.

        tarfile silently stops at a corrupt or cut-off header; what follows the last
        member must be the end-of-archive zero block (or nothing, as Go's reader allows).
        Bytes tarfile read ahead past `end` are still in our recent-bytes window.
        """
        lag = self.size - end
        if lag > self._recent_len:
            raise Internal(f"tar read-ahead of {lag} bytes exceeds the {_RECENT}-byte window")
        recent = b"".join(self._recent)
        tail = recent[len(recent) - lag :] if lag else b""
        while len(tail) < _BLOCK and (more := self.read(_BLOCK - len(tail))):
            tail += more
        if tail[:_BLOCK].strip(b"\0"):
            raise DataLoss(f"layer tar has a corrupt or truncated header at offset {end}")

    def drain(self) -> None:
        while self.read(_CHUNK):
            pass


def apply_layer(
    stream: BinaryIO, dest: Path, *, whiteouts: WhiteoutMode, max_bytes: int
) -> UnpackResult:
    """Extract the uncompressed tar `stream` into `dest` (see the module docstring)."""
    st = _lstat(dest)
    if st is None or not stat.S_ISDIR(st.st_mode):
        raise InvalidArgument(f"cannot unpack into {dest}: not an existing directory")
    meter = _Meter(stream, max_bytes)
    extractor = _Extractor(dest, whiteouts)
    try:
        with tarfile.open(fileobj=meter, mode="r|", tarinfo=_GuardedInfo) as tar:
            while (member := tar.next()) is not None:
                vars(tar)["members"].clear()  # stream mode would keep every member (memory)
                extractor.apply(member, tar)
            end = tar.offset
    except tarfile.TarError as e:
        raise DataLoss(f"layer is not a valid tar stream ({e}); delete it and pull again") from e
    meter.check_trailer(end)
    meter.drain()
    extractor.finish()
    return UnpackResult(diff_id="sha256:" + meter.hash.hexdigest(), size=meter.size)


def _lstat(path: Path) -> os.stat_result | None:
    try:
        return os.lstat(path)
    except FileNotFoundError:
        return None


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
    st = _lstat(path)
    if st is None:
        return
    if stat.S_ISDIR(st.st_mode):
        shutil.rmtree(path)
    else:
        os.unlink(path)


class _Extractor:
    """Applies tar members one by one; directory modes and times are set in `finish`."""

    def __init__(self, root: Path, whiteouts: WhiteoutMode) -> None:
        self.root = root
        self.overlay = whiteouts == "overlay"
        self.as_root = os.geteuid() == 0
        self.touched: set[str] = set()  # paths this layer wrote, with all their ancestors
        self.dirs: dict[str, tarfile.TarInfo] = {}

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
            raise _os_error(m.name, e) from e
        except (ValueError, OverflowError) as e:  # NUL in a link name, absurd times or ids
            raise UnsafeContent(f"layer entry {m.name!r} has invalid metadata: {e}") from e

    def _dir(self, name: str, parts: list[str], *, create: bool) -> Path | None:
        """Path of dir root/parts, each component checked to be a real directory.

        Missing components are created (0755) when `create`, else None is returned.
        """
        cur = self.root
        for comp in parts:
            cur = cur / comp
            st = _lstat(cur)
            if st is None:
                if not create:
                    return None
                os.mkdir(cur)
                os.chmod(cur, 0o755)  # implicit parent: fixed mode, whatever the umask
            elif stat.S_ISLNK(st.st_mode):
                raise UnsafeContent(
                    f"layer entry {name!r} would be written through the symlink "
                    f"{cur.relative_to(self.root)}; refusing"
                )
            elif not stat.S_ISDIR(st.st_mode):
                raise UnsafeContent(
                    f"layer entry {name!r}: {cur.relative_to(self.root)} is not a directory"
                )
        return cur

    def _entry(self, m: tarfile.TarInfo, parts: list[str], tar: tarfile.TarFile) -> None:
        for i in range(len(parts) + 1):
            self.touched.add("/".join(parts[:i]))
        if not parts:
            if not m.isdir():
                raise UnsafeContent(f"layer entry {m.name!r} would replace the snapshot root")
            self._directory(m, parts)
            return
        parent = self._dir(m.name, parts[:-1], create=True)
        assert parent is not None
        path = parent / parts[-1]
        if m.isdir():
            self._directory(m, parts)
        elif m.islnk():
            self._hardlink(m, parts, path)
        else:
            self._leaf(m, path, tar)

    def _directory(self, m: tarfile.TarInfo, parts: list[str]) -> None:
        path = self.root.joinpath(*parts)
        st = _lstat(path)
        if st is not None and not stat.S_ISDIR(st.st_mode):
            os.unlink(path)
            st = None
        if st is None:
            os.mkdir(path, 0o700)  # final mode in finish(), so children can be added first
        if self.as_root:
            os.lchown(path, m.uid, m.gid)
        self._xattrs(path, m)
        self.dirs["/".join(parts)] = m

    def _hardlink(self, m: tarfile.TarInfo, parts: list[str], path: Path) -> None:
        target_parts = _clean(m.linkname)
        if not target_parts or target_parts == parts:
            raise UnsafeContent(f"layer hardlink {m.name!r} -> {m.linkname!r} has no valid target")
        tdir = self._dir(m.name, target_parts[:-1], create=False)
        target = None if tdir is None else tdir / target_parts[-1]
        st = None if target is None else _lstat(target)
        if target is None or st is None or stat.S_ISDIR(st.st_mode):
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
            os.symlink(m.linkname, path)
            self._meta(path, m, chmod=False)
        elif m.ischr() or m.isblk() or m.isfifo():
            self._special(m, path)
        else:
            raise UnsafeContent(f"layer entry {m.name!r} has unsupported tar type {m.type!r}")

    def _file(self, m: tarfile.TarInfo, path: Path, tar: tarfile.TarFile) -> None:
        src = tar.extractfile(m)
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        with os.fdopen(os.open(path, flags, 0o600), "wb") as out:
            if src is not None:
                shutil.copyfileobj(src, out, _CHUNK)
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
        base, dir_parts = parts[-1], parts[:-1]
        if base == OPAQUE_MARKER:
            self._opaque(name, dir_parts)
            return
        if base.startswith(WHITEOUT_PREFIX * 2):
            return  # other aufs metadata (e.g. .wh..wh.plnk): meaningless here
        target = base[len(WHITEOUT_PREFIX) :]
        if target in ("", ".", ".."):
            raise UnsafeContent(f"layer whiteout {name!r} names no valid entry")
        parent = self._dir(name, dir_parts, create=self.overlay)
        if parent is None:
            return  # nothing below to hide
        _remove(parent / target)
        if self.overlay:
            self._overlay_whiteout(name, parent / target)

    def _overlay_whiteout(self, name: str, path: Path) -> None:
        try:
            os.mknod(path, stat.S_IFCHR | 0o600, os.makedev(0, 0))
        except PermissionError as e:
            raise FailedPrecondition(
                f"layer whiteout {name!r}: overlay whiteouts need CAP_MKNOD; run as root or "
                "use the native snapshotter"
            ) from e

    def _opaque(self, name: str, dir_parts: list[str]) -> None:
        path = self._dir(name, dir_parts, create=self.overlay)
        if path is None:
            return
        if not self.overlay:
            self._prune(path, "/".join(dir_parts))
            return
        try:
            os.setxattr(path, OVERLAY_OPAQUE_XATTR, b"y", follow_symlinks=False)
        except PermissionError as e:
            raise FailedPrecondition(
                f"layer opaque marker {name!r}: setting {OVERLAY_OPAQUE_XATTR} needs "
                "CAP_SYS_ADMIN; run as root or use the native snapshotter"
            ) from e

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
        """Set directory modes and times, deepest first (adding children changed them)."""
        for rel in sorted(self.dirs, key=lambda r: r.count("/") + bool(r), reverse=True):
            try:
                path = self._dir(rel, rel.split("/") if rel else [], create=False)
            except UnsafeContent:
                continue  # replaced by a symlink or file later in this layer
            if path is None:  # removed later in this layer
                continue
            m = self.dirs[rel]
            try:
                os.chmod(path, m.mode & 0o7777)
                os.utime(path, (m.mtime, m.mtime), follow_symlinks=False)
            except OSError as e:
                raise _os_error(rel, e) from e


def _os_error(name: str, e: OSError) -> PodlingError:
    where = f"extracting layer entry {name!r}"
    if e.errno in (errno.ENOSPC, errno.EDQUOT):
        return ResourceExhausted(f"{where}: {e.strerror}; free disk space and pull again")
    if e.errno == errno.ENAMETOOLONG:
        return UnsafeContent(f"{where}: name too long")
    return Internal(f"{where}: {e}")
