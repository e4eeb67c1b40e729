"""Streaming exec: `runc exec` in the foreground, its stdio wired to a client's streams.

How (and why this way):
- The exec'd process is a copy of the container's OCI process with `args = cmd` and
  `terminal = tty`, written to a process.json in a scratch dir of the bundle; we run
  `runc --root R exec --process FILE --pid-file PID CID` in the foreground. runc waits
  for the process and exits with its code (128+n for a signal), so the exit status comes
  for free; `--detach` + a console socket would leave the process an orphan of PID 1
  whose status nobody can collect.
- Without a tty runc hands its own stdio to the process: our pipes are the process'
  stdin/stdout/stderr. Client stdin EOF closes the stdin pipe.
- With a tty (CRI-O's way): the host PTY from os.openpty() is runc's stdin/stdout/stderr.
  runc allocates the container's PTY itself, puts ours in raw mode and copies between
  the two; it resizes the container's PTY to ours on SIGWINCH. So a resize is
  TIOCSWINSZ on our master plus SIGWINCH to runc (runc is a session leader without a
  controlling terminal, so the kernel would not signal it by itself).
- Cancellation (the client went away): SIGKILL the exec'd process (pid from the
  pid-file) and runc, then free every fd and the scratch dir.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import json
import os
import secrets
import shutil
import signal
import struct
import termios
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from podling import errors
from podling.runtimes.oci import OciRuntime, classify, runtime_message
from podling.streaming.backend import ExecParams, ProcessIO

# After the process exited, how long its output may still take to drain (a background
# child that inherited stdout would otherwise hold the session open forever).
DRAIN_TIMEOUT = 2.0
CHUNK = 32 * 1024
DEFAULT_SIZE = (80, 24)  # (width, height) until the client sends its own


def exec_process(spec_process: dict[str, Any], p: ExecParams) -> dict[str, Any]:
    """The OCI process for `p`: the container's own, with args = cmd and terminal = tty
    (a tty also gets TERM=xterm when the container sets no TERM)."""
    process = dict(spec_process)
    process["args"] = list(p.cmd)
    process["terminal"] = p.tty
    env = [str(e) for e in process.get("env") or []]
    if p.tty and not any(e.startswith("TERM=") for e in env):
        env.append("TERM=xterm")
    process["env"] = env
    process.pop("consoleSize", None)  # the client's size comes in through resizes
    return process


def runc_argv(runtime: OciRuntime, cid: str, scratch: Path) -> list[str]:
    return [
        *runtime.global_args(),
        "--log", str(scratch / "runc.log"), "--log-format", "json",
        "exec", "--process", str(scratch / "process.json"),
        "--pid-file", str(scratch / "pid"), cid,
    ]  # fmt: skip


async def run_exec(
    runtime: OciRuntime, cid: str, bundle: Path, process: dict[str, Any], p: ExecParams,
    io: ProcessIO,
) -> int:  # fmt: skip
    """Run `process` in container `cid` wired to `io`; its exit code once it ended and its
    output was relayed. runc failing to start it → a PodlingError with runc's words."""
    scratch = bundle / f"stream-exec-{secrets.token_hex(6)}"
    scratch.mkdir()
    try:
        (scratch / "process.json").write_text(json.dumps(process))
        argv = runc_argv(runtime, cid, scratch)
        run = _run_tty if p.tty else _run_pipes
        code = await run(argv, scratch, p, io)
        _raise_runc_error(runtime, cid, scratch, code)
        return code
    finally:
        await asyncio.to_thread(shutil.rmtree, scratch, True)


def _raise_runc_error(runtime: OciRuntime, cid: str, scratch: Path, code: int) -> None:
    """runc logs at level error only when it failed itself (not when the process exited
    non-zero): then the client gets runc's message instead of an exit code."""
    if code == 0:
        return
    try:
        text = (scratch / "runc.log").read_text()
    except OSError:
        return
    lines = [line for line in text.splitlines() if '"level":"error"' in line.replace(" ", "")]
    if lines:
        raise classify(f"{runtime.name} exec {cid}", runtime_message("\n".join(lines)))


async def _spawn(
    argv: list[str], stdin: Any, stdout: Any, stderr: Any
) -> asyncio.subprocess.Process:
    try:
        return await asyncio.create_subprocess_exec(
            *argv, stdin=stdin, stdout=stdout, stderr=stderr, start_new_session=True
        )
    except OSError as e:
        raise errors.Unavailable(f"cannot run {argv[0]!r} ({e.strerror}); is it installed?") from e


async def _run_pipes(argv: list[str], scratch: Path, p: ExecParams, io: ProcessIO) -> int:
    pipe, null = asyncio.subprocess.PIPE, asyncio.subprocess.DEVNULL
    proc = await _spawn(argv, pipe if p.stdin else null, pipe, pipe)
    assert proc.stdout is not None and proc.stderr is not None
    outputs = [
        asyncio.create_task(_copy_reader(proc.stdout, io.write_stdout)),
        asyncio.create_task(_copy_reader(proc.stderr, io.write_stderr)),
    ]
    helpers = [asyncio.create_task(_stdin_to_pipe(io, proc.stdin))] if proc.stdin else []
    return await _supervise(proc, scratch, outputs, helpers)


async def _run_tty(argv: list[str], scratch: Path, p: ExecParams, io: ProcessIO) -> int:
    master, slave = os.openpty()  # both non-inheritable; the child gets dup2'd copies
    try:
        os.set_blocking(master, False)
        set_winsize(master, *DEFAULT_SIZE)
        try:
            proc = await _spawn(argv, slave, slave, slave)
        finally:
            os.close(slave)
        outputs = [asyncio.create_task(_copy_fd(master, io.write_stdout))]
        helpers = [asyncio.create_task(_resizes(io, master, proc.pid))]
        if p.stdin:
            helpers.append(asyncio.create_task(_stdin_to_fd(io, master)))
        return await _supervise(proc, scratch, outputs, helpers)
    finally:
        os.close(master)


async def _supervise(
    proc: asyncio.subprocess.Process,
    scratch: Path,
    outputs: list[asyncio.Task[None]],
    helpers: list[asyncio.Task[None]],
) -> int:
    """Wait for runc to exit, then for the output to drain (bounded); on cancellation or
    error kill the process and runc. Every task is finished when this returns."""
    try:
        code = await proc.wait()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.gather(*outputs), DRAIN_TIMEOUT)
    except BaseException:
        await _abort(proc, scratch / "pid")
        raise
    finally:
        for task in (*outputs, *helpers):
            task.cancel()
        await asyncio.gather(*outputs, *helpers, return_exceptions=True)
    return 128 - code if code < 0 else code


async def _abort(proc: asyncio.subprocess.Process, pid_file: Path) -> None:
    """Kill the exec'd process (and its group) and runc; reap runc."""
    _kill_exec(pid_file)
    _kill(proc.pid)
    with contextlib.suppress(TimeoutError):
        await asyncio.shield(asyncio.wait_for(proc.wait(), 5))
    # runc may have started the process after our first look at the pid file
    _kill_exec(pid_file)


def _kill_exec(pid_file: Path) -> None:
    try:
        pid = int(pid_file.read_text().strip())
    except (OSError, ValueError):
        return
    with contextlib.suppress(OSError):
        os.killpg(pid, signal.SIGKILL)  # a tty process leads its own group
    _kill(pid)


def _kill(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.kill(pid, signal.SIGKILL)


def set_winsize(fd: int, width: int, height: int) -> None:
    fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", height, width, 0, 0))


# --- relays ---------------------------------------------------------------------------


async def _copy_reader(
    reader: asyncio.StreamReader, write: Callable[[bytes], Awaitable[None]]
) -> None:
    while data := await reader.read(CHUNK):
        await write(data)


async def _stdin_to_pipe(io: ProcessIO, pipe: asyncio.StreamWriter | None) -> None:
    """Client stdin → the process; client EOF closes the process' stdin."""
    assert pipe is not None
    try:
        while data := await io.read_stdin():
            pipe.write(data)
            await pipe.drain()
    except (BrokenPipeError, ConnectionResetError):
        return  # the process closed its stdin: nothing more to give it
    finally:
        pipe.close()


async def _copy_fd(fd: int, write: Callable[[bytes], Awaitable[None]]) -> None:
    while data := await read_fd(fd):
        await write(data)


async def _stdin_to_fd(io: ProcessIO, fd: int) -> None:
    """Client stdin → the PTY. EOF changes nothing: a terminal has no end of input short
    of hanging up, which would end the session; the process decides when it is done."""
    with contextlib.suppress(OSError):
        while data := await io.read_stdin():
            await write_fd(fd, data)


async def _resizes(io: ProcessIO, master: int, runc_pid: int) -> None:
    async for width, height in io.resizes():
        with contextlib.suppress(OSError):
            set_winsize(master, width, height)
        _signal(runc_pid, signal.SIGWINCH)


def _signal(pid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.kill(pid, sig)


async def _fd_ready(fd: int, writable: bool) -> None:
    loop = asyncio.get_running_loop()
    ready = loop.create_future()

    def wake() -> None:
        if not ready.done():  # level-triggered: may fire again before we remove it
            ready.set_result(None)

    add, remove = (
        (loop.add_writer, loop.remove_writer) if writable else (loop.add_reader, loop.remove_reader)
    )
    add(fd, wake)
    try:
        await ready
    finally:
        remove(fd)


async def read_fd(fd: int) -> bytes:
    """The next chunk from a non-blocking fd; b"" at EOF. A PTY master reads EIO once no
    process holds the slave any more: that is its EOF."""
    while True:
        try:
            return os.read(fd, CHUNK)
        except BlockingIOError:
            await _fd_ready(fd, writable=False)
        except OSError as e:
            if e.errno == errno.EIO:
                return b""
            raise


async def write_fd(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        try:
            view = view[os.write(fd, view) :]
        except BlockingIOError:
            await _fd_ready(fd, writable=True)
