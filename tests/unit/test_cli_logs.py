"""`podling logs`: the CRI log format (partials, streams), --tail / --since / --timestamps,
following a growing file until the container exits, and log rotation."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cri_api.v1 import api_pb2 as pb

from podling.cli import logs as logs_cmd
from podling.cli.crilog import Assembler, LogFile, parse_duration, parse_time, since_ns
from tests.support.fakecri import FakeCRI, invoke

T0 = "2026-01-02T03:04:05.000000001Z"


def stamp(offset_s: float = 0.0, base: datetime | None = None) -> str:
    when = (base or datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)) + timedelta(seconds=offset_s)
    return when.strftime("%Y-%m-%dT%H:%M:%S.%f") + "123+00:00"


def rec(stream: str, tag: str, content: str, offset_s: float = 0.0) -> str:
    return f"{stamp(offset_s)} {stream} {tag} {content}\n"


@pytest.fixture
def cri(tmp_path: Path) -> Iterator[FakeCRI]:
    with FakeCRI(tmp_path / "cri.sock") as fake:
        yield fake


@pytest.fixture
def fast(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(logs_cmd, "READ_INTERVAL", 0.01)
    monkeypatch.setattr(logs_cmd, "STATUS_INTERVAL", 0.05)


def container_with_log(cri: FakeCRI, log: Path, state: int = pb.CONTAINER_EXITED) -> str:
    pod = cri.add_pod("p")
    return cri.add_container(pod, "c", state=state, log_path=str(log))


# ---- the format -------------------------------------------------------------------------


def test_parse_time_keeps_nanoseconds_and_offsets() -> None:
    assert parse_time("1970-01-01T00:00:01.5Z") == 1_500_000_000
    assert parse_time(T0) == parse_time("2026-01-02T04:04:05.000000001+01:00")
    assert parse_time(T0) is not None and parse_time(T0) % 1_000_000_000 == 1  # type: ignore[operator]
    assert parse_time("2026-13-40T00:00:00Z") is None
    assert parse_time("yesterday") is None


def test_parse_duration_go_style() -> None:
    assert parse_duration("5m") == 300 * 10**9
    assert parse_duration("1h30m") == 5400 * 10**9
    assert parse_duration("1.5h") == 5400 * 10**9
    assert parse_duration("300ms") == 3 * 10**8
    assert parse_duration("0") == 0
    for bad in ("", "5", "-5m", "5 m", "m", "5d"):
        assert parse_duration(bad) is None, bad
    assert since_ns("10s", 100 * 10**9) == 90 * 10**9
    assert since_ns("1970-01-01T00:00:02Z", 0) == 2 * 10**9


def test_assembler_joins_partials_per_stream() -> None:
    asm = Assembler()
    got = [
        asm.feed(r.rstrip("\n").encode())
        for r in (
            rec("stdout", "P", "hel"),
            rec("stderr", "F", "oops"),
            rec("stdout", "P", "lo "),
            rec("stdout", "F", "world", 1),
            "garbage line",
            rec("stdout", "X", "unknown tag"),
            rec("stdout", "F", ""),
            rec("stderr", "P", "cut"),
        )
    ]
    lines = [g for g in got if g is not None]
    assert [(x.stream, x.content) for x in lines] == [
        ("stderr", b"oops"),
        ("stdout", b"hello world"),
        ("stdout", b""),
    ]
    assert lines[1].timestamp == stamp().encode()  # the first fragment's time
    (rest,) = asm.flush()
    assert (rest.stream, rest.content, rest.complete) == ("stderr", b"cut", False)
    assert asm.flush() == []


def test_logfile_reads_whole_records_only(tmp_path: Path) -> None:
    path = tmp_path / "c.log"
    path.write_bytes(b"one\ntw")
    log = LogFile(path)
    assert log.read() == [b"one"]
    with path.open("ab") as f:
        f.write(b"o\nthree")
    assert log.read() == [b"two"]
    assert log.read_final() == [b"three"]
    log.close()


# ---- the command ------------------------------------------------------------------------


def test_logs_splits_streams_and_joins_partials(cri: FakeCRI, tmp_path: Path) -> None:
    log = tmp_path / "c.log"
    log.write_text(
        rec("stdout", "F", "first")
        + rec("stderr", "P", "err ")
        + rec("stdout", "P", "sec")
        + rec("stderr", "F", "line")
        + rec("stdout", "F", "ond")
        + rec("stdout", "F", "")
        + rec("stdout", "P", "no newline yet")
    )
    cid = container_with_log(cri, log)
    result = invoke(cri, "logs", cid[:8])
    assert result.exit_code == 0, result.stderr
    assert result.stdout == "first\nsecond\n\nno newline yet"
    assert result.stderr == "err line\n"


def test_logs_timestamps_tail_since(cri: FakeCRI, tmp_path: Path) -> None:
    log = tmp_path / "c.log"
    log.write_text("".join(rec("stdout", "F", f"line{i}", i) for i in range(5)))
    cid = container_with_log(cri, log)
    assert invoke(cri, "logs", "--tail", "2", cid).stdout == "line3\nline4\n"
    assert invoke(cri, "logs", "--tail", "0", cid).stdout == ""
    out = invoke(cri, "logs", "-t", "--tail", "1", cid).stdout
    assert out == f"{stamp(4)} line4\n"
    since = invoke(cri, "logs", "--since", "2026-01-02T03:04:07Z", cid).stdout
    assert since == "line2\nline3\nline4\n"
    since_tail = invoke(cri, "logs", "--since", "2026-01-02T04:04:07+01:00", "--tail", "1", cid)
    assert since_tail.stdout == "line4\n"


def test_logs_since_a_relative_duration(cri: FakeCRI, tmp_path: Path) -> None:
    now = datetime.now(UTC)
    log = tmp_path / "c.log"
    log.write_text(
        f"{stamp(base=now - timedelta(hours=2))} stdout F old\n"
        f"{stamp(base=now - timedelta(minutes=10))} stdout F recent\n"
        f"{stamp(base=now - timedelta(seconds=5))} stderr F fresh\n"
    )
    cid = container_with_log(cri, log)
    one = invoke(cri, "logs", "--since", "1h", cid)
    assert (one.stdout, one.stderr) == ("recent\n", "fresh\n")
    assert invoke(cri, "logs", "--since", "1m", cid).stdout == ""
    assert invoke(cri, "logs", "--since", "2h30m", cid).stdout == "old\nrecent\n"


def test_logs_errors_are_one_line(cri: FakeCRI, tmp_path: Path) -> None:
    cid = container_with_log(cri, tmp_path / "missing.log")
    nolog = cri.add_container(cri.add_pod("q"), "n", log_path="")
    for args, fragment in (
        (["--since", "last tuesday", cid], "neither an RFC 3339 time nor a duration"),
        ([cid], "cannot read the log of container"),
        ([nolog], "has no log file"),
        (["deadbeef"], "no such container: deadbeef"),
    ):
        result = invoke(cri, "logs", *args)
        assert result.exit_code == 1
        assert result.stderr.count("\n") == 1 and fragment in result.stderr, result.stderr


def background(work: Callable[[], None]) -> threading.Thread:
    t = threading.Thread(target=work, daemon=True)
    t.start()
    return t


def test_follow_prints_new_lines_until_the_container_exits(
    cri: FakeCRI, tmp_path: Path, fast: None
) -> None:
    log = tmp_path / "c.log"
    log.write_text(rec("stdout", "F", "before"))
    cid = container_with_log(cri, log, state=pb.CONTAINER_RUNNING)

    def writer() -> None:
        for i in range(5):
            time.sleep(0.05)
            with log.open("a") as f:
                f.write(rec("stdout", "P", f"part{i}-") + rec("stdout", "F", "end"))
                f.write(rec("stderr", "F", f"err{i}"))
        with log.open("a") as f:
            f.write(rec("stdout", "F", "last words"))
        cri.containers[cid].state = pb.CONTAINER_EXITED

    t = background(writer)
    started = time.monotonic()
    result = invoke(cri, "logs", "-f", cid)
    t.join()
    assert result.exit_code == 0, result.stderr
    expected = ["before", *(f"part{i}-end" for i in range(5)), "last words"]
    assert result.stdout.splitlines() == expected
    assert result.stderr.splitlines() == [f"err{i}" for i in range(5)]
    assert time.monotonic() - started < 5
    assert len(cri.requests("ContainerStatus")) >= 3  # it polled while following


def test_follow_with_tail_starts_at_the_end(cri: FakeCRI, tmp_path: Path, fast: None) -> None:
    log = tmp_path / "c.log"
    log.write_text("".join(rec("stdout", "F", f"old{i}") for i in range(10)))
    cid = container_with_log(cri, log, state=pb.CONTAINER_RUNNING)

    def writer() -> None:
        time.sleep(0.1)
        with log.open("a") as f:
            f.write(rec("stdout", "F", "new"))
        time.sleep(0.1)
        cri.containers[cid].state = pb.CONTAINER_EXITED

    t = background(writer)
    result = invoke(cri, "logs", "-f", "--tail", "1", cid)
    t.join()
    assert result.stdout == "old9\nnew\n"


def test_follow_survives_rotation(cri: FakeCRI, tmp_path: Path, fast: None) -> None:
    log = tmp_path / "c.log"
    log.write_text(rec("stdout", "F", "a"))
    cid = container_with_log(cri, log, state=pb.CONTAINER_RUNNING)

    def writer() -> None:
        time.sleep(0.1)
        with log.open("a") as f:
            f.write(rec("stdout", "F", "b"))
        # the runtime's rotation: rename, more to the old file, then a new file at the path
        log.rename(tmp_path / "c.log.1")
        with (tmp_path / "c.log.1").open("a") as f:
            f.write(rec("stdout", "F", "c"))
        time.sleep(0.1)
        log.write_text(rec("stdout", "F", "d"))
        time.sleep(0.1)
        with log.open("a") as f:
            f.write(rec("stdout", "F", "e"))
        time.sleep(0.1)
        cri.containers[cid].state = pb.CONTAINER_EXITED

    t = background(writer)
    result = invoke(cri, "logs", "-f", cid)
    t.join()
    assert result.stdout.split() == ["a", "b", "c", "d", "e"]


def test_follow_after_truncation_reads_from_the_start(
    cri: FakeCRI, tmp_path: Path, fast: None
) -> None:
    log = tmp_path / "c.log"
    log.write_text(rec("stdout", "F", "long line before truncation"))
    cid = container_with_log(cri, log, state=pb.CONTAINER_RUNNING)

    def writer() -> None:
        time.sleep(0.1)
        with log.open("r+") as f:
            f.truncate(0)
        time.sleep(0.1)
        with log.open("a") as f:
            f.write(rec("stdout", "F", "x"))
        time.sleep(0.1)
        cri.containers[cid].state = pb.CONTAINER_EXITED

    t = background(writer)
    result = invoke(cri, "logs", "-f", cid)
    t.join()
    assert result.stdout.split("\n") == ["long line before truncation", "x", ""]


def test_follow_of_an_exited_container_returns_at_once(
    cri: FakeCRI, tmp_path: Path, fast: None
) -> None:
    log = tmp_path / "c.log"
    log.write_text(rec("stdout", "F", "done") + rec("stdout", "P", "half"))
    cid = container_with_log(cri, log)
    result = invoke(cri, "logs", "-f", cid)
    assert result.stdout == "done\nhalf"


def test_follow_stops_when_the_container_is_removed(
    cri: FakeCRI, tmp_path: Path, fast: None
) -> None:
    log = tmp_path / "c.log"
    log.write_text(rec("stdout", "F", "hi"))
    cid = container_with_log(cri, log, state=pb.CONTAINER_RUNNING)

    def remover() -> None:
        time.sleep(0.1)
        del cri.containers[cid]

    t = background(remover)
    result = invoke(cri, "logs", "-f", cid)
    t.join()
    assert (result.exit_code, result.stdout) == (0, "hi\n")


def test_a_closed_pipe_ends_logs_quietly(cri: FakeCRI, tmp_path: Path) -> None:
    log = tmp_path / "c.log"
    log.write_text(rec("stdout", "F", "x" * 100) * 20000)
    cid = container_with_log(cri, log)
    env = {**os.environ, "CONTAINER_RUNTIME_ENDPOINT": cri.endpoint}
    proc = subprocess.Popen(
        [sys.executable, "-m", "podling.cli.client", "logs", cid],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
    )
    assert proc.stdout is not None and proc.stderr is not None
    assert proc.stdout.readline() == b"x" * 100 + b"\n"
    proc.stdout.close()  # as `head -1` does
    err = proc.stderr.read()
    assert proc.wait(30) == 0 and err == b""
