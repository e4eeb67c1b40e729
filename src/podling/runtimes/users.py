"""Resolve the container's user from its rootfs' /etc/passwd and /etc/group.

Contract: files are looked up *inside* the rootfs as if it were `/` — symlinks are
followed with chroot semantics (an absolute target restarts at the rootfs, `..` never
climbs above it), so nothing outside the rootfs is ever read, whatever the image holds.
A missing or unreadable file (or one that is not a regular file) just means no entries.
Files are read at most `MAX_FILE_BYTES`, so a hostile image cannot make us read forever.

The rules are Docker's and containerd's:
- a user given as a number need not exist in /etc/passwd (then gid 0, no groups);
- a user given as a name must exist, or the container cannot be created;
- "user:group" takes the group from the spec and adds no /etc/group memberships
  (supplementary groups only make sense for the implicit form);
- the primary gid is always the first of the additional gids (CVE-2023-25173: a
  process that is not in its own primary group could bypass a group's negative
  permissions).
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from podling.errors import InvalidArgument

MAX_SYMLINKS = 40
MAX_FILE_BYTES = 4 << 20


@dataclass(frozen=True)
class PasswdEntry:
    name: str
    uid: int
    gid: int


@dataclass(frozen=True)
class GroupEntry:
    name: str
    gid: int
    members: tuple[str, ...]


@dataclass(frozen=True)
class ResolvedUser:
    uid: int
    gid: int
    additional_gids: tuple[int, ...]
    username: str = ""  # the passwd name, when the uid has one


def resolve_in_root(root: Path, path: str) -> Path | None:
    """`path` resolved inside `root` with chroot semantics, or None if it cannot be.

    The result is lexically below `root` and contains no symlink up to its last
    component (which is also resolved). None for a symlink loop, a missing
    intermediate directory or a non-directory in the middle of the path.
    """
    todo = list(reversed(path.split("/")))
    out: list[str] = []
    links = 0
    while todo:
        comp = todo.pop()
        if comp in ("", "."):
            continue
        if comp == "..":
            if out:
                out.pop()
            continue
        candidate = root.joinpath(*out, comp)
        try:
            st = os.lstat(candidate)
        except OSError:
            return None if todo else candidate
        if stat.S_ISLNK(st.st_mode):
            links += 1
            if links > MAX_SYMLINKS:
                return None
            target = os.readlink(candidate)
            if target.startswith("/"):
                out.clear()
            todo.extend(reversed(target.split("/")))
            continue
        if todo and not stat.S_ISDIR(st.st_mode):
            return None
        out.append(comp)
    return root.joinpath(*out)


def read_root_file(root: Path, path: str) -> str:
    """The text of regular file `path` inside `root`, or "" if there is none to read."""
    resolved = resolve_in_root(root, path)
    if resolved is None:
        return ""
    # O_NOFOLLOW: the last component was resolved above, a symlink now is a race or a
    # trick; O_NONBLOCK: a FIFO planted as /etc/passwd must not block us.
    flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
    try:
        fd = os.open(resolved, flags)
    except OSError as e:
        if e.errno in (errno.ENOENT, errno.ELOOP, errno.ENOTDIR, errno.EACCES):
            return ""
        raise
    with os.fdopen(fd, "rb") as f:
        if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
            return ""
        return f.read(MAX_FILE_BYTES).decode("utf-8", errors="replace")


def parse_passwd(text: str) -> list[PasswdEntry]:
    """Entries of a passwd file; malformed lines are skipped (as libc does)."""
    out: list[PasswdEntry] = []
    for line in text.splitlines():
        fields = line.split(":")
        if len(fields) < 4 or not fields[0] or line.startswith("#"):
            continue
        try:
            out.append(PasswdEntry(fields[0], int(fields[2]), int(fields[3])))
        except ValueError:
            continue
    return out


def parse_group(text: str) -> list[GroupEntry]:
    """Entries of a group file; malformed lines are skipped."""
    out: list[GroupEntry] = []
    for line in text.splitlines():
        fields = line.split(":")
        if len(fields) < 3 or not fields[0] or line.startswith("#"):
            continue
        members = (
            tuple(m.strip() for m in fields[3].split(",") if m.strip()) if len(fields) > 3 else ()
        )
        try:
            out.append(GroupEntry(fields[0], int(fields[2]), members))
        except ValueError:
            continue
    return out


class RootfsUsers:
    """The passwd and group databases of one rootfs, read once, lazily."""

    def __init__(self, rootfs: Path) -> None:
        self._rootfs = rootfs
        self._passwd: list[PasswdEntry] | None = None
        self._group: list[GroupEntry] | None = None

    @property
    def passwd(self) -> list[PasswdEntry]:
        if self._passwd is None:
            self._passwd = parse_passwd(read_root_file(self._rootfs, "/etc/passwd"))
        return self._passwd

    @property
    def group(self) -> list[GroupEntry]:
        if self._group is None:
            self._group = parse_group(read_root_file(self._rootfs, "/etc/group"))
        return self._group

    def by_name(self, name: str) -> PasswdEntry | None:
        return next((e for e in self.passwd if e.name == name), None)

    def by_uid(self, uid: int) -> PasswdEntry | None:
        return next((e for e in self.passwd if e.uid == uid), None)

    def group_gid(self, name: str) -> int | None:
        return next((g.gid for g in self.group if g.name == name), None)

    def member_gids(self, username: str) -> list[int]:
        """Gids of the groups that list `username` as a member, in file order."""
        return [g.gid for g in self.group if username in g.members]


def _parse_id(value: str) -> int | None:
    return int(value) if value.isdigit() else None


def resolve_image_user(users: RootfsUsers, spec: str) -> tuple[int, int, str, bool]:
    """The image config's User ("", "uid", "uid:gid", "name", "name:group", ...).

    Returns (uid, gid, username or "", whether a group was given explicitly).
    InvalidArgument for a name that the image's /etc/passwd or /etc/group lacks.
    """
    user, sep, group = spec.partition(":")
    if sep and not group:
        raise InvalidArgument(f"image config User {spec!r} has an empty group")
    uid, gid, name = _image_uid(users, user or "0", spec)
    if sep:
        gid = _image_gid(users, group, spec)
    return uid, gid, name, bool(sep)


def _image_uid(users: RootfsUsers, user: str, spec: str) -> tuple[int, int, str]:
    uid = _parse_id(user)
    if uid is not None:
        entry = users.by_uid(uid)
        return uid, entry.gid if entry else 0, entry.name if entry else ""
    entry = users.by_name(user)
    if entry is None:
        raise InvalidArgument(
            f"image config User {spec!r}: no user {user!r} in the image's /etc/passwd; "
            "set run_as_user to a numeric uid or fix the image"
        )
    return entry.uid, entry.gid, entry.name


def _image_gid(users: RootfsUsers, group: str, spec: str) -> int:
    gid = _parse_id(group)
    if gid is not None:
        return gid
    found = users.group_gid(group)
    if found is None:
        raise InvalidArgument(
            f"image config User {spec!r}: no group {group!r} in the image's /etc/group"
        )
    return found


def merge_gids(primary: int, *groups: Iterable[int]) -> tuple[int, ...]:
    """The primary gid first, then every other gid once, in order."""
    out = [primary]
    for group in groups:
        out.extend(g for g in group if g not in out)
    return tuple(out)
