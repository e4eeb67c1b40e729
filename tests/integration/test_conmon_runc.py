"""conmon 2.1.6 + runc 1.1.5 driven through OciRuntime and Conmon, with real containers.

Bundles are busybox rootfs + a hand-written config.json (tests/support/bundles.py);
cgroups live under /podling-ct-test/<cid>, removed with their parent in teardown.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import json
import os
import signal
import stat
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from podling import errors
from podling.runtimes import crilog
from podling.runtimes.conmon import Conmon, Created, ExitInfo, ExitWatcher
from podling.runtimes.oci import OciRuntime
from tests.support.bundles import (
    CGROUP_PARENT,
    CGROUP_ROOT,
    cgroup_dirs,
    make_bundle,
    new_cid,
    process,
    remove_cgroup_tree,
)

pytestmark = pytest.mark.root

RUNC = "/usr/sbin/runc"
PR_SET_CHILD_SUBREAPER = 36
SRC = Path(__file__).resolve().parents[2] / "src"


@dataclass
class Env:
    tmp: Path
    runtime: OciRuntime
    conmon: Conmon
    exits: Path
    socks: Path
    bundles: dict[str, Path] = field(default_factory=dict)

    def log_path(self, cid: str) -> Path:
        return self.tmp / "logs" / f"{cid}.log"

    def bundle(self, args: Sequence[str], **kw: object) -> tuple[str, Path]:
        cid = new_cid()
        bundle = make_bundle(
            self.tmp / "bundles" / cid,
            args,
            cgroup=f"/{CGROUP_PARENT}/{cid}",
            **kw,  # type: ignore[arg-type]
        )
        self.bundles[cid] = bundle
        return cid, bundle

    async def create(
        self, cid: str, *, terminal: bool = False, stdin: bool = False, stdin_once: bool = False
    ) -> Created:
        return await self.conmon.create(
            cid=cid,
            name=f"name-{cid}",
            bundle=self.bundles[cid],
            log_path=self.log_path(cid),
            exit_dir=self.exits,
            socket_dir=self.socks,
            terminal=terminal,
            stdin=stdin,
            stdin_once=stdin_once,
        )

    async def run(self, args: Sequence[str], **kw: object) -> tuple[str, Path, Created]:
        """create + start a container running `args`."""
        terminal = bool(kw.pop("terminal", False))
        stdin = bool(kw.pop("stdin", False))
        cid, bundle = self.bundle(args, terminal=terminal, **kw)
        created = await self.create(cid, terminal=terminal, stdin=stdin)
        await self.runtime.start(cid)
        return cid, bundle, created

    async def wait_exit(self, cid: str, timeout: float = 15.0) -> ExitInfo:
        deadline = time.monotonic() + timeout
        while (info := self.conmon.exit_info(self.exits, cid, self.bundles[cid])) is None:
            assert time.monotonic() < deadline, f"{cid} did not exit within {timeout}s"
            await asyncio.sleep(0.02)
        return info


def _alive(pid: int) -> bool:
    """Running and not a zombie."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (FileNotFoundError, ProcessLookupError):
        return False
    return fields[0] != "Z"


async def _wait_gone(pid: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while _alive(pid):
        assert time.monotonic() < deadline, f"pid {pid} still running"
        await asyncio.sleep(0.05)


def _set_subreaper(on: bool) -> None:
    """Orphaned conmons become our children instead of PID 1's, so that we reap them at
    once: PID 1 on these machines takes seconds, longer than the leak check waits."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_CHILD_SUBREAPER, int(on), 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_CHILD_SUBREAPER)")


def _children() -> set[int]:
    found: set[int] = set()
    for task in Path("/proc/self/task").iterdir():
        with contextlib.suppress(OSError):
            found.update(int(p) for p in (task / "children").read_text().split())
    return found


def _in_child_pid_ns(pid: int) -> bool:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    nspid = [line for line in status.splitlines() if line.startswith("NSpid:")]
    return bool(nspid) and len(nspid[0].split()) > 2


def _reap_orphans(env: Env) -> None:
    """Reap what a subreaper inherits: conmons, and exec'd container processes that
    conmon left behind (killed on timeout). Never asyncio's own children: reaping
    those would steal their exit status."""
    conmons = {
        int(pidfile.read_text())
        for bundle in env.bundles.values()
        if (pidfile := bundle / "conmon.pid").exists()
    }
    for pid in _children():
        if pid in conmons or _in_child_pid_ns(pid):
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, os.WNOHANG)


async def _reaper(env: Env) -> None:
    while True:
        _reap_orphans(env)
        await asyncio.sleep(0.05)


async def _reap(pid: int, timeout: float = 10.0) -> None:
    """Wait until `pid` has exited and been reaped (by _reaper, or by PID 1)."""
    deadline = time.monotonic() + timeout
    while Path(f"/proc/{pid}").exists():
        assert time.monotonic() < deadline, f"conmon {pid} did not exit"
        await asyncio.sleep(0.05)


async def _cleanup(env: Env) -> None:
    for cid, bundle in env.bundles.items():
        try:
            await env.runtime.delete(cid, force=True)
        except errors.PodlingError as e:  # keep going: the leak check reports what stayed
            print(f"cleanup of {cid}: {e}", file=sys.stderr)
        pidfile = bundle / "conmon.pid"
        if pidfile.exists():
            await _reap(int(pidfile.read_text()))


@pytest.fixture
async def env(tmp_path: Path) -> AsyncIterator[Env]:
    runtime = OciRuntime("runc", RUNC, tmp_path / "runc")
    e = Env(tmp_path, runtime, Conmon(runtime), tmp_path / "exits", tmp_path / "s")
    for d in (e.exits, e.socks, tmp_path / "logs", tmp_path / "bundles"):
        d.mkdir()
    _set_subreaper(True)
    reaper = asyncio.ensure_future(_reaper(e))
    try:
        yield e
    finally:
        try:
            await _cleanup(e)
            remove_cgroup_tree()
        finally:
            reaper.cancel()
            _set_subreaper(False)
            _reap_orphans(e)


def _records(path: Path) -> list[crilog.LogRecord]:
    lines = path.read_bytes().splitlines()
    return [r for r in map(crilog.parse_line, lines) if r is not None]


def _cgroup(cid: str, controller: str) -> Path:
    return CGROUP_ROOT / controller / CGROUP_PARENT / cid


async def _until(cond: object, timeout: float = 10.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not cond():  # type: ignore[operator]
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.05)


# ---- lifecycle and exits ----------------------------------------------------------------


async def test_exit_code_file_and_watcher(env: Env) -> None:
    watcher = ExitWatcher(env.exits, env.conmon, lambda cid: env.bundles[cid])
    try:
        it = watcher.__aiter__()
        first = asyncio.ensure_future(it.__anext__())  # starts the watch before the exit
        await asyncio.sleep(0.05)
        cid, bundle, created = await env.run(["sh", "-c", "exit 3"])
        assert created.pid > 0 and created.conmon_pid > 0
        got_cid, info = await asyncio.wait_for(first, 15)
    finally:
        watcher.close()
    assert got_cid == cid
    assert info.exit_code == 3 and not info.oom_killed
    assert (env.exits / cid).read_text() == "3"
    assert info.finished_at_ns == (env.exits / cid).stat().st_mtime_ns
    assert abs(info.finished_at_ns - time.time_ns()) < 60 * 10**9
    assert env.conmon.exit_info(env.exits, cid, bundle) == info
    state = await env.runtime.state(cid)
    assert state is not None and state["status"] == "stopped"


async def test_watcher_yields_existing_files_and_stops_on_close(env: Env) -> None:
    (env.exits / "earlier").write_text("0")
    (env.exits / "earlier.AB12cd").write_text("")  # a glib temp file: skipped
    watcher = ExitWatcher(env.exits, env.conmon, lambda cid: env.bundles[cid])
    got: list[tuple[str, ExitInfo]] = []

    async def consume() -> None:
        async for item in watcher:
            got.append(item)

    task = asyncio.ensure_future(consume())
    await _until(lambda: got, what="the existing exit file")
    watcher.close()
    await asyncio.wait_for(task, 5)  # close() ends the async for
    assert [c for c, _ in got] == ["earlier"]
    assert got[0][1].exit_code == 0 and not got[0][1].oom_killed  # unknown bundle: no oom


async def test_log_is_cri_format_with_streams_and_partial_line(env: Env) -> None:
    cid, _, _ = await env.run(["sh", "-c", "echo out; echo err >&2; printf abc"])
    assert (await env.wait_exit(cid)).exit_code == 0
    recs = _records(env.log_path(cid))
    got = {(r.stream, r.partial, r.data) for r in recs}
    # conmon marks the final chunk without a newline as partial (P)
    assert got == {("stdout", False, b"out"), ("stderr", False, b"err"), ("stdout", True, b"abc")}
    for r in recs:
        assert time.strptime(r.timestamp[:19], "%Y-%m-%dT%H:%M:%S")
        assert r.timestamp.endswith("+00:00") and len(r.timestamp.split(".")[1]) == 15
    assert crilog.read_output(env.log_path(cid), 100) == (b"out\nabc", b"err\n")


async def test_sigterm_gives_143(env: Env) -> None:
    # in the host pid namespace: a pid-namespace init ignores SIGTERM it has no handler for
    cid, _, _ = await env.run(["sleep", "1000"], namespaces=("ipc", "uts", "mount", "network"))
    await env.runtime.kill(cid, signal.SIGTERM)
    info = await env.wait_exit(cid)
    assert info.exit_code == 143 and not info.oom_killed


async def test_sigkill_gives_137_and_kill_of_stopped_is_fine(env: Env) -> None:
    cid, _, created = await env.run(["sleep", "1000"])
    state = await env.runtime.state(cid)
    assert state is not None and state["status"] == "running" and state["pid"] == created.pid
    await env.runtime.kill(cid, signal.SIGKILL)
    assert (await env.wait_exit(cid)).exit_code == 137
    assert await env.runtime.wait_stopped(cid, 5)
    await env.runtime.kill(cid, signal.SIGKILL)  # stopped: not an error
    await env.runtime.kill("ctest-never-existed", signal.SIGKILL)  # unknown: not an error


async def test_oom_kill_is_detected(env: Env) -> None:
    hog = 'x=$(head -c 100000000 /dev/zero | tr "\\0" a); echo survived'
    cid, bundle, _ = await env.run(["sh", "-c", hog], memory_limit=20 << 20)
    info = await env.wait_exit(cid, timeout=30)
    assert info.exit_code == 137
    assert info.oom_killed
    assert (bundle / "oom").exists()  # conmon 2.1.6's marker (cwd and -0 dir: the bundle)
    oom_control = (_cgroup(cid, "memory") / "memory.oom_control").read_text()
    assert "oom_kill 1" in oom_control or "oom_kill " in oom_control


async def test_no_oom_for_a_normal_exit(env: Env) -> None:
    cid, bundle, _ = await env.run(["sh", "-c", "exit 0"], memory_limit=64 << 20)
    info = await env.wait_exit(cid)
    assert info.exit_code == 0 and not info.oom_killed and not (bundle / "oom").exists()


# ---- exec-sync ---------------------------------------------------------------------------


async def test_exec_sync_output_and_exit_code(env: Env) -> None:
    cid, bundle, _ = await env.run(["sleep", "1000"])
    before = set(os.listdir(bundle))
    res = await env.conmon.exec_sync(
        cid=cid,
        bundle=bundle,
        process=process(["sh", "-c", "echo hi; echo oops >&2; printf tail; exit 5"]),
        timeout=10,
    )
    assert res.exit_code == 5 and not res.timed_out
    assert res.stdout == b"hi\ntail" and res.stderr == b"oops\n"
    assert set(os.listdir(bundle)) == before  # scratch dir gone, fifos untouched
    # the container's own ctl fifo still works after an exec
    env.conmon.reopen_log(bundle)
    capped = await env.conmon.exec_sync(
        cid=cid, bundle=bundle, process=process(["sh", "-c", "echo 0123456789"]), timeout=None,
        max_output=4,
    )  # fmt: skip
    assert capped.stdout == b"0123" and capped.exit_code == 0


async def test_exec_sync_timeout_kills_the_process(env: Env) -> None:
    cid, bundle, _ = await env.run(["sleep", "1000"])
    t0 = time.monotonic()
    res = await env.conmon.exec_sync(
        cid=cid,
        bundle=bundle,
        process=process(["sh", "-c", "echo started; sleep 1017; echo never"]),
        timeout=1,
    )
    assert res.timed_out and res.exit_code == -1
    assert res.stdout == b"started\n"
    assert time.monotonic() - t0 < 5
    # conmon SIGKILLs the process group; the dead are zombies of the (non-reaping) init
    await _until(lambda: not _procs_with("1017"), timeout=3, what="exec'd processes to die")


def _procs_with(word: str) -> list[int]:
    found = []
    for p in Path("/proc").iterdir():
        if not p.name.isdigit():
            continue
        try:
            cmd = (p / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if word.encode() in cmd and _alive(int(p.name)):
            found.append(int(p.name))
    return found


async def test_exec_sync_errors(env: Env) -> None:
    cid, bundle, _ = await env.run(["sleep", "1000"])
    # a program the container cannot run is the caller's to fix (not NOT_FOUND: the kubelet
    # would take that for a container that is gone)
    with pytest.raises(errors.FailedPrecondition, match=r"/nope.*no such file or directory"):
        await env.conmon.exec_sync(cid=cid, bundle=bundle, process=process(["/nope"]), timeout=5)
    await env.runtime.kill(cid, signal.SIGKILL)
    await env.wait_exit(cid)
    with pytest.raises(errors.FailedPrecondition, match="runc exec"):
        await env.conmon.exec_sync(cid=cid, bundle=bundle, process=process(["true"]), timeout=5)


async def test_exec_sync_cancel_kills_the_process(env: Env) -> None:
    cid, bundle, _ = await env.run(["sleep", "1000"])
    task = asyncio.ensure_future(
        env.conmon.exec_sync(
            cid=cid, bundle=bundle, process=process(["sleep", "1018"]), timeout=None
        )
    )
    await _until(lambda: _procs_with("1018"), what="the exec'd sleep")
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await _until(lambda: not _procs_with("1018"), timeout=5, what="the exec'd sleep to die")


# ---- resources, logs, terminal, attach -------------------------------------------------------


async def test_update_memory_limit(env: Env) -> None:
    cid, _, _ = await env.run(["sleep", "1000"], memory_limit=64 << 20)
    limit = _cgroup(cid, "memory") / "memory.limit_in_bytes"
    assert int(limit.read_text()) == 64 << 20
    await env.runtime.update(cid, {"memory": {"limit": 96 << 20, "swap": 96 << 20}})
    assert int(limit.read_text()) == 96 << 20
    await env.runtime.update(cid, {"cpu": {"shares": 512}})
    assert int((_cgroup(cid, "cpu") / "cpu.shares").read_text()) == 512
    with pytest.raises(errors.NotFound, match="runc update ctest-gone"):
        await env.runtime.update("ctest-gone", {"cpu": {"shares": 512}})


async def test_reopen_log_after_rotation(env: Env) -> None:
    loop = "i=0; while [ $i -lt 2000 ]; do echo line$i; i=$((i+1)); sleep 0.02; done"
    cid, bundle, _ = await env.run(["sh", "-c", loop])
    log = env.log_path(cid)
    await _until(lambda: log.exists() and len(_records(log)) >= 3, what="first log lines")
    rotated = log.with_name(log.name + ".1")
    log.rename(rotated)
    env.conmon.reopen_log(bundle)
    await _until(lambda: log.exists() and len(_records(log)) >= 3, what="lines in the new file")
    old = [int(r.data[4:]) for r in _records(rotated)]
    new = [int(r.data[4:]) for r in _records(log)]
    assert old == list(range(len(old)))  # nothing lost, in order
    assert new[0] == old[-1] + 1 and new == list(range(new[0], new[0] + len(new)))


async def test_resize_terminal(env: Env) -> None:
    loop = "while true; do busybox stty size; sleep 0.1; done"
    cid, bundle, _ = await env.run(["sh", "-c", loop], terminal=True)
    log = env.log_path(cid)

    def saw(size: bytes) -> bool:
        return log.exists() and any(r.data.rstrip(b"\r") == size for r in _records(log))

    env.conmon.resize(bundle, 40, 100)
    await _until(lambda: saw(b"40 100"), what="size 40x100")
    env.conmon.resize(bundle, 50, 120)
    await _until(lambda: saw(b"50 120"), what="size 50x120")
    assert {r.stream for r in _records(log)} == {"stdout"}  # a terminal has one stream


async def test_attach_socket_stdin_once(env: Env) -> None:
    cid, _ = env.bundle(["cat"])
    await env.create(cid, stdin=True, stdin_once=True)
    await env.runtime.start(cid)
    path = env.conmon.attach_socket(env.socks, cid)
    assert stat.S_ISSOCK(path.stat().st_mode)
    with env.conmon.connect_attach(env.socks, cid) as s:
        s.setblocking(True)
        s.settimeout(10)
        s.send(b"hello\n")
        assert s.recv(8192) == b"\x02hello\n"  # 2 = stdout
    # stdin_once: the client left, conmon closed stdin, cat saw EOF
    assert (await env.wait_exit(cid)).exit_code == 0
    with pytest.raises(errors.FailedPrecondition):
        env.conmon.connect_attach(env.socks, cid)


async def test_attach_with_a_path_longer_than_sun_path(env: Env) -> None:
    """conmon copes with long socket paths; so must the client (via /proc/self/fd)."""
    long_dir = env.tmp / ("d" * 60)
    long_dir.mkdir()
    env.socks = long_dir
    cid, _ = env.bundle(["sh", "-c", "read x; echo got $x; read y; echo got $y"])
    await env.create(cid, stdin=True, stdin_once=False)
    await env.runtime.start(cid)
    assert len(str(env.conmon.attach_socket(long_dir, cid))) > 107
    for word in (b"one", b"two"):  # --leave-stdin-open: stdin survives the first client
        with env.conmon.connect_attach(long_dir, cid) as s:
            s.setblocking(True)
            s.settimeout(10)
            s.send(word + b"\n")
            assert s.recv(8192) == b"\x02got " + word + b"\n"
    assert (await env.wait_exit(cid)).exit_code == 0


# ---- failures, survival, cleanup ---------------------------------------------------------


async def test_create_failure_reports_runc_words(env: Env) -> None:
    cid, _ = env.bundle(["/nope"])
    with pytest.raises(errors.FailedPrecondition) as exc:
        await env.create(cid)
    assert "/nope" in exc.value.message and "no such file or directory" in exc.value.message
    assert exc.value.message.startswith(f"conmon create {cid}: runc create failed")
    assert await env.runtime.state(cid) is None
    assert not (env.tmp / "runc" / cid).exists()


async def test_start_errors(env: Env) -> None:
    with pytest.raises(errors.NotFound, match="runc start ctest-nope: container does not exist"):
        await env.runtime.start("ctest-nope")
    cid, _, _ = await env.run(["true"])
    await env.wait_exit(cid)
    await env.runtime.wait_stopped(cid, 5)
    with pytest.raises(errors.FailedPrecondition, match=f"runc start {cid}: "):
        await env.runtime.start(cid)
    with pytest.raises(errors.FailedPrecondition):  # created/running/stopped: not this
        cid2, _ = env.bundle(["sleep", "1000"])
        await env.create(cid2)
        await env.runtime.start(cid2)
        await env.runtime.delete(cid2)  # running, no force


_CHILD = """
import asyncio, json, sys
from pathlib import Path
from podling.runtimes.conmon import Conmon
from podling.runtimes.oci import OciRuntime
a = json.loads(sys.argv[1])
async def main():
    c = Conmon(OciRuntime("runc", a["runc"], Path(a["root"])))
    created = await c.create(cid=a["cid"], name="n", bundle=Path(a["bundle"]),
        log_path=Path(a["log"]), exit_dir=Path(a["exits"]), socket_dir=Path(a["socks"]),
        terminal=False, stdin=False, stdin_once=False)
    print(json.dumps([created.pid, created.conmon_pid]), flush=True)
    await asyncio.sleep(3600)
asyncio.run(main())
"""


async def test_conmon_survives_its_parent_being_killed(env: Env) -> None:
    cid, bundle = env.bundle(["sh", "-c", "sleep 0.3; exit 7"])
    spec = {
        "runc": RUNC, "root": str(env.runtime.root), "cid": cid, "bundle": str(bundle),
        "log": str(env.log_path(cid)), "exits": str(env.exits), "socks": str(env.socks),
    }  # fmt: skip
    child = subprocess.Popen(
        [sys.executable, "-c", _CHILD, json.dumps(spec)],
        stdout=subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": str(SRC)},
    )
    try:
        assert child.stdout is not None
        line = await asyncio.wait_for(asyncio.to_thread(child.stdout.readline), 30)
        pid, conmon_pid = json.loads(line)
    finally:
        child.kill()
        child.wait()
        if child.stdout is not None:
            child.stdout.close()
    assert _alive(conmon_pid) and _alive(pid)
    ppid = int(Path(f"/proc/{conmon_pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
    assert ppid != child.pid
    assert os.getsid(conmon_pid) == conmon_pid  # its own session: our signals don't reach it
    await env.runtime.start(cid)
    assert (await env.wait_exit(cid)).exit_code == 7
    await _reap(conmon_pid)


async def test_delete_cleans_runtime_state_and_cgroups(env: Env) -> None:
    cid, _, created = await env.run(["sleep", "1000"])
    assert (env.tmp / "runc" / cid).is_dir()
    assert any(d.name == cid for top in cgroup_dirs() for d in top.iterdir())
    await env.runtime.delete(cid, force=True)  # running: killed, waited for, deleted
    assert await env.runtime.state(cid) is None
    assert not (env.tmp / "runc" / cid).exists()
    assert not [d for top in cgroup_dirs() for d in top.iterdir() if d.name == cid]
    await _wait_gone(created.pid)
    await env.runtime.delete(cid)  # gone already: fine
    await env.runtime.delete(cid, force=True)
