"""Exec, attach and port-forward through a real podlingd: the CRI calls hand out URLs, the
project's own streaming client (SPDY and WebSocket) runs the sessions against the
daemon's streaming server, which runs `runc exec`, attaches to conmon, or dials inside
the pod's network namespace."""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import time
from collections.abc import AsyncIterator, Callable

import grpc
import pytest
from cri_api.v1 import api_pb2 as pb

from podling.errors import Internal, Unavailable
from podling.streaming import client
from tests.integration.pod_fixtures import PodEnv
from tests.support.daemon import Daemon
from tests.support.pods import (
    container_config,
    pod_config,
    rpc_code,
    run_pod,
    start_container,
    wait_state,
)

pytestmark = pytest.mark.root
BRIDGE, SUBNET = "plstream0", "10.93.2.0/24"
RUNNING, EXITED = pb.ContainerState.CONTAINER_RUNNING, pb.ContainerState.CONTAINER_EXITED
PROTOCOLS = ["spdy", "websocket"]
INVALID, NOT_FOUND = grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND
HTTPD = (
    "mkdir -p /tmp/www && echo hello-from-pod > /tmp/www/index.html"
    " && exec httpd -f -p 8080 -h /tmp/www"
)


def new_pod(e: PodEnv, **kw: object) -> tuple[str, pb.PodSandboxConfig]:
    cfg = pod_config(log_dir=e.logs, **kw)
    return run_pod(e.daemon, cfg), cfg


def sleeper(e: PodEnv) -> tuple[str, str]:
    """A pod with a running container that sleeps; (pod id, container id)."""
    pod_id, pcfg = new_pod(e)
    cid = start_container(e.daemon, pod_id, pcfg, container_config("main", "sleep", "1000"))
    assert wait_state(e.daemon, cid, RUNNING).state == RUNNING
    return pod_id, cid


def exec_url(d: Daemon, cid: str, *cmd: str, tty: bool = False, stdin: bool = False) -> str:
    req = pb.ExecRequest(
        container_id=cid, cmd=list(cmd), tty=tty, stdin=stdin, stdout=True, stderr=not tty
    )
    return str(d.runtime.Exec(req).url)


class Sink:
    """Collects one output stream; `wait_for` polls until a pattern shows up."""

    def __init__(self) -> None:
        self.data = b""

    async def __call__(self, chunk: bytes) -> None:
        self.data += chunk

    async def wait_for(self, needle: bytes, timeout: float = 10) -> None:
        deadline = time.monotonic() + timeout
        while needle not in self.data:
            assert time.monotonic() < deadline, f"{needle!r} never came; got {self.data!r}"
            await asyncio.sleep(0.05)


async def feed(
    *chunks: bytes, before_eof: Callable[[], object] | None = None
) -> AsyncIterator[bytes]:
    for chunk in chunks:
        yield chunk
    if before_eof is not None:
        await before_eof()  # type: ignore[misc]


async def run_exec(
    d: Daemon, cid: str, *cmd: str, protocol: str, stdin: AsyncIterator[bytes] | None = None,
    tty: bool = False, resizes: AsyncIterator[tuple[int, int]] | None = None,
) -> tuple[int, bytes, bytes]:  # fmt: skip
    url = exec_url(d, cid, *cmd, tty=tty, stdin=stdin is not None)
    out, err = Sink(), Sink()
    code = await asyncio.wait_for(
        client.remote_command(
            url,
            protocol=protocol,
            stdin=stdin,
            stdout=out,
            stderr=None if tty else err,
            tty=tty,
            resizes=resizes,
        ),
        30,
    )
    return code, out.data, err.data


# --- the CRI calls ----------------------------------------------------------------------


def test_rpc_validation_and_urls(clean: PodEnv) -> None:
    d = clean.daemon
    pod_id, cid = sleeper(clean)
    ex = d.runtime.Exec

    def exec_code(**kw: object) -> grpc.StatusCode:
        base: dict[str, object] = {"container_id": cid, "cmd": ["true"], "stdout": True}
        return rpc_code(lambda: ex(pb.ExecRequest(**{**base, **kw})))  # type: ignore[arg-type]

    assert exec_code(container_id="") == INVALID
    assert exec_code(container_id="f" * 64) == NOT_FOUND
    assert exec_code(tty=True, stderr=True) == INVALID
    assert exec_code(stdout=False) == INVALID  # no stream at all
    assert exec_code(cmd=[]) == INVALID
    att = d.runtime.Attach
    assert rpc_code(lambda: att(pb.AttachRequest(container_id="f" * 64, stdout=True))) == NOT_FOUND
    bad = pb.AttachRequest(container_id=cid, tty=True, stdout=True, stderr=True)
    assert rpc_code(lambda: att(bad)) == INVALID
    assert rpc_code(lambda: att(pb.AttachRequest(container_id=cid))) == INVALID
    pf = d.runtime.PortForward
    assert rpc_code(lambda: pf(pb.PortForwardRequest())) == INVALID
    assert rpc_code(lambda: pf(pb.PortForwardRequest(pod_sandbox_id="e" * 64))) == NOT_FOUND
    assert rpc_code(lambda: pf(pb.PortForwardRequest(pod_sandbox_id=pod_id, port=[0]))) == INVALID

    urls = [exec_url(d, cid[:12], "true") for _ in range(2)]  # an id prefix is fine
    assert all(re.fullmatch(r"http://127\.0\.0\.1:\d+/exec/[A-Za-z0-9_-]+", u) for u in urls)
    assert urls[0] != urls[1]
    url = d.runtime.Attach(pb.AttachRequest(container_id=cid, stdout=True)).url
    assert "/attach/" in url
    assert "/portforward/" in pf(pb.PortForwardRequest(pod_sandbox_id=pod_id)).url

    d.runtime.StopContainer(pb.StopContainerRequest(container_id=cid, timeout=0))
    assert exec_code() == grpc.StatusCode.FAILED_PRECONDITION
    stopped = pb.AttachRequest(container_id=cid, stdout=True)
    assert rpc_code(lambda: att(stopped)) == grpc.StatusCode.FAILED_PRECONDITION


# --- exec ---------------------------------------------------------------------------------


@pytest.mark.parametrize("protocol", PROTOCOLS)
async def test_exec_output_stdin_and_exit_code(clean: PodEnv, protocol: str) -> None:
    d = clean.daemon
    _, cid = sleeper(clean)
    script = "echo to-out; echo to-err >&2; exit 3"
    assert await run_exec(d, cid, "sh", "-c", script, protocol=protocol) == (
        3, b"to-out\n", b"to-err\n"
    )  # fmt: skip
    code, out, err = await run_exec(
        d, cid, "cat", protocol=protocol, stdin=feed(b"hello\n", b"x" * 100_000, b"\nbye\n")
    )
    assert (code, err) == (0, b"")
    assert out == b"hello\n" + b"x" * 100_000 + b"\nbye\n"  # stdin EOF ended cat
    # env, user and working dir come from the container's own process
    assert (await run_exec(d, cid, "sh", "-c", "pwd; id -u", protocol=protocol))[1] == b"/\n0\n"


@pytest.mark.parametrize("protocol", PROTOCOLS)
async def test_exec_tty_and_resize(clean: PodEnv, protocol: str) -> None:
    d = clean.daemon
    _, cid = sleeper(clean)
    code, out, _ = await run_exec(d, cid, "busybox", "tty", protocol=protocol, tty=True)
    assert code == 0 and re.fullmatch(rb"/dev/pts/\d+\r?\n", out), out

    async def sizes() -> AsyncIterator[tuple[int, int]]:
        yield 100, 40  # (width, height)
        await asyncio.sleep(0.6)
        yield 132, 50

    script = "sleep 0.3; busybox stty size; sleep 0.8; busybox stty size; echo $TERM"
    code, out, _ = await run_exec(
        d, cid, "sh", "-c", script, protocol=protocol, tty=True, resizes=sizes()
    )
    assert code == 0 and out.split() == [b"40", b"100", b"50", b"132", b"xterm"], out


@pytest.mark.parametrize("protocol", PROTOCOLS)
async def test_exec_tty_stdin_echo(clean: PodEnv, protocol: str) -> None:
    d = clean.daemon
    _, cid = sleeper(clean)
    code, out, _ = await run_exec(
        d, cid, "sh", protocol=protocol, tty=True, stdin=feed(b"echo $((6*7))\n", b"exit 5\n")
    )
    assert code == 5 and b"42" in out


def _leftovers(marker: str) -> list[str]:
    ps = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True).stdout
    return [line for line in ps.splitlines() if marker in line or " exec --process " in line]


def _fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def _streams_open(d: Daemon, port: int) -> int:
    """Established connections of the daemon's streaming port (server side)."""
    out = subprocess.run(["ss", "-Htn", "state", "established", f"sport = :{port}"],
                         capture_output=True, text=True).stdout  # fmt: skip
    return len(out.splitlines())


@pytest.mark.parametrize("protocol", PROTOCOLS)
async def test_client_vanishing_ends_exec(clean: PodEnv, protocol: str) -> None:
    d = clean.daemon
    _, cid = sleeper(clean)
    assert d.proc is not None
    await run_exec(d, cid, "true", protocol=protocol)  # warm up: lazy imports, thread pools
    fds = _fds(d.proc.pid)
    url = exec_url(d, cid, "sleep", "1001", stdin=True)
    port = int(url.split(":")[2].split("/")[0])
    out = Sink()
    never = asyncio.Event()

    async def stdin() -> AsyncIterator[bytes]:
        yield b"x"
        await never.wait()

    task = asyncio.create_task(
        client.remote_command(
            url, protocol=protocol, stdin=stdin(), stdout=out, stderr=out, tty=False
        )
    )
    deadline = time.monotonic() + 10
    while not any("sleep 1001" in p for p in _leftovers("sleep 1001")):
        assert time.monotonic() < deadline and not task.done(), "the exec never started"
        await asyncio.sleep(0.05)
    assert _streams_open(d, port) == 1
    task.cancel()  # the client goes away mid-exec
    with pytest.raises(asyncio.CancelledError):
        await task
    deadline = time.monotonic() + 10
    while _leftovers("sleep 1001") or _streams_open(d, port) or _fds(d.proc.pid) > fds:
        assert time.monotonic() < deadline, (
            f"left behind: {_leftovers('sleep 1001')}, {_streams_open(d, port)} connections, "
            f"{_fds(d.proc.pid) - fds} fds"
        )
        await asyncio.sleep(0.1)


# --- attach -------------------------------------------------------------------------------


@pytest.mark.parametrize("protocol", PROTOCOLS)
async def test_attach_stdin_once(clean: PodEnv, protocol: str) -> None:
    d = clean.daemon
    pod_id, pcfg = new_pod(clean)
    cfg = container_config("cat", "cat", stdin=True, stdin_once=True)
    cid = start_container(d, pod_id, pcfg, cfg)
    wait_state(d, cid, RUNNING)
    url = d.runtime.Attach(
        pb.AttachRequest(container_id=cid, stdin=True, stdout=True, stderr=True)
    ).url
    out, err = Sink(), Sink()
    stdin = feed(b"hello\n", before_eof=lambda: out.wait_for(b"hello\n"))
    code = await asyncio.wait_for(
        client.remote_command(
            url, protocol=protocol, stdin=stdin, stdout=out, stderr=err, tty=False
        ),
        30,
    )
    # our stdin EOF closed the container's stdin (stdin_once): cat ended, so did the attach
    assert (code, out.data, err.data) == (0, b"hello\n", b"")
    assert wait_state(d, cid, EXITED).exit_code == 0


@pytest.mark.parametrize("protocol", PROTOCOLS)
async def test_attach_output_of_a_running_container(clean: PodEnv, protocol: str) -> None:
    d = clean.daemon
    pod_id, pcfg = new_pod(clean)
    script = (
        "i=0; while [ $i -lt 20 ]; do echo tick $i; echo tock $i >&2; i=$((i+1)); sleep 0.1; done"
    )
    cid = start_container(d, pod_id, pcfg, container_config("ticker", "sh", "-c", script))
    log = clean.logs / "ticker.log"
    deadline = time.monotonic() + 10
    while "tick 2" not in (log.read_text() if log.exists() else ""):
        assert time.monotonic() < deadline
        await asyncio.sleep(0.05)
    url = d.runtime.Attach(pb.AttachRequest(container_id=cid, stdout=True, stderr=True)).url
    out, err = Sink(), Sink()
    code = await asyncio.wait_for(
        client.remote_command(
            url, protocol=protocol, stdin=None, stdout=out, stderr=err, tty=False
        ),
        30,
    )
    # no history; the output ends when the container exits
    assert code == 0
    assert b"tick 0\n" not in out.data and out.data.endswith(b"tick 19\n"), out.data
    assert b"tock" not in out.data and err.data.endswith(b"tock 19\n"), err.data


async def test_attach_detach_keeps_stdin_open(clean: PodEnv) -> None:
    """Without stdin_once a client's stdin EOF only detaches it: the container's stdin
    stays open for the next attach, which sees only what comes after it attached."""
    d = clean.daemon
    pod_id, pcfg = new_pod(clean)
    cid = start_container(d, pod_id, pcfg, container_config("cat", "cat", stdin=True))
    wait_state(d, cid, RUNNING)
    for word in (b"one\n", b"two\n"):
        req = pb.AttachRequest(container_id=cid, stdin=True, stdout=True, stderr=True)
        out = Sink()
        stdin = feed(word, before_eof=lambda: out.wait_for(word))  # noqa: B023
        code = await asyncio.wait_for(
            client.remote_command(
                d.runtime.Attach(req).url, stdin=stdin, stdout=out, stderr=out, tty=False
            ),
            30,
        )
        assert (code, out.data) == (0, word)
        assert wait_state(d, cid, RUNNING, timeout=0.5).state == RUNNING


async def test_exec_of_a_missing_binary_fails(clean: PodEnv) -> None:
    d = clean.daemon
    _, cid = sleeper(clean)
    with pytest.raises(Internal, match="executable file not found"):
        await run_exec(d, cid, "no-such-binary", protocol="spdy")


# --- port-forward ---------------------------------------------------------------------


def httpd_pod(e: PodEnv) -> str:
    pod_id, pcfg = new_pod(e)
    start_container(e.daemon, pod_id, pcfg, container_config("web", "sh", "-c", HTTPD))
    return pod_id


async def http_get(d: Daemon, pod_id: str, port: int, protocol: str) -> bytes:
    """GET / through a fresh port-forward to `port`; the whole answer."""
    url = d.runtime.PortForward(pb.PortForwardRequest(pod_sandbox_id=pod_id)).url
    conn = await client.port_forward(url, port, protocol=protocol)  # type: ignore[arg-type]
    try:
        await conn.write(b"GET / HTTP/1.0\r\nHost: pod\r\n\r\n")
        return await asyncio.wait_for(read_all(conn), 20)
    finally:
        await conn.close()


async def read_all(conn: client.ForwardedConnection) -> bytes:
    parts = []
    while data := await conn.read():
        parts.append(data)
    return b"".join(parts)


async def wait_http(d: Daemon, pod_id: str, protocol: str) -> bytes:
    """The first answer of the pod's web server (it may take a moment to listen)."""
    deadline = time.monotonic() + 15
    while True:
        try:
            answer = await http_get(d, pod_id, 8080, protocol)
        except Exception:  # not listening yet
            answer = b""
        if answer or time.monotonic() > deadline:
            return answer
        await asyncio.sleep(0.2)


@pytest.mark.parametrize("protocol", PROTOCOLS)
async def test_port_forward(clean: PodEnv, protocol: str) -> None:
    d = clean.daemon
    pod_id = httpd_pod(clean)
    answer = await wait_http(d, pod_id, protocol)
    assert answer.startswith(b"HTTP/1.") and answer.endswith(b"hello-from-pod\n"), answer

    answers = await asyncio.gather(*(http_get(d, pod_id, 8080, protocol) for _ in range(20)))
    assert all(a.endswith(b"hello-from-pod\n") for a in answers)

    started = time.monotonic()  # nothing listens on 8081: the failure comes promptly
    with pytest.raises(Unavailable, match="port 8081: connection refused"):
        await asyncio.wait_for(http_get(d, pod_id, 8081, protocol), 10)
    assert time.monotonic() - started < 5


async def test_port_forward_host_network(clean: PodEnv) -> None:
    """A host-network pod's localhost is the host's: the test's own listener answers it;
    an ordinary pod has its own localhost, where nothing listens on that port."""
    d = clean.daemon
    pod_id, _ = new_pod(clean)
    cfg = pod_config(log_dir=clean.logs)
    cfg.linux.security_context.namespace_options.network = pb.NamespaceMode.NODE
    host_pod = run_pod(d, cfg)

    async def answer(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        w.write(b"from-host:" + await r.readexactly(4))
        await w.drain()
        w.close()

    server = await asyncio.start_server(answer, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        url = d.runtime.PortForward(pb.PortForwardRequest(pod_sandbox_id=host_pod)).url
        conn = await client.port_forward(url, port)
        try:
            await conn.write(b"ping")
            assert await asyncio.wait_for(read_all(conn), 10) == b"from-host:ping"
        finally:
            await conn.close()
        url = d.runtime.PortForward(pb.PortForwardRequest(pod_sandbox_id=pod_id)).url
        conn = await client.port_forward(url, port)
        try:
            with pytest.raises(Unavailable, match="connection refused"):
                await asyncio.wait_for(read_all(conn), 10)
        finally:
            await conn.close()
    finally:
        server.close()
        await server.wait_closed()


async def test_tls_streaming_server(tmp_path_factory: pytest.TempPathFactory) -> None:
    base = tmp_path_factory.mktemp("tls")
    cert, key = base / "cert.pem", base / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
         "-subj", "/CN=127.0.0.1", "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True,
    )  # fmt: skip
    extra = f'[streaming]\ntls_cert = "{cert}"\ntls_key = "{key}"\n'
    with PodEnv(base, "plstrtls0", "10.93.5.0/24", extra) as e:
        cid = sleeper(e)[1]
        url = exec_url(e.daemon, cid, "echo", "over-tls")
        assert url.startswith("https://127.0.0.1:")
        out, err = Sink(), Sink()
        code = await client.remote_command(url, stdin=None, stdout=out, stderr=err, tty=False)
        assert (code, out.data, err.data) == (0, b"over-tls\n", b"")
