"""`podling logs`: a container's log file (the client runs on the node) with crictl's
flags. The stdout stream goes to our stdout, the stderr stream to our stderr."""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Iterable
from pathlib import Path
from typing import BinaryIO, NoReturn

import click
import grpc
from cri_api.v1 import api_pb2 as pb

from podling.cli.connect import Client, fail
from podling.cli.crilog import Assembler, LogFile, LogLine, since_ns
from podling.cli.lookup import client_of, resolve_container

READ_INTERVAL = 0.1  # seconds between reads of a followed file
STATUS_INTERVAL = 0.5  # seconds between "is it still running?" checks while following


class Writer:
    """Writes logical lines to the stream they came from, optionally timestamped, skipping
    those older than `since` (ns since the epoch)."""

    def __init__(self, timestamps: bool, since: int | None) -> None:
        self.timestamps = timestamps
        self.since = since
        self.streams: dict[str, BinaryIO] = {
            "stdout": sys.stdout.buffer,
            "stderr": sys.stderr.buffer,
        }

    def keep(self, line: LogLine) -> bool:
        return self.since is None or line.time_ns >= self.since

    def write(self, lines: Iterable[LogLine]) -> None:
        touched: set[str] = set()
        for line in lines:
            if not self.keep(line):
                continue
            out = self.streams[line.stream]
            if self.timestamps:
                out.write(line.timestamp + b" ")
            out.write(line.content + (b"\n" if line.complete else b""))
            touched.add(line.stream)
        for name in touched:
            self.streams[name].flush()


@click.command()
@click.argument("container")
@click.option("-f", "--follow", is_flag=True, help="keep printing while the container runs")
@click.option("--tail", default=-1, help="only the last N lines (-1: all)")
@click.option("--since", default=None, help="only lines since an RFC 3339 time or a duration (5m)")
@click.option("-t", "--timestamps", is_flag=True, help="prefix each line with its time")
@click.pass_obj
def logs(
    obj: dict[str, object],
    container: str,
    follow: bool,
    tail: int,
    since: str | None,
    timestamps: bool,
) -> None:
    """Print a container's logs."""
    cutoff = since_ns(since, time.time_ns()) if since else None
    if since and cutoff is None:
        fail(f"--since {since!r} is neither an RFC 3339 time nor a duration like 5m or 1h30m")
    writer = Writer(timestamps, cutoff)
    with client_of(obj) as c:
        cid = resolve_container(c, container)
        status = _status(c, cid)
        if status is None:
            fail(f"no such container: {container}")
        log = _open(status)
        try:
            _show(c, cid, log, writer, tail, follow and _running(status))
        except BrokenPipeError:
            _reader_gone()
        except KeyboardInterrupt:
            sys.exit(130)  # Ctrl-C is how `logs -f` is usually ended: no traceback
        finally:
            log.close()


def _reader_gone() -> NoReturn:
    """`podling logs | head`: stop quietly, as cat does (and keep Python from complaining
    at exit that stdout cannot be flushed)."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.dup2(devnull, sys.stderr.fileno())
    sys.exit(0)


def _open(status: pb.ContainerStatus) -> LogFile:
    if not status.log_path:
        fail(f"container {status.id} has no log file (its pod config sets no log_directory)")
    try:
        return LogFile(Path(status.log_path))
    except OSError as e:
        fail(f"cannot read the log of container {status.id} at {status.log_path}: {e.strerror}")


def _show(c: Client, cid: str, log: LogFile, writer: Writer, tail: int, follow: bool) -> None:
    asm = Assembler()
    first = _assemble(asm, log.read() if follow else log.read_final())
    if not follow:
        first += asm.flush()
    first = [line for line in first if writer.keep(line)]
    writer.write(first[-tail:] if tail > 0 else [] if tail == 0 else first)
    if follow:
        _follow(c, cid, log, asm, writer)


def _follow(c: Client, cid: str, log: LogFile, asm: Assembler, writer: Writer) -> None:
    """Print new lines until the container stops (or goes away), then what is left."""
    next_check = time.monotonic() + STATUS_INTERVAL
    while True:
        time.sleep(READ_INTERVAL)
        writer.write(_assemble(asm, log.read()))
        if time.monotonic() < next_check:
            continue
        next_check = time.monotonic() + STATUS_INTERVAL
        status = _status(c, cid)
        if status is None or not _running(status):
            writer.write(_assemble(asm, log.read_final()) + asm.flush())
            return


def _assemble(asm: Assembler, records: list[bytes]) -> list[LogLine]:
    out = []
    for record in records:
        line = asm.feed(record)
        if line is not None:
            out.append(line)
    return out


def _status(c: Client, cid: str) -> pb.ContainerStatus | None:
    try:
        req = pb.ContainerStatusRequest(container_id=cid)
        status: pb.ContainerStatus = c.runtime.ContainerStatus(req, timeout=c.timeout).status
        return status
    except grpc.RpcError as e:
        if e.code() == grpc.StatusCode.NOT_FOUND:
            return None
        raise


def _running(status: pb.ContainerStatus) -> bool:
    return bool(status.state == pb.ContainerState.CONTAINER_RUNNING)


def register(group: click.Group) -> None:
    group.add_command(logs)
