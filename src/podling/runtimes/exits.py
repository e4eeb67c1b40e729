"""Watch conmon's exit dir: one (container id, ExitInfo) per exit file that appears.

inotify (through ctypes: Python has no binding) on the directory, IN_MOVED_TO only:
conmon 2.1.6 writes EXIT_DIR/CID with g_file_set_contents, i.e. a temp file renamed into
place, so the rename is the one event that says "complete exit file". The fd is read
from the event loop (add_reader): no thread, no polling.

On start the watcher first yields the files already there (exits that happened while
nobody watched), and after an inotify queue overflow it rescans the directory. So an
exit can be yielded more than once: consumers must be idempotent.
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import os
import re
import struct
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from podling import errors

if TYPE_CHECKING:
    from podling.runtimes.conmon import Conmon

IN_MOVED_TO = 0x00000080
IN_Q_OVERFLOW = 0x00004000
IN_IGNORED = 0x00008000
IN_ONLYDIR = 0x01000000
IN_NONBLOCK = os.O_NONBLOCK
IN_CLOEXEC = os.O_CLOEXEC
_EVENT = struct.Struct("iIII")  # wd, mask, cookie, len; then `len` bytes of name
OVERFLOW = ""  # pseudo-name that asks for a rescan
# g_file_set_contents' temp files (NAME.XXXXXX): half-written, or left by a crashed conmon
_GLIB_TEMP = re.compile(r".+\.[A-Za-z0-9]{6}$")


@dataclass(frozen=True)
class ExitInfo:
    exit_code: int  # signals as 128+n; -1 if the exit file is unreadable
    finished_at_ns: int  # mtime of the exit file: when conmon saw the exit
    oom_killed: bool


def read_exit_file(exit_dir: Path, cid: str, oom_marker: Path | None) -> ExitInfo | None:
    """EXIT_DIR/CID as an ExitInfo (oom_killed: `oom_marker` exists); None if absent."""
    path = exit_dir / cid
    try:
        st = path.stat()
        text = path.read_text()
    except (FileNotFoundError, IsADirectoryError):
        return None
    try:
        code = int(text.strip())
    except ValueError:
        code = -1
    oom = oom_marker is not None and oom_marker.exists()
    return ExitInfo(code, st.st_mtime_ns, oom)


def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)


class Inotify:
    """A non-blocking inotify fd watching one directory for renamed-in files."""

    def __init__(self, directory: Path) -> None:
        libc = _libc()
        fd = libc.inotify_init1(IN_NONBLOCK | IN_CLOEXEC)
        if fd < 0:
            e = ctypes.get_errno()
            raise errors.Internal(f"inotify_init1: {os.strerror(e)} (raise fs.inotify limits?)")
        wd = libc.inotify_add_watch(fd, os.fsencode(directory), IN_MOVED_TO | IN_ONLYDIR)
        if wd < 0:
            e = ctypes.get_errno()
            os.close(fd)
            raise errors.Internal(f"inotify watch on {directory}: {os.strerror(e)}")
        self.fd = fd

    def read_names(self) -> list[str]:
        """Names renamed into the directory since the last call; OVERFLOW if events were
        lost. Never blocks."""
        try:
            buf = os.read(self.fd, 64 << 10)
        except BlockingIOError:
            return []
        return parse_events(buf)

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


def parse_events(buf: bytes) -> list[str]:
    """The names in a buffer of struct inotify_event records."""
    names: list[str] = []
    off = 0
    while off + _EVENT.size <= len(buf):
        _, mask, _, length = _EVENT.unpack_from(buf, off)
        raw = buf[off + _EVENT.size : off + _EVENT.size + length]
        off += _EVENT.size + length
        if mask & IN_Q_OVERFLOW:
            names.append(OVERFLOW)
        elif mask & IN_MOVED_TO and not mask & IN_IGNORED:
            names.append(os.fsdecode(raw.rstrip(b"\0")))
    return names


class ExitWatcher:
    """Async iterator of (cid, ExitInfo) as exit files appear in `exit_dir`.

    `bundles(cid)` gives the container's bundle (where conmon's `oom` marker is); if it
    raises LookupError the exit is still yielded, with oom_killed False. close() ends
    the iteration (a pending `async for` step returns StopAsyncIteration).
    """

    def __init__(self, exit_dir: Path, conmon: Conmon, bundles: Callable[[str], Path]) -> None:
        self._dir = exit_dir
        self._conmon = conmon
        self._bundles = bundles
        self._inotify: Inotify | None = None
        self._pending: asyncio.Queue[str | None] = asyncio.Queue()
        self._closed = False
        self._loop: asyncio.AbstractEventLoop | None = None

    def _start(self) -> None:
        # watch first, then scan: an exit between the two is seen twice, never missed
        self._inotify = Inotify(self._dir)
        self._loop = asyncio.get_running_loop()
        self._loop.add_reader(self._inotify.fd, self._on_readable)
        self._rescan()

    def _rescan(self) -> None:
        for entry in sorted(os.listdir(self._dir)):
            if not entry.startswith(".") and not _GLIB_TEMP.fullmatch(entry):
                self._pending.put_nowait(entry)

    def _on_readable(self) -> None:
        if self._inotify is None:
            return
        for name in self._inotify.read_names():
            if name == OVERFLOW:
                self._rescan()
            else:
                self._pending.put_nowait(name)

    def __aiter__(self) -> ExitWatcher:
        return self

    async def __anext__(self) -> tuple[str, ExitInfo]:
        if self._inotify is None and not self._closed:
            self._start()
        while not self._closed:
            name = await self._pending.get()
            if name is None:
                break
            info = self._info(name)
            if info is not None:
                return name, info
        raise StopAsyncIteration

    def _info(self, cid: str) -> ExitInfo | None:
        """None for names that are not (or no longer) complete exit files."""
        try:
            bundle = self._bundles(cid)
        except LookupError:
            return read_exit_file(self._dir, cid, None)
        return self._conmon.exit_info(self._dir, cid, bundle)

    def close(self) -> None:
        """Stop watching; safe to call more than once and from outside the iteration."""
        if self._closed:
            return
        self._closed = True
        if self._inotify is not None:
            if self._loop is not None and not self._loop.is_closed():
                self._loop.remove_reader(self._inotify.fd)
            self._inotify.close()
            self._inotify = None
        self._pending.put_nowait(None)
