"""One podlingd per state: an exclusive lock on the root and state dirs, and stale sockets.

flock locks vanish with their holder, so a daemon that died (even by SIGKILL) never
blocks the next start; its socket file, which does survive, is removed once we hold
the locks: nobody else can be serving it then.
"""

from __future__ import annotations

import fcntl
import os

from podling.errors import FailedPrecondition
from podling.paths import Paths


class DaemonLock:
    def __init__(self, paths: Paths) -> None:
        self._paths = paths
        self._fds: list[int] = []

    def acquire(self) -> None:
        """Take both locks or raise FailedPrecondition naming the holder's pid."""
        for path in (self._paths.root_lock, self._paths.state_lock):
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = os.read(fd, 32).decode(errors="replace").strip() or "unknown"
                os.close(fd)
                self.release()
                raise FailedPrecondition(
                    f"another podlingd (pid {holder}) holds {path}; stop it first or give this "
                    "one other root/state dirs"
                ) from None
            os.ftruncate(fd, 0)
            os.write(fd, str(os.getpid()).encode())
            self._fds.append(fd)
        self._remove_stale_socket()

    def _remove_stale_socket(self) -> None:
        sock = self._paths.socket
        if sock.exists() or sock.is_symlink():
            sock.unlink()

    def release(self) -> None:
        for fd in self._fds:
            os.close(fd)
        self._fds.clear()
