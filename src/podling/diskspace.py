"""A full disk, reported one way everywhere: ENOSPC/EDQUOT from the OS and SQLITE_FULL
from SQLite become ResourceExhausted naming the directory whose filesystem is full and
what to do about it. Any other error passes through unchanged.
"""

from __future__ import annotations

import errno
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from podling.errors import ResourceExhausted

FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT)


def is_full(e: BaseException) -> bool:
    """Whether `e` says the filesystem (or the user's quota on it) is full."""
    if isinstance(e, OSError):
        return e.errno in FULL_ERRNOS
    if isinstance(e, sqlite3.OperationalError):
        code = getattr(e, "sqlite_errorcode", None)
        return code == sqlite3.SQLITE_FULL or "disk is full" in str(e)
    return False


def exhausted(where: Path | str, doing: str, e: BaseException) -> ResourceExhausted:
    """The error for a full filesystem under `where`, met while `doing` something."""
    cause = e.strerror if isinstance(e, OSError) and e.strerror else str(e)
    return ResourceExhausted(
        f"{doing}: no space left on the filesystem holding {where} ({cause}); free space "
        "there (remove unused images or containers), then retry"
    )


@contextmanager
def space_checked(where: Path, doing: str) -> Iterator[None]:
    """Turn a full-disk error raised inside the block into `exhausted(where, doing, e)`."""
    try:
        yield
    except (OSError, sqlite3.OperationalError) as e:
        if is_full(e):
            raise exhausted(where, doing, e) from e
        raise
