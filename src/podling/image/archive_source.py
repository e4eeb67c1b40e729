"""Read-only access to an image archive's files: a directory or an opened tar.

The archive is never extracted. A `Source` hands out regular files by their path
relative to the archive root; paths come from the archive's own (untrusted) metadata, so:
a path that is absolute or contains '..' raises UnsafeContent, as does a symlink (in a
directory) or a tar link that leads outside the archive, or a chain of tar links deeper
than `_MAX_LINKS`. A path that names nothing, or something other than a regular file,
counts as missing: `exists` says False and the reading methods raise InvalidArgument.
"""

from __future__ import annotations

import json
import posixpath
import tarfile
from abc import ABC, abstractmethod
from pathlib import Path
from typing import IO, Any

from podling.errors import DataLoss, InvalidArgument, UnsafeContent
from podling.image.content import ContentStore, hash_stream

__all__ = [
    "JSON_LIMIT",
    "DirSource",
    "Source",
    "TarSource",
    "clean_path",
    "copy_to_store",
    "hash_file",
    "read_json",
    "read_small",
]

JSON_LIMIT = 16 << 20  # manifests, indexes and configs are far smaller; refuse to buffer more
_MAX_LINKS = 8


def _normalise(name: str) -> str | None:
    """`name` as a path relative to the archive root, or None if it would leave it."""
    norm = posixpath.normpath(name)
    if not name or norm.startswith("/") or norm in (".", "..") or norm.startswith("../"):
        return None
    return norm


def clean_path(name: str, label: str) -> str:
    """A path the archive's metadata references; UnsafeContent if it is absolute or has '..'."""
    norm = _normalise(name)
    if norm is None or ".." in name.split("/"):
        raise UnsafeContent(
            f"{label}: refuses path {name!r}: archive paths must be relative and must not "
            "contain '..'; the archive may be hostile"
        )
    return norm


class Source(ABC):
    """Read-only access to an archive's regular files, by path relative to its root.

    `label` names the archive in error messages. `_locate` returns a handle, None when
    the file is missing, or raises UnsafeContent.
    """

    def __init__(self, label: str) -> None:
        self.label = label

    @abstractmethod
    def _locate(self, name: str) -> Any: ...

    def _need(self, name: str) -> Any:
        handle = self._locate(name)
        if handle is None:
            raise InvalidArgument(
                f"{self.label}: {name} is missing; the archive is incomplete, export it again"
            )
        return handle

    def exists(self, name: str) -> bool:
        return self._locate(name) is not None

    @abstractmethod
    def size(self, name: str) -> int: ...

    @abstractmethod
    def open(self, name: str) -> IO[bytes]: ...

    def position(self, name: str) -> int:
        """Where `name` lies in the archive: reading in this order avoids re-seeking."""
        return 0


class DirSource(Source):
    """An unpacked archive: a directory (an OCI image layout)."""

    def __init__(self, root: Path) -> None:
        super().__init__(str(root))
        self._root = root.resolve()

    def _locate(self, name: str) -> Path | None:
        try:
            real = (self._root / clean_path(name, self.label)).resolve(strict=True)
        except (OSError, RuntimeError):  # missing, or a symlink loop
            return None
        if not real.is_relative_to(self._root):
            raise UnsafeContent(f"{self.label}: {name} is a symlink that leaves the directory")
        return real if real.is_file() else None

    def size(self, name: str) -> int:
        return int(self._need(name).stat().st_size)

    def open(self, name: str) -> IO[bytes]:
        path: Path = self._need(name)
        return path.open("rb")


class TarSource(Source):
    """A tar archive, opened by the caller (who also closes it); members are indexed once."""

    def __init__(self, tar: tarfile.TarFile, label: str) -> None:
        super().__init__(label)
        self._tar = tar
        self._members: dict[str, tarfile.TarInfo] = {}
        for member in tar.getmembers():
            key = _normalise(member.name)
            if key is not None and ".." not in member.name.split("/"):
                self._members[key] = member  # like tar itself, a later duplicate wins

    def _locate(self, name: str) -> tarfile.TarInfo | None:
        """The regular-file member `name` denotes, following links inside the archive
        (`docker save` links duplicate layers to one copy)."""
        key = clean_path(name, self.label)
        for _ in range(_MAX_LINKS):
            member = self._members.get(key)
            if member is None or not (member.issym() or member.islnk()):
                return member if member is not None and member.isreg() else None
            target = member.linkname
            if member.issym():
                target = posixpath.join(posixpath.dirname(key), target)
            resolved = _normalise(target)
            if resolved is None:
                raise UnsafeContent(f"{self.label}: {name} links to {member.linkname!r} outside it")
            key = resolved
        raise UnsafeContent(f"{self.label}: {name}: more than {_MAX_LINKS} levels of links")

    def size(self, name: str) -> int:
        return int(self._need(name).size)

    def open(self, name: str) -> IO[bytes]:
        reader = self._tar.extractfile(self._need(name))
        assert reader is not None  # _locate only returns regular files
        return reader

    def position(self, name: str) -> int:
        return int(self._need(name).offset_data)


def read_small(src: Source, name: str) -> bytes:
    """The whole of `name`; InvalidArgument if it is larger than JSON_LIMIT bytes."""
    if src.size(name) > JSON_LIMIT:
        raise InvalidArgument(f"{src.label}: {name} is larger than {JSON_LIMIT} bytes")
    with src.open(name) as f:
        return f.read()


def read_json(src: Source, name: str) -> Any:
    """`name` parsed as JSON (any JSON value); InvalidArgument if it is not JSON."""
    try:
        return json.loads(read_small(src, name))
    except (ValueError, UnicodeDecodeError) as e:
        raise InvalidArgument(f"{src.label}: {name} is not valid JSON: {e}") from e


def copy_to_store(
    src: Source, name: str, store: ContentStore, digest: str, size: int | None
) -> None:
    """Stream `name` into the store as `digest`; DataLoss (naming the file) on mismatch.

    Nothing is read if the store already has `digest`; a failed copy leaves no partial.
    """
    if store.has(digest):
        return
    try:
        with src.open(name) as f:
            store.put_stream(f, digest, size)
    except DataLoss as e:
        raise DataLoss(f"{src.label}: {name}: {e.message}") from e


def hash_file(src: Source, name: str) -> str:
    """The sha256 digest ("sha256:<hex>") of `name`, streamed."""
    with src.open(name) as f:
        return hash_stream(f)
