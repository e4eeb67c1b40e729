"""The CRI container log format that conmon writes (`-l k8s-file:PATH`).

One record per line: `TIMESTAMP STREAM TAG DATA\\n`, e.g.

    2026-11-29T07:57:26.510274935+00:00 stdout F out
    2026-11-29T07:57:26.510274935+00:00 stdout P abc

TIMESTAMP is RFC 3339 with nanoseconds, STREAM is `stdout` or `stderr`, TAG is `F` for a
full line (the newline was in the output and is not part of DATA) or `P` for a partial
one (conmon 2.1.6 writes `P` for output cut at 8 KiB and for the last chunk a process
wrote without a newline, e.g. `printf abc` then exit). With a terminal everything is
`stdout` and lines end in `\\r`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

STREAMS = (b"stdout", b"stderr")


@dataclass(frozen=True)
class LogRecord:
    timestamp: str
    stream: str  # "stdout" | "stderr"
    partial: bool
    data: bytes  # without the trailing newline of a full line


def parse_line(line: bytes) -> LogRecord | None:
    """One record from one line (its `\\n` stripped or not); None if it is not one."""
    if line.endswith(b"\n"):
        line = line[:-1]
    parts = line.split(b" ", 3)
    if len(parts) < 3 or parts[1] not in STREAMS or parts[2] not in (b"F", b"P"):
        return None
    data = parts[3] if len(parts) == 4 else b""
    return LogRecord(parts[0].decode("ascii", "replace"), parts[1].decode(), parts[2] == b"P", data)


def record_bytes(rec: LogRecord) -> bytes:
    """The output bytes a record stands for: its data, plus the newline of a full line."""
    return rec.data if rec.partial else rec.data + b"\n"


class OutputCollector:
    """Rebuilds a process's stdout and stderr from CRI log lines, each capped at `limit`
    bytes (what is over is dropped, and `truncated` says so)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.out: dict[str, bytearray] = {"stdout": bytearray(), "stderr": bytearray()}
        self.truncated = False

    def feed(self, line: bytes) -> None:
        rec = parse_line(line)
        if rec is None:
            return
        buf = self.out[rec.stream]
        room = self.limit - len(buf)
        chunk = record_bytes(rec)
        if len(chunk) > room:
            self.truncated = True
            chunk = chunk[: max(room, 0)]
        buf += chunk

    @property
    def full(self) -> bool:
        return all(len(b) >= self.limit for b in self.out.values())


def read_output(path: Path, limit: int) -> tuple[bytes, bytes]:
    """(stdout, stderr) from a CRI log file, each capped at `limit` bytes. Blocking file
    I/O: call it in a worker thread from async code. A missing file is empty output."""
    collector = OutputCollector(limit)
    try:
        with path.open("rb") as f:
            for line in f:
                collector.feed(line)
                if collector.full:
                    break
    except FileNotFoundError:
        pass
    return bytes(collector.out["stdout"]), bytes(collector.out["stderr"])
