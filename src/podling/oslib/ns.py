"""Namespace and mount syscalls through ctypes: unshare, setns, mount, umount2, sethostname.

Python 3.11 has no os.unshare/os.setns, so these call libc directly. Every function
raises OSError(errno, strerror, what) on failure, like the os module does; callers turn
that into a podling error with context.

unshare and setns change the namespaces of the *calling thread* (for net, ipc and uts;
mount and user namespaces refuse multithreaded callers). Call them only in a forked child
or a dedicated thread, never in the daemon's event-loop thread: every later socket and
file opened by that thread would land in the other namespace.
"""

from __future__ import annotations

import ctypes
import os
from functools import cache

CLONE_NEWNS = 0x00020000
CLONE_NEWCGROUP = 0x02000000
CLONE_NEWUTS = 0x04000000
CLONE_NEWIPC = 0x08000000
CLONE_NEWUSER = 0x10000000
CLONE_NEWPID = 0x20000000
CLONE_NEWNET = 0x40000000

MS_RDONLY = 0x1
MS_NOSUID = 0x2
MS_NODEV = 0x4
MS_NOEXEC = 0x8
MS_REMOUNT = 0x20
MS_BIND = 0x1000
MS_MOVE = 0x2000
MS_REC = 0x4000
MS_PRIVATE = 0x40000
MS_SLAVE = 0x80000
MS_SHARED = 0x100000

MNT_FORCE = 0x1
MNT_DETACH = 0x2


@cache
def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(None, use_errno=True)


def _check(ret: int, what: str) -> None:
    if ret < 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err), what)


def _b(s: str | None) -> bytes | None:
    return None if s is None else s.encode()


def unshare(flags: int) -> None:
    """Move the calling thread into new namespaces of the kinds in `flags` (CLONE_NEW*)."""
    _check(_libc().unshare(ctypes.c_int(flags)), f"unshare(0x{flags:x})")


def setns(fd: int, nstype: int) -> None:
    """Move the calling thread into the namespace open at `fd` (nstype 0 = any kind)."""
    _check(_libc().setns(ctypes.c_int(fd), ctypes.c_int(nstype)), f"setns(fd {fd})")


def mount(
    source: str | None, target: str, fstype: str | None, flags: int, data: str | None
) -> None:
    """mount(2). For a bind mount pass fstype None and MS_BIND; for a propagation change
    pass source None and one of MS_PRIVATE / MS_SHARED / MS_SLAVE (optionally | MS_REC)."""
    ret = _libc().mount(_b(source), _b(target), _b(fstype), ctypes.c_ulong(flags), _b(data))
    _check(ret, f"mount {source} on {target}")


def umount2(target: str, flags: int) -> None:
    """umount2(2); EINVAL means `target` is not a mount point."""
    _check(_libc().umount2(_b(target), ctypes.c_int(flags)), f"umount {target}")


def sethostname(name: str) -> None:
    """Set the hostname of the calling thread's UTS namespace."""
    raw = name.encode()
    _check(_libc().sethostname(raw, ctypes.c_size_t(len(raw))), f"sethostname({name!r})")


_SIOCGIFFLAGS, _SIOCSIFFLAGS, _IFF_UP = 0x8913, 0x8914, 0x1


def link_up(ifname: str) -> None:
    """Set network interface `ifname` up in the calling thread's network namespace
    (two ioctls on a socket, no `ip` process). OSError if it does not exist."""
    import fcntl
    import socket
    import struct

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        req = struct.pack("16sh14x", ifname.encode(), 0)
        flags = struct.unpack("16sh14x", fcntl.ioctl(s.fileno(), _SIOCGIFFLAGS, req))[1]
        fcntl.ioctl(
            s.fileno(), _SIOCSIFFLAGS, struct.pack("16sh14x", ifname.encode(), flags | _IFF_UP)
        )
