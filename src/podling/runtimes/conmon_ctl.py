"""Talking to a running conmon: its ctl fifo and its attach socket.

Both calls are non-blocking and safe to make from the event loop.
"""

from __future__ import annotations

import errno
import os
import socket
from pathlib import Path

from podling import errors

# sockaddr_un.sun_path holds 108 bytes including the terminating NUL
SUN_PATH_MAX = 107


def write_ctl(bundle: Path, line: str) -> None:
    """Write one message to conmon's ctl fifo (BUNDLE/ctl). The O_NONBLOCK open fails
    with ENXIO when no conmon holds the read end (it has exited), instead of hanging."""
    path = bundle / "ctl"
    try:
        fd = os.open(path, os.O_WRONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as e:
        if e.errno in (errno.ENXIO, errno.ENOENT):
            raise errors.FailedPrecondition(
                f"{path}: no conmon is listening (the container has exited)"
            ) from e
        raise errors.Internal(f"{path}: {e.strerror}") from e
    try:
        os.write(fd, line.encode())  # shorter than PIPE_BUF: atomic
    except BlockingIOError as e:
        raise errors.Unavailable(f"{path}: conmon is not reading its control fifo") from e
    finally:
        os.close(fd)


def connect_attach(path: Path) -> socket.socket:
    """Connect a SOCK_SEQPACKET socket to conmon's attach socket and make it non-blocking.

    conmon itself copes with long bundle paths, but a client's connect() takes at most
    107 bytes of path: a longer one is reached through /proc/self/fd/N/attach of an
    O_PATH fd on its directory. No conmon (container exited) → FailedPrecondition.
    """
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET | socket.SOCK_CLOEXEC)
    try:
        if len(os.fsencode(path)) <= SUN_PATH_MAX:
            sock.connect(str(path))
        else:
            _connect_via_dirfd(sock, path)
    except (FileNotFoundError, ConnectionRefusedError) as e:
        sock.close()
        raise errors.FailedPrecondition(
            f"{path}: nothing to attach to (the container has exited)"
        ) from e
    except BaseException:
        sock.close()
        raise
    sock.setblocking(False)
    return sock


def _connect_via_dirfd(sock: socket.socket, path: Path) -> None:
    dirfd = os.open(path.parent, os.O_PATH | os.O_CLOEXEC)
    try:
        sock.connect(f"/proc/self/fd/{dirfd}/{path.name}")
    finally:
        os.close(dirfd)
