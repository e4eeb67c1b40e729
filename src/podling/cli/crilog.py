"""Reading CRI container log files: `TIMESTAMP STREAM TAG CONTENT` lines, where TAG `P` marks
a partial line continued by the stream's next record and `F` a full one. Also the time
arguments of `podling logs --since` (RFC 3339, or a Go duration such as 1h30m)."""

from __future__ import annotations

import calendar
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

RFC3339 = re.compile(
    r"(\d{4})-(\d{2})-(\d{2})[Tt ](\d{2}):(\d{2}):(\d{2})(?:\.(\d{1,9}))?([Zz]|[+-]\d{2}:\d{2})$"
)
DURATION_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|μs|ms|s|m|h)")
UNIT_NS = {
    "ns": 1,
    "us": 1_000,
    "µs": 1_000,
    "μs": 1_000,
    "ms": 1_000_000,
    "s": 1_000_000_000,
    "m": 60_000_000_000,
    "h": 3_600_000_000_000,
}
STREAMS = (b"stdout", b"stderr")


def parse_time(text: str) -> int | None:
    """Nanoseconds since the epoch of an RFC 3339 time (nanosecond fractions kept); None if
    `text` is not one."""
    m = RFC3339.match(text)
    if m is None:
        return None
    year, month, day, hour, minute, sec = (int(g) for g in m.groups()[:6])
    try:
        secs = calendar.timegm((year, month, day, hour, minute, sec, 0, 0, 0))
    except ValueError:
        return None
    frac = int((m.group(7) or "0").ljust(9, "0"))
    zone = m.group(8)
    if zone not in ("Z", "z"):
        sign = -1 if zone[0] == "-" else 1
        secs -= sign * (int(zone[1:3]) * 3600 + int(zone[4:6]) * 60)
    return secs * 1_000_000_000 + frac


def parse_duration(text: str) -> int | None:
    """Nanoseconds of a Go duration ('300ms', '5m', '1h30m', '1.5h'); None if it is not one.
    Negative durations are refused (there is no future to show logs since)."""
    if text == "0":
        return 0
    pos, total = 0, 0.0
    while pos < len(text):
        m = DURATION_PART.match(text, pos)
        if m is None:
            return None
        total += float(m.group(1)) * UNIT_NS[m.group(2)]
        pos = m.end()
    return int(total) if text else None


def since_ns(text: str, now_ns: int) -> int | None:
    """--since as an absolute time in ns: an RFC 3339 time, or `now` minus a duration."""
    when = parse_time(text)
    if when is not None:
        return when
    ago = parse_duration(text)
    return None if ago is None else now_ns - ago


@dataclass(frozen=True)
class LogLine:
    """One logical line: partial records of a stream joined. `complete` is False only for a
    trailing partial that never got its end (the container stopped mid-line)."""

    timestamp: bytes  # as the runtime wrote it
    time_ns: int
    stream: str  # "stdout" or "stderr"
    content: bytes  # without the newline
    complete: bool = True


class Assembler:
    """Turns CRI log records into logical lines. Malformed records are skipped (a log file
    may end mid-write, or carry lines the runtime did not write in this format)."""

    def __init__(self) -> None:
        self._partial: dict[bytes, tuple[bytes, int, list[bytes]]] = {}

    def feed(self, record: bytes) -> LogLine | None:
        """The logical line `record` completes, if any."""
        parts = record.split(b" ", 3)
        if len(parts) < 3 or parts[1] not in STREAMS:
            return None
        stamp, stream, tag = parts[0], parts[1], parts[2].split(b":", 1)[0]
        content = parts[3] if len(parts) == 4 else b""
        when = parse_time(stamp.decode("ascii", "replace"))
        if when is None or tag not in (b"P", b"F"):
            return None
        first_stamp, first_ns, pieces = self._partial.pop(stream, (stamp, when, []))
        pieces.append(content)
        if tag == b"P":
            self._partial[stream] = (first_stamp, first_ns, pieces)
            return None
        return LogLine(first_stamp, first_ns, stream.decode(), b"".join(pieces))

    def flush(self) -> list[LogLine]:
        """Partial lines still waiting for their end, oldest first."""
        out = [
            LogLine(stamp, when, stream.decode(), b"".join(pieces), complete=False)
            for stream, (stamp, when, pieces) in self._partial.items()
        ]
        self._partial.clear()
        return sorted(out, key=lambda line: line.time_ns)


class LogFile:
    """Reads a growing CRI log file record by record. The runtime rotates logs by renaming
    the file and writing a new one at the same path: the old file is read to its end, then
    the new one from its start. A file truncated in place is read again from its start."""

    def __init__(self, path: Path) -> None:
        """Opens `path`; OSError if it cannot be read."""
        self.path = path
        self._file: BinaryIO = path.open("rb")
        self._pending = b""

    def close(self) -> None:
        self._file.close()

    def read(self) -> list[bytes]:
        """The whole records written since the last call (without their newlines)."""
        records = self._drain()
        if self._truncated():
            self._file.seek(0)
            self._pending = b""
            records += self._drain()
        elif self._replaced():
            records += self._finish_pending()
            self._file.close()
            self._file = self.path.open("rb")
            records += self._drain()
        return records

    def read_final(self) -> list[bytes]:
        """Everything left, including a last record that lacks its newline."""
        return self.read() + self._finish_pending()

    def _drain(self) -> list[bytes]:
        data = self._pending + self._file.read()
        *records, self._pending = data.split(b"\n")
        return records

    def _finish_pending(self) -> list[bytes]:
        rest, self._pending = self._pending, b""
        return [rest] if rest else []

    def _stat_path(self) -> os.stat_result | None:
        try:
            return os.stat(self.path)
        except OSError:
            return None  # renamed away and not yet recreated: keep reading the old file

    def _replaced(self) -> bool:
        st = self._stat_path()
        mine = os.fstat(self._file.fileno())
        return st is not None and (st.st_ino, st.st_dev) != (mine.st_ino, mine.st_dev)

    def _truncated(self) -> bool:
        st = self._stat_path()
        mine = os.fstat(self._file.fileno())
        same = st is not None and (st.st_ino, st.st_dev) == (mine.st_ino, mine.st_dev)
        return same and mine.st_size < self._file.tell()
