"""Mount and unmount snapshot `Mount`s with the mount syscalls, through ctypes.

Why syscalls and not mount(8): no output parsing, no dependency on util-linux, and
errno values we can turn into clear errors.

- Option words that are mount flags (ro, rw, nosuid, nodev, noexec, bind, rbind, ...)
  become MS_* flags; every other option goes into the filesystem's data string.
- A read-only bind mount needs a second call (MS_REMOUNT|MS_BIND|MS_RDONLY): the kernel
  ignores MS_RDONLY when it creates a bind mount.
- Classic mount(2) caps the data string at one page (4 KiB), which a long overlay
  lowerdir list exceeds. Such overlay mounts use the new mount API instead (fsopen,
  fsconfig with one "lowerdir+" per layer, fsmount, move_mount; kernel >= 6.8).

- An id-mapped bind (bind_idmapped) is open_tree(OPEN_TREE_CLONE) + mount_setattr
  (MOUNT_ATTR_IDMAP with a user namespace's fd) + move_mount: files appear owned by the
  ids the namespace maps theirs to (host uid 0 shows as the pod's root's host uid).

Errors: PermissionDenied (no CAP_SYS_ADMIN), Internal (anything else), with the errno text.
"""

from __future__ import annotations

import ctypes
import errno
import os
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING

from podling.errors import FailedPrecondition, Internal, PermissionDenied, PodlingError

if TYPE_CHECKING:
    from podling.snapshots.base import Mount

MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC = 0x1, 0x2, 0x4, 0x8
MS_REMOUNT, MS_NOATIME, MS_BIND, MS_REC = 0x20, 0x400, 0x1000, 0x4000
MS_RELATIME = 0x200000
MNT_DETACH = 0x2
_PAGE = 4096

# option -> (flags to set, flags to clear)
_FLAGS: dict[str, tuple[int, int]] = {
    "ro": (MS_RDONLY, 0),
    "rw": (0, MS_RDONLY),
    "nosuid": (MS_NOSUID, 0),
    "suid": (0, MS_NOSUID),
    "nodev": (MS_NODEV, 0),
    "dev": (0, MS_NODEV),
    "noexec": (MS_NOEXEC, 0),
    "exec": (0, MS_NOEXEC),
    "noatime": (MS_NOATIME, 0),
    "relatime": (MS_RELATIME, 0),
    "bind": (MS_BIND, 0),
    "rbind": (MS_BIND | MS_REC, 0),
}

# New mount API; these syscall numbers are the same on every architecture we run on.
_SYS_MOVE_MOUNT, _SYS_FSOPEN, _SYS_FSCONFIG, _SYS_FSMOUNT = 429, 430, 431, 432
_FSCONFIG_SET_FLAG, _FSCONFIG_SET_STRING, _FSCONFIG_CMD_CREATE = 0, 1, 6
_FSOPEN_CLOEXEC = _FSMOUNT_CLOEXEC = 1
_MOUNT_ATTR = {MS_RDONLY: 0x1, MS_NOSUID: 0x2, MS_NODEV: 0x4, MS_NOEXEC: 0x8}
_MOVE_MOUNT_F_EMPTY_PATH = 0x4
_AT_FDCWD = -100
_SYS_OPEN_TREE, _SYS_MOUNT_SETATTR = 428, 442
_OPEN_TREE_CLONE, _OPEN_TREE_CLOEXEC = 0x1, os.O_CLOEXEC
_AT_EMPTY_PATH, _AT_RECURSIVE = 0x1000, 0x8000
_MOUNT_ATTR_RDONLY, _MOUNT_ATTR_IDMAP = 0x1, 0x100000


class _MountAttr(ctypes.Structure):
    # struct mount_attr (linux/mount.h)
    _fields_ = (
        ("attr_set", ctypes.c_uint64),
        ("attr_clr", ctypes.c_uint64),
        ("propagation", ctypes.c_uint64),
        ("userns_fd", ctypes.c_uint64),
    )


@cache
def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(None, use_errno=True)


def split_options(options: tuple[str, ...]) -> tuple[int, list[str]]:
    """(MS_* flags, remaining data options) of an fstab-style option list."""
    flags, data = 0, []
    for opt in options:
        if opt in _FLAGS:
            add, clear = _FLAGS[opt]
            flags = (flags | add) & ~clear
        else:
            data.append(opt)
    return flags, data


def _error(what: str, err: int) -> PodlingError:
    msg = f"{what}: {os.strerror(err)}"
    if err in (errno.EPERM, errno.EACCES):
        return PermissionDenied(f"{msg} (mounting needs CAP_SYS_ADMIN)")
    return Internal(msg)


def _check(ret: int, what: str) -> int:
    if ret < 0:
        raise _error(what, ctypes.get_errno())
    return ret


def _mount2(source: str, target: Path, fstype: str | None, flags: int, data: str) -> None:
    ret = _libc().mount(
        source.encode(),
        str(target).encode(),
        None if fstype is None else fstype.encode(),
        ctypes.c_ulong(flags),
        data.encode() if data else None,
    )
    _check(ret, f"mounting {source} ({fstype or 'bind'}) on {target}")


def mount(m: Mount, target: Path) -> None:
    """Mount `m` on the existing directory `target`."""
    flags, data = split_options(m.options)
    if m.type == "bind":
        flags |= MS_BIND
        _mount2(m.source, target, None, flags & ~MS_RDONLY, ",".join(data))
        if flags & MS_RDONLY:
            try:
                _mount2(m.source, target, None, (flags & ~MS_REC) | MS_REMOUNT, "")
            except PodlingError:
                unmount(target)
                raise
        return
    joined = ",".join(data)
    if m.type == "overlay" and len(joined.encode()) >= _PAGE:
        _mount_fsconfig(m.type, flags, data, target)
        return
    _mount2(m.source, target, m.type, flags, joined)


def _syscall(nr: int, *args: object) -> int:
    return int(_libc().syscall(ctypes.c_long(nr), *args))


def _mount_fsconfig(fstype: str, flags: int, data: list[str], target: Path) -> None:
    """Mount through the new mount API, one fsconfig call per option (no 4 KiB cap)."""
    what = f"mounting {fstype} on {target} (new mount API)"
    fd = _check(_syscall(_SYS_FSOPEN, fstype.encode(), ctypes.c_uint(_FSOPEN_CLOEXEC)), what)
    try:
        for opt in data:
            key, sep, value = opt.partition("=")
            if key == "lowerdir" and sep:
                for lower in value.split(":"):
                    _fsconfig(fd, _FSCONFIG_SET_STRING, "lowerdir+", lower, what)
            elif sep:
                _fsconfig(fd, _FSCONFIG_SET_STRING, key, value, what)
            else:
                _fsconfig(fd, _FSCONFIG_SET_FLAG, key, None, what)
        _fsconfig(fd, _FSCONFIG_CMD_CREATE, None, None, what)
        attrs = sum(attr for flag, attr in _MOUNT_ATTR.items() if flags & flag)
        mfd = _check(_syscall(_SYS_FSMOUNT, fd, ctypes.c_uint(_FSMOUNT_CLOEXEC), attrs), what)
        try:
            empty, flag = b"", ctypes.c_uint(_MOVE_MOUNT_F_EMPTY_PATH)
            args = (mfd, empty, ctypes.c_int(_AT_FDCWD), str(target).encode(), flag)
            _check(_syscall(_SYS_MOVE_MOUNT, *args), what)
        finally:
            os.close(mfd)
    finally:
        os.close(fd)


def _fsconfig(fd: int, cmd: int, key: str | None, value: str | None, what: str) -> None:
    k = None if key is None else key.encode()
    v = None if value is None else value.encode()
    _check(_syscall(_SYS_FSCONFIG, fd, ctypes.c_uint(cmd), k, v, 0), f"{what}, option {key}")


def unmount(target: Path, *, detach: bool = False) -> None:
    """Unmount `target`; a no-op when nothing is mounted there (EINVAL) or the path does
    not exist (ENOENT: a crash may have stopped a create before it made the mount point)."""
    ret = _libc().umount2(str(target).encode(), MNT_DETACH if detach else 0)
    if ret < 0:
        err = ctypes.get_errno()
        if err not in (errno.EINVAL, errno.ENOENT):
            raise _error(f"unmounting {target}", err)


def bind_idmapped(source: Path, target: Path, userns: Path, *, readonly: bool = False) -> None:
    """Bind `source` on the existing `target` through the id mapping of the user
    namespace file `userns` (a pinned /proc/<pid>/ns/user). FailedPrecondition when the
    filesystem of `source` cannot be id-mapped (the error names it)."""
    what = f"id-mapped bind of {source} on {target}"
    ns_fd = os.open(userns, os.O_RDONLY | os.O_CLOEXEC)
    try:
        flags = ctypes.c_uint(_OPEN_TREE_CLONE | _OPEN_TREE_CLOEXEC)
        path = str(source).encode()
        tree = _check(_syscall(_SYS_OPEN_TREE, ctypes.c_int(_AT_FDCWD), path, flags), what)
        try:
            _set_idmap(tree, ns_fd, readonly, what, source)
            empty, flag = b"", ctypes.c_uint(_MOVE_MOUNT_F_EMPTY_PATH)
            args = (ctypes.c_int(tree), empty, ctypes.c_int(_AT_FDCWD), str(target).encode(), flag)
            _check(_syscall(_SYS_MOVE_MOUNT, *args), what)
        finally:
            os.close(tree)
    finally:
        os.close(ns_fd)


def _set_idmap(tree: int, ns_fd: int, readonly: bool, what: str, source: Path) -> None:
    attr = _MountAttr(_MOUNT_ATTR_IDMAP | (_MOUNT_ATTR_RDONLY if readonly else 0), 0, 0, ns_fd)
    args = (ctypes.c_int(tree), b"", ctypes.c_uint(_AT_EMPTY_PATH), ctypes.byref(attr))
    if _syscall(_SYS_MOUNT_SETATTR, *args, ctypes.c_size_t(ctypes.sizeof(attr))) >= 0:
        return
    err = ctypes.get_errno()
    if err == errno.EINVAL:
        raise FailedPrecondition(
            f"{what}: the filesystem of {source} cannot be id-mapped, and pods with a user "
            "namespace need that (kernel >= 5.19 with ext4, xfs, btrfs or tmpfs)"
        )
    raise _error(what, err)
