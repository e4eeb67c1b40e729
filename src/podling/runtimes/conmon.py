"""conmon 2.1.6: the per-container monitor that runs `runc create` and outlives podlingd.

What conmon does with the arguments built here (measured on conmon 2.1.6 + runc 1.1.5):
- It reads one byte from `_OCI_STARTPIPE`, forks (the first process writes `-P` and
  exits at once), calls setsid(), becomes a subreaper and runs `runc create`. The
  container pid (or -1 and runc's stderr) comes back on `_OCI_SYNCPIPE`. Bad binaries
  ("exec: ... no such file or directory") already fail here, at create, on runc 1.1.5.
- In its cwd (we use the bundle) and in `-0` (we use the bundle too) it keeps state:
  `ctl` and `winsz` fifos, `attach` (SOCK_SEQPACKET), `exit` and, after a memory-cgroup
  OOM event (cgroup v1: an eventfd on memory.oom_control), an empty `oom` file. The `oom`
  file is written inside conmon's main loop, the exit file after it, so once the exit
  file exists the `oom` marker is final.
- On exit it writes the code (signals: 128+n) to EXIT_DIR/CID with g_file_set_contents
  (a temp file renamed into place) and quits.
- `SOCKDIR/CUUID` is a symlink to the bundle, so the attach socket is
  `SOCKDIR/CID/attach` (we use the container id as the uuid). conmon binds it whatever
  the length; clients must connect with connect_attach() when the path is over the
  107 bytes of sockaddr_un (64-hex ids make that common).
- The ctl fifo (in the bundle) takes `TYPE HEIGHT WIDTH\\n` lines: type 1 resizes the
  terminal, type 2 reopens the log file (both verified).
- Exec-sync (`-e --sync`, no `-b`) makes no fifos or socket; on `-T` expiry it SIGKILLs
  the exec'd process group and answers {"data": -1, "message": "command timed out"}.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import os
import secrets
import shutil
import signal
import socket
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from podling import errors
from podling.runtimes.conmon_ctl import connect_attach, write_ctl
from podling.runtimes.crilog import read_output
from podling.runtimes.exits import ExitInfo, ExitWatcher, read_exit_file
from podling.runtimes.oci import OciRuntime, classify, is_bad_command, runtime_message
from podling.runtimes.syncpipe import SyncMessage, SyncPipe

__all__ = ["Conmon", "Created", "ExecResult", "ExitInfo", "ExitWatcher", "create_args", "exec_args"]

TIMED_OUT_MESSAGE = "command timed out"
CTL_RESIZE = 1
CTL_REOPEN_LOG = 2


@dataclass(frozen=True)
class Created:
    pid: int  # the container's init, host pid namespace
    conmon_pid: int


@dataclass(frozen=True)
class ExecResult:
    exit_code: int  # -1 when timed_out
    stdout: bytes
    stderr: bytes
    timed_out: bool


def create_args(
    conmon: str,
    runtime: OciRuntime,
    *,
    cid: str,
    name: str,
    bundle: Path,
    log_path: Path,
    exit_dir: Path,
    socket_dir: Path,
    terminal: bool,
    stdin: bool,
    stdin_once: bool,
    log_max_size: int = -1,
) -> list[str]:
    """argv for a container's conmon. stdin without stdin_once keeps the container's
    stdin open after an attach client leaves (`--leave-stdin-open`); conmon's default
    closes it when the first client disconnects, which is CRI's StdinOnce."""
    args = [conmon, "--api-version", "1", "-c", cid, "-u", cid, "-n", name]
    args += ["-r", runtime.binary, "-b", str(bundle)]
    args += ["-p", str(bundle / "pidfile"), "-P", str(bundle / "conmon.pid")]
    args += ["-l", f"k8s-file:{log_path}", "--exit-dir", str(exit_dir), "-0", str(bundle)]
    args += ["--socket-dir-path", str(socket_dir), "--syslog"]
    args += runtime_args(runtime)
    if log_max_size > 0:
        args += ["--log-size-max", str(log_max_size)]
    if stdin:
        args.append("-i")
        if not stdin_once:
            args.append("--leave-stdin-open")
    if terminal:
        args.append("-t")
    return args


def runtime_args(runtime: OciRuntime) -> list[str]:
    # `--runtime-arg=VALUE` in one word: VALUE often starts with "--" itself.
    return [f"--runtime-arg={a}" for a in runtime.global_args()[1:]]


def exec_args(
    conmon: str,
    runtime: OciRuntime,
    *,
    cid: str,
    exec_dir: Path,
    timeout: float | None,
) -> list[str]:
    """argv for `conmon -e --sync`. No `-b`: with a bundle conmon would recreate the
    container's ctl/winsz fifos and attach socket there; without one it makes none."""
    args = [conmon, "--api-version", "1", "-c", cid, "-u", f"{cid}-{exec_dir.name}"]
    args += ["-n", cid, "-r", runtime.binary, "-p", str(exec_dir / "pid")]
    args += ["-l", f"k8s-file:{exec_dir / 'output.log'}", "-e"]
    args += ["--exec-process-spec", str(exec_dir / "process.json"), "--sync", "--syslog"]
    args += runtime_args(runtime)
    if timeout is not None and timeout > 0:
        # conmon counts whole seconds: round up rather than cut a command short
        args += ["-T", str(max(1, math.ceil(timeout)))]
    return args


class Conmon:
    """Starts conmon for containers and exec-sync; reads what conmon leaves on disk.

    `create_timeout` bounds the whole `runc create` round trip.
    """

    def __init__(
        self, runtime: OciRuntime, binary: str = "conmon", create_timeout: float = 60.0
    ) -> None:
        self.runtime = runtime
        self.binary = binary
        self.create_timeout = create_timeout

    async def _spawn(
        self, args: list[str], cwd: Path, fds: dict[str, int]
    ) -> asyncio.subprocess.Process:
        """Start conmon in its own session with the given `_OCI_*` pipe fds; our copies
        of those fds are closed whatever happens."""
        env = {**os.environ, **{k: str(v) for k, v in fds.items()}}
        try:
            return await asyncio.create_subprocess_exec(
                *args,
                cwd=cwd,
                env=env,
                pass_fds=tuple(fds.values()),
                start_new_session=True,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.DEVNULL,
                stderr=asyncio.subprocess.PIPE,
            )
        except OSError as e:
            raise errors.Unavailable(
                f"cannot run conmon {self.binary!r} ({e.strerror}); is it installed?"
            ) from e
        finally:
            for fd in fds.values():
                os.close(fd)

    async def create(
        self,
        *,
        cid: str,
        name: str,
        bundle: Path,
        log_path: Path,
        exit_dir: Path,
        socket_dir: Path,
        terminal: bool,
        stdin: bool,
        stdin_once: bool,
        log_max_size: int = -1,
    ) -> Created:
        """Run `runc create` under a new conmon; the container is left in `created` state
        (OciRuntime.start starts it). conmon outlives this process. On failure the
        runtime's words come back in errors.Internal and the runtime state is removed."""
        args = create_args(
            self.binary, self.runtime, cid=cid, name=name, bundle=bundle,
            log_path=log_path, exit_dir=exit_dir, socket_dir=socket_dir,
            terminal=terminal, stdin=stdin, stdin_once=stdin_once, log_max_size=log_max_size,
        )  # fmt: skip
        sync_r, sync_w = os.pipe()
        start_r, start_w = os.pipe()
        pipe = SyncPipe(sync_r)
        try:
            with contextlib.closing(os.fdopen(start_w, "wb", buffering=0)) as start:
                proc = await self._spawn(
                    args, bundle, {"_OCI_SYNCPIPE": sync_w, "_OCI_STARTPIPE": start_r}
                )
                with contextlib.suppress(BrokenPipeError):  # died early: see the answer
                    start.write(b"0")  # go: conmon blocks on this before it forks
            msg = await self._create_answer(pipe, proc, cid, bundle)
        finally:
            pipe.close()
        if msg.data < 0:
            await self._rollback(cid)
            text = runtime_message(msg.message or "")
            text = f"conmon create {cid}: {text or 'failed without a message'}"
            if is_bad_command(text):  # the config's command, not the node, is at fault
                raise errors.FailedPrecondition(text)
            raise errors.Internal(text)
        return Created(pid=msg.data, conmon_pid=_read_pid(bundle / "conmon.pid"))

    async def _create_answer(
        self, pipe: SyncPipe, proc: asyncio.subprocess.Process, cid: str, bundle: Path
    ) -> SyncMessage:
        """The sync-pipe answer to a create, after the first conmon process has exited."""
        try:
            msg = await pipe.next(self.create_timeout)
            _, err = await asyncio.wait_for(proc.communicate(), self.create_timeout)
        except TimeoutError:
            _kill_quietly(proc.pid)
            with contextlib.suppress(errors.PodlingError):
                _kill_quietly(_read_pid(bundle / "conmon.pid"))
            await proc.wait()
            raise errors.DeadlineExceeded(
                f"conmon create {cid}: no answer in {self.create_timeout:.0f}s"
            ) from None
        if msg is None:
            text = err.decode(errors="replace").strip() or f"exit status {proc.returncode}"
            raise errors.Internal(f"conmon create {cid}: conmon exited early: {text}")
        return msg

    async def _rollback(self, cid: str) -> None:
        # runc usually cleans up a failed create itself; make sure nothing stays behind
        with contextlib.suppress(errors.PodlingError):
            await self.runtime.delete(cid, force=True)

    async def exec_sync(
        self,
        *,
        cid: str,
        bundle: Path,
        process: dict[str, Any],
        timeout: float | None,
        max_output: int = 16 << 20,
    ) -> ExecResult:
        """Run OCI `process` in the running container `cid` and wait for it.

        Output is kept in a scratch dir under `bundle` (removed afterwards) and each of
        stdout/stderr is capped at `max_output` bytes. After `timeout` seconds (rounded
        up to whole seconds; None or <= 0: no limit) conmon SIGKILLs the process group
        and the result says timed_out. If the caller is cancelled, the process is killed.
        A container that is not running → errors.FailedPrecondition; a process runc
        cannot start (missing binary, ...) → errors.Internal with runc's words.
        """
        exec_dir = bundle / f"exec-{secrets.token_hex(6)}"
        exec_dir.mkdir()
        try:
            (exec_dir / "process.json").write_text(json.dumps(process))
            args = exec_args(self.binary, self.runtime, cid=cid, exec_dir=exec_dir, timeout=timeout)
            code, timed_out = await self._exec(args, cid, exec_dir, timeout)
            out, err = await asyncio.to_thread(read_output, exec_dir / "output.log", max_output)
        finally:
            await asyncio.to_thread(shutil.rmtree, exec_dir, True)
        return ExecResult(exit_code=code, stdout=out, stderr=err, timed_out=timed_out)

    async def _exec(
        self, args: list[str], cid: str, exec_dir: Path, timeout: float | None
    ) -> tuple[int, bool]:
        """(exit code, timed out) of one exec-sync conmon run."""
        sync_r, sync_w = os.pipe()
        pipe = SyncPipe(sync_r)
        # conmon enforces `timeout`; ours only catches a conmon that hangs
        outer = None if timeout is None or timeout <= 0 else math.ceil(timeout) + 30.0
        try:
            proc = await self._spawn(args, exec_dir, {"_OCI_SYNCPIPE": sync_w})
            msg, err = await self._exec_messages(pipe, proc, outer, exec_dir)
        finally:
            pipe.close()
        return self._exec_outcome(cid, msg, err)

    async def _exec_messages(
        self,
        pipe: SyncPipe,
        proc: asyncio.subprocess.Process,
        outer: float | None,
        exec_dir: Path,
    ) -> tuple[SyncMessage | None, bytes]:
        """The final sync message (exit code or error) and conmon's stderr."""
        pid = 0
        try:
            msg = await pipe.next(outer)
            if msg is not None and msg.data > 0:
                pid = msg.data  # the exec'd process; the exit code follows
                msg = await pipe.next(outer)
            _, err = await proc.communicate()
        except BaseException:
            # cancelled, or conmon hung: leave neither the process nor conmon behind
            await _abort_exec(proc, pid, exec_dir)
            raise
        return msg, err

    def _exec_outcome(self, cid: str, msg: SyncMessage | None, err: bytes) -> tuple[int, bool]:
        if msg is None:
            text = err.decode(errors="replace").strip() or "no exit code"
            raise errors.Internal(f"conmon exec {cid}: conmon exited early: {text}")
        if msg.data < 0 and msg.message == TIMED_OUT_MESSAGE:
            return -1, True
        if msg.data < 0:
            text = runtime_message(msg.message or "") or "failed without a message"
            raise classify(f"{self.runtime.name} exec {cid}", text)
        return msg.data, False

    def exit_info(self, exit_dir: Path, cid: str, bundle: Path) -> ExitInfo | None:
        """How the container ended, or None while it runs (no exit file yet).

        The code is EXIT_DIR/CID; the time is that file's mtime; oom_killed is conmon's
        `oom` marker in the bundle (written on any OOM kill in the container's memory
        cgroup, as CRI-O reports it). An unreadable exit file reads as exit code -1."""
        return read_exit_file(exit_dir, cid, bundle / "oom")

    def attach_socket(self, socket_dir: Path, cid: str) -> Path:
        """The container's attach socket (SOCK_SEQPACKET; packets start with 2=stdout,
        3=stderr; what is sent goes to stdin when created with stdin)."""
        return socket_dir / cid / "attach"

    def connect_attach(self, socket_dir: Path, cid: str) -> socket.socket:
        """A connected, non-blocking socket to the container's attach socket, however
        long its path (see conmon_ctl.connect_attach)."""
        return connect_attach(self.attach_socket(socket_dir, cid))

    def reopen_log(self, bundle: Path) -> None:
        """Make conmon reopen its log file at log_path (after the caller renamed it)."""
        write_ctl(bundle, f"{CTL_REOPEN_LOG} 0 0\n")

    def resize(self, bundle: Path, height: int, width: int) -> None:
        """Resize the container's terminal (only meaningful with terminal=True)."""
        if height < 0 or width < 0:
            raise errors.InvalidArgument(f"terminal size {height}x{width}: must not be negative")
        write_ctl(bundle, f"{CTL_RESIZE} {height} {width}\n")


async def wait_gone(bundle: Path, timeout: float = 5.0) -> None:
    """Wait (up to `timeout` seconds) until the conmon of `bundle` has quit. It writes the
    bundle's `exit` file after its container is gone, so a bundle removed before that can
    be left behind holding just that file. No conmon.pid (never created): no wait."""
    try:
        pid = _read_pid(bundle / "conmon.pid")
    except errors.PodlingError:
        return
    deadline = time.monotonic() + timeout
    while _is_conmon(pid) and time.monotonic() < deadline:
        await asyncio.sleep(0.02)


def _is_conmon(pid: int) -> bool:
    """A live (not zombie) conmon process: the pid may be reused once it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    name, state = stat[stat.find("(") + 1 : stat.rfind(")")], stat[stat.rfind(")") + 2 :][:1]
    return name == "conmon" and state != "Z"


def _read_pid(path: Path) -> int:
    try:
        return int(path.read_text().strip())
    except (OSError, ValueError) as e:
        raise errors.Internal(f"{path}: no pid from conmon ({e})") from e


async def _abort_exec(proc: asyncio.subprocess.Process, pid: int, exec_dir: Path) -> None:
    """Kill an exec-sync's conmon, then its process. conmon goes first: runc exec dies
    with it (PDEATHSIG) and cannot start the process after we looked for its pid."""
    _kill_quietly(proc.pid)
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(proc.wait(), 5)
    if pid <= 0:
        with contextlib.suppress(errors.PodlingError):
            pid = _read_pid(exec_dir / "pid")  # runc wrote it; conmon had not sent it yet
    if pid > 0:
        _kill_quietly(pid)


def _kill_quietly(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.kill(pid, signal.SIGKILL)
