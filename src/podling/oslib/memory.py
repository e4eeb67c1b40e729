"""Give freed heap memory back to the kernel.

A pull streams hundreds of MB through Python buffers (download chunks, decompression,
tar members). glibc keeps what was freed in its arenas for reuse, so the daemon's RSS
stayed ~12 MB higher after a 150 MB pull than before it (measured). malloc_trim(0)
returns the free pages at the top of each arena and the free whole pages inside them;
it takes a few milliseconds and changes nothing that is still in use.
"""

from __future__ import annotations

import ctypes
from functools import cache


@cache
def _libc() -> ctypes.CDLL | None:
    try:
        return ctypes.CDLL("libc.so.6", use_errno=True)
    except OSError:  # not glibc: nothing to trim
        return None


def trim_heap() -> bool:
    """Ask glibc to return free heap memory to the kernel; True if it released some."""
    libc = _libc()
    if libc is None or not hasattr(libc, "malloc_trim"):
        return False
    return bool(libc.malloc_trim(0))


_M_ARENA_MAX = -8  # mallopt parameter (malloc.h)


def limit_arenas(count: int) -> bool:
    """Cap glibc's malloc arenas at `count`; True if glibc took it. Call early: arenas
    already made stay. Every thread that allocates while the others hold their arenas
    gets one of its own (up to 8 per core), and each keeps freed memory of its own: a
    layer's decode thread left ~3 MB more RSS after a 300 MB pull than with two arenas
    (measured, no slower)."""
    libc = _libc()
    if libc is None or not hasattr(libc, "mallopt"):
        return False
    return bool(libc.mallopt(_M_ARENA_MAX, count))
