"""conmon/runc argument building, CRI log parsing, sync messages, exit files (no root)."""

from __future__ import annotations

import os
import struct
from pathlib import Path

import pytest

from podling import errors
from podling.runtimes import crilog
from podling.runtimes.conmon import Conmon, create_args, exec_args
from podling.runtimes.exits import IN_MOVED_TO, IN_Q_OVERFLOW, OVERFLOW, parse_events
from podling.runtimes.oci import OciRuntime, classify, runtime_message
from podling.runtimes.syncpipe import SyncMessage, parse_message

RUNC = OciRuntime("runc", "/usr/sbin/runc", Path("/state/runc"), ["--systemd-cgroup"])


def _create(**kw: object) -> list[str]:
    base: dict[str, object] = {
        "cid": "c1",
        "name": "web",
        "bundle": Path("/b/c1"),
        "log_path": Path("/logs/c1.log"),
        "exit_dir": Path("/state/exits"),
        "socket_dir": Path("/state/attach"),
        "terminal": False,
        "stdin": False,
        "stdin_once": False,
    }
    base.update(kw)
    return create_args("conmon", RUNC, **base)  # type: ignore[arg-type]


def _opt(args: list[str], flag: str) -> str:
    return args[args.index(flag) + 1]


def test_global_args_and_runtime_args() -> None:
    assert RUNC.global_args() == ["/usr/sbin/runc", "--root", "/state/runc", "--systemd-cgroup"]
    args = _create()
    assert [a for a in args if a.startswith("--runtime-arg")] == [
        "--runtime-arg=--root",
        "--runtime-arg=/state/runc",
        "--runtime-arg=--systemd-cgroup",
    ]


def test_create_args_core_flags() -> None:
    args = _create()
    assert args[:3] == ["conmon", "--api-version", "1"]
    assert _opt(args, "-c") == "c1" and _opt(args, "-u") == "c1" and _opt(args, "-n") == "web"
    assert _opt(args, "-r") == "/usr/sbin/runc"
    assert _opt(args, "-b") == "/b/c1"
    assert _opt(args, "-p") == "/b/c1/pidfile"
    assert _opt(args, "-P") == "/b/c1/conmon.pid"
    assert _opt(args, "-l") == "k8s-file:/logs/c1.log"
    assert _opt(args, "--exit-dir") == "/state/exits"
    assert _opt(args, "-0") == "/b/c1"
    assert _opt(args, "--socket-dir-path") == "/state/attach"
    for absent in ("-i", "-t", "--leave-stdin-open", "--log-size-max", "-e", "--sync"):
        assert absent not in args


@pytest.mark.parametrize(
    ("stdin", "once", "expected"),
    [
        (False, False, []),
        (False, True, []),
        (True, True, ["-i"]),
        (True, False, ["-i", "--leave-stdin-open"]),
    ],
)
def test_create_args_stdin(stdin: bool, once: bool, expected: list[str]) -> None:
    args = _create(stdin=stdin, stdin_once=once)
    assert [a for a in args if a in ("-i", "--leave-stdin-open")] == expected


def test_create_args_terminal_and_log_size() -> None:
    args = _create(terminal=True, log_max_size=1 << 20)
    assert "-t" in args
    assert _opt(args, "--log-size-max") == str(1 << 20)


def test_exec_args() -> None:
    args = exec_args("conmon", RUNC, cid="c1", exec_dir=Path("/b/c1/exec-ab"), timeout=2.2)
    assert "-e" in args and "--sync" in args
    assert "-b" not in args and "--exit-dir" not in args and "-0" not in args
    assert _opt(args, "--exec-process-spec") == "/b/c1/exec-ab/process.json"
    assert _opt(args, "-l") == "k8s-file:/b/c1/exec-ab/output.log"
    assert _opt(args, "-p") == "/b/c1/exec-ab/pid"
    assert _opt(args, "-c") == "c1"
    assert _opt(args, "-u") != "c1"  # its own uuid: never the container's attach name
    assert _opt(args, "-T") == "3"  # whole seconds, rounded up


@pytest.mark.parametrize(("timeout", "flag"), [(None, None), (0, None), (0.2, "1"), (5, "5")])
def test_exec_args_timeout(timeout: float | None, flag: str | None) -> None:
    args = exec_args("conmon", RUNC, cid="c", exec_dir=Path("/x"), timeout=timeout)
    assert (_opt(args, "-T") if "-T" in args else None) == flag


def test_runtime_binary_resolved_on_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake = tmp_path / "myrunc"
    fake.write_text("#!/bin/sh\n")
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", str(tmp_path))
    assert OciRuntime("r", "myrunc", tmp_path).binary == str(fake)


# ---- runtime messages ---------------------------------------------------------------


def test_runtime_message_json_and_logrus() -> None:
    js = b'{"level":"error","msg":"container does not exist","time":"2026-01-01T00:00:00Z"}\n'
    assert runtime_message(js) == "container does not exist"
    logrus = (
        'time="2026-11-29T07:58:19Z" level=error msg="runc create failed: unable to start '
        'container process: exec: \\"/nope\\": stat /nope: no such file or directory"\n'
    )
    assert runtime_message(logrus) == (
        'runc create failed: unable to start container process: exec: "/nope": '
        "stat /nope: no such file or directory"
    )
    assert runtime_message(b"  plain words\n") == "plain words"
    assert runtime_message(b"") == ""


def test_classify() -> None:
    assert isinstance(classify("runc kill c", "container does not exist"), errors.NotFound)
    err = classify("runc start c", "container not in created state")
    assert isinstance(err, errors.FailedPrecondition)
    assert err.message == "runc start c: container not in created state"
    assert isinstance(classify("runc exec c", "cannot exec in a stopped container: not running"),
                      errors.FailedPrecondition)  # fmt: skip
    assert isinstance(classify("runc update c", "invalid memory value"), errors.Internal)
    # a missing exec binary is not a missing container, nor a runtime fault: the request's
    err = classify("x", 'exec: "foo": executable file not found')
    assert isinstance(err, errors.FailedPrecondition) and not isinstance(err, errors.NotFound)


# ---- sync pipe --------------------------------------------------------------------


def test_parse_sync_messages() -> None:
    assert parse_message(b'{"data": 10515}\n') == SyncMessage(10515)
    assert parse_message(b'{"data": -1, "message": "command timed out"}\n') == SyncMessage(
        -1, "command timed out"
    )
    for bad in (b"garbage", b'{"pid": 3}', b'{"data": "3"}'):
        with pytest.raises(errors.Internal):
            parse_message(bad)


# ---- CRI log ------------------------------------------------------------------------


def test_parse_cri_lines() -> None:
    rec = crilog.parse_line(b"2026-11-29T07:57:26.510274935+00:00 stdout F out\n")
    assert rec == crilog.LogRecord("2026-11-29T07:57:26.510274935+00:00", "stdout", False, b"out")
    rec = crilog.parse_line(b"2026-11-29T07:57:26.5+00:00 stderr P a b  c")
    assert rec is not None and rec.partial and rec.stream == "stderr" and rec.data == b"a b  c"
    empty = crilog.parse_line(b"2026-11-29T07:57:26.5+00:00 stdout F \n")
    assert empty is not None and empty.data == b""
    assert crilog.parse_line(b"2026-11-29T07:57:26.5+00:00 stdout F") == crilog.LogRecord(
        "2026-11-29T07:57:26.5+00:00", "stdout", False, b""
    )
    for bad in (b"", b"nonsense", b"ts stdin F x", b"ts stdout X x"):
        assert crilog.parse_line(bad) is None


def test_read_output_rebuilds_streams(tmp_path: Path) -> None:
    log = tmp_path / "exec.log"
    log.write_bytes(
        b"T stdout F hello\n"
        b"T stdout P par\n"
        b"T stdout F tial\n"
        b"T stderr F oops\n"
        b"garbage line\n"
        b"T stdout P end"
    )
    assert crilog.read_output(log, 1 << 20) == (b"hello\npartial\nend", b"oops\n")
    assert crilog.read_output(tmp_path / "missing", 10) == (b"", b"")


def test_output_cap(tmp_path: Path) -> None:
    log = tmp_path / "big.log"
    log.write_bytes(b"".join(b"T stdout F 0123456789\n" for _ in range(100)) + b"T stderr F e\n")
    out, err = crilog.read_output(log, 25)
    assert out == b"0123456789\n0123456789\n012"
    assert err == b"e\n"  # stderr after a full stdout is still read
    c = crilog.OutputCollector(3)
    c.feed(b"T stdout F abcdef")
    assert c.truncated and bytes(c.out["stdout"]) == b"abc"


# ---- exit files and inotify records ---------------------------------------------------


def _event(mask: int, name: bytes) -> bytes:
    padded = name + b"\0" * (16 - len(name) % 16) if name else b""
    return struct.pack("iIII", 1, mask, 0, len(padded)) + padded


def test_parse_inotify_events() -> None:
    buf = _event(IN_MOVED_TO, b"abc") + _event(0x8, b"tmp.XYZ") + _event(IN_Q_OVERFLOW, b"")
    buf += _event(IN_MOVED_TO, b"x" * 20)
    assert parse_events(buf) == ["abc", OVERFLOW, "x" * 20]


def test_exit_info(tmp_path: Path) -> None:
    exits, bundle = tmp_path / "exits", tmp_path / "bundle"
    exits.mkdir()
    bundle.mkdir()
    conmon = Conmon(RUNC)
    assert conmon.exit_info(exits, "c1", bundle) is None
    (exits / "c1").write_text("137")
    os.utime(exits / "c1", ns=(1, 1_700_000_000_123_456_789))
    info = conmon.exit_info(exits, "c1", bundle)
    assert info is not None
    assert (info.exit_code, info.finished_at_ns, info.oom_killed) == (
        137,
        1_700_000_000_123_456_789,
        False,
    )
    (bundle / "oom").touch()
    info = conmon.exit_info(exits, "c1", bundle)
    assert info is not None and info.oom_killed
    (exits / "c1").write_text("junk")
    info = conmon.exit_info(exits, "c1", bundle)
    assert info is not None and info.exit_code == -1


def test_attach_socket_path() -> None:
    assert Conmon(RUNC).attach_socket(Path("/s"), "c1") == Path("/s/c1/attach")


def test_ctl_without_conmon(tmp_path: Path) -> None:
    """No conmon reading the ctl fifo → FailedPrecondition, never a blocking open."""
    conmon = Conmon(RUNC)
    with pytest.raises(errors.FailedPrecondition):
        conmon.reopen_log(tmp_path)
    os.mkfifo(tmp_path / "ctl")
    with pytest.raises(errors.FailedPrecondition):
        conmon.resize(tmp_path, 24, 80)
    with pytest.raises(errors.InvalidArgument):
        conmon.resize(tmp_path, -1, 80)


async def test_missing_conmon_binary_is_unavailable(tmp_path: Path) -> None:
    conmon = Conmon(RUNC, binary=str(tmp_path / "no-conmon"))
    with pytest.raises(errors.Unavailable, match="no-conmon"):
        await conmon.create(
            cid="c", name="n", bundle=tmp_path, log_path=tmp_path / "l", exit_dir=tmp_path,
            socket_dir=tmp_path, terminal=False, stdin=False, stdin_once=False,
        )  # fmt: skip


async def test_conmon_exiting_without_an_answer(tmp_path: Path) -> None:
    fake = tmp_path / "fake-conmon"
    fake.write_text("#!/bin/sh\necho 'conmon: option parsing failed: bad' >&2\nexit 1\n")
    fake.chmod(0o755)
    conmon = Conmon(RUNC, binary=str(fake))
    with pytest.raises(errors.Internal, match="conmon exited early: conmon: option parsing"):
        await conmon.create(
            cid="c", name="n", bundle=tmp_path, log_path=tmp_path / "l", exit_dir=tmp_path,
            socket_dir=tmp_path, terminal=False, stdin=False, stdin_once=False,
        )  # fmt: skip
    with pytest.raises(errors.Internal, match="conmon exec c: conmon exited early"):
        await conmon.exec_sync(cid="c", bundle=tmp_path, process={}, timeout=1)
    assert [p.name for p in tmp_path.iterdir()] == ["fake-conmon"]  # scratch dir removed


def _fake_runtime(tmp_path: Path, stderr: str, rc: int, stdout: str = "") -> OciRuntime:
    script = tmp_path / "fake-runc"
    script.write_text(
        f'#!/bin/sh\necho "$@" >> {tmp_path}/calls\ncat > /dev/null\n'
        f"printf '%s' '{stdout}'\nprintf '%s\\n' '{stderr}' >&2\nexit {rc}\n"
    )
    script.chmod(0o755)
    return OciRuntime("fake", str(script), tmp_path / "root")


async def test_runtime_errors_are_classified(tmp_path: Path) -> None:
    gone = _fake_runtime(tmp_path, '{"level":"error","msg":"container does not exist"}', 1)
    with pytest.raises(errors.NotFound, match=r"^fake start c1: container does not exist$"):
        await gone.start("c1")
    assert await gone.state("c1") is None
    await gone.kill("c1", 15)  # gone: fine
    await gone.delete("c1")  # gone: fine
    calls = (tmp_path / "calls").read_text().splitlines()
    assert calls[0] == f"--root {tmp_path}/root --log-format json start c1"
    assert calls[2] == f"--root {tmp_path}/root --log-format json kill c1 15"


async def test_runtime_update_and_state(tmp_path: Path) -> None:
    rt = _fake_runtime(tmp_path, "", 0, stdout='{"id": "c1", "status": "running"}')
    assert await rt.state("c1") == {"id": "c1", "status": "running"}
    await rt.update("c1", {"memory": {"limit": 1}})
    await rt.kill("c1", 9, all_processes=True)
    calls = (tmp_path / "calls").read_text().splitlines()
    assert calls[1].endswith("update --resources - c1")
    assert calls[2].endswith("kill --all c1 9")
    bad = _fake_runtime(tmp_path, "invalid resources", 1)
    with pytest.raises(errors.Internal, match="fake update c1: invalid resources"):
        await bad.update("c1", {})
    assert not await _fake_runtime(tmp_path, "", 0, stdout='{"status": "running"}').wait_stopped(
        "c1", 0.1
    )


def test_ctl_message_format(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "ctl")
    reader = os.open(tmp_path / "ctl", os.O_RDONLY | os.O_NONBLOCK)
    try:
        conmon = Conmon(RUNC)
        conmon.resize(tmp_path, 40, 100)
        conmon.reopen_log(tmp_path)
        assert os.read(reader, 100) == b"1 40 100\n2 0 0\n"
    finally:
        os.close(reader)
