"""`podling exec -i/-t`, `attach` and `port-forward` as a user runs them, against a real
podlingd that runs pods on this module's own bridge (plclistr0), subnet and cgroup
parent. The terminal cases run the client on a real pseudo-terminal."""

from __future__ import annotations

import fcntl
import os
import signal
import socket
import struct
import subprocess
import sys
import termios
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from cri_api.v1 import api_pb2 as pb

from tests.support.daemon import Daemon
from tests.support.pods import (
    container_config,
    load_busybox,
    pod_config,
    remove_all,
    run_pod,
    start_container,
    wait_state,
)

pytestmark = pytest.mark.root

PODLING = str(Path(sys.executable).parent / "podling")
BRIDGE, SUBNET, CGROUP_PARENT = "plclistr0", "10.92.1.0/24", "podling-clistream"
RUNNING, EXITED = pb.ContainerState.CONTAINER_RUNNING, pb.ContainerState.CONTAINER_EXITED
HTTPD = (
    "mkdir -p /tmp/www && echo hello-from-pod > /tmp/www/index.html"
    " && exec httpd -f -p 8080 -h /tmp/www"
)


def _cgroup_dirs() -> list[Path]:
    return [h / CGROUP_PARENT for h in Path("/sys/fs/cgroup").iterdir() if h.is_dir()]


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    """One podlingd for the module with busybox loaded; the bridge and cgroup parent exist
    before the first test and go after the last (the leak check sees only each test's)."""
    base = tmp_path_factory.mktemp("clistreams")
    (base / "cni").mkdir()
    config = (
        f'[network]\ncni_conf_dir = "{base / "cni"}"\ndefault_bridge = "{BRIDGE}"\n'
        f'default_subnet = "{SUBNET}"\n[runtime]\ncgroup_parent = "/{CGROUP_PARENT}"\n'
        "stop_timeout = 2\n"
    )
    subprocess.run(["ip", "link", "add", BRIDGE, "type", "bridge"], check=True)
    for d in _cgroup_dirs():
        if (d.parent / "cgroup.procs").exists():
            d.mkdir(exist_ok=True)
    d = Daemon(base / "daemon", config)
    try:
        d.start()
        load_busybox(d, base)
        yield d
    finally:
        try:
            if d.channel is not None:
                remove_all(d)
        finally:
            d.stop()
            subprocess.run(["ip", "link", "del", BRIDGE], check=False)
            for cg in _cgroup_dirs():
                if cg.is_dir():
                    cg.rmdir()


@pytest.fixture
def clean(daemon: Daemon) -> Iterator[Daemon]:
    yield daemon
    remove_all(daemon)


def env_of(d: Daemon) -> dict[str, str]:
    return {**os.environ, "CONTAINER_RUNTIME_ENDPOINT": d.endpoint}


def podling(d: Daemon, *args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [PODLING, *args], input=stdin, capture_output=True, text=True, env=env_of(d), timeout=60
    )


def container(d: Daemon, *cmd: str, **kw: object) -> tuple[str, str]:
    """(pod id, container id) of a new pod with one running container."""
    pcfg = pod_config(log_dir=Path(d.base) / "logs")
    pod_id = run_pod(d, pcfg)
    cid = start_container(d, pod_id, pcfg, container_config("main", *cmd, **kw))
    assert wait_state(d, cid, RUNNING).state == RUNNING
    return pod_id, cid


@pytest.mark.parametrize("transport", ["spdy", "websocket"])
def test_exec_interactive_with_piped_stdin(clean: Daemon, transport: str) -> None:
    _, cid = container(clean, "sleep", "1000")
    cat = podling(clean, "exec", "-i", "-r", transport, cid[:12], "cat", stdin="hello\nworld\n")
    assert (cat.returncode, cat.stdout, cat.stderr) == (0, "hello\nworld\n", "")
    script = "cat >/dev/null; echo out; echo err >&2; exit 4"
    res = podling(clean, "exec", "-i", "-r", transport, cid, "sh", "-c", script, stdin="x")
    assert (res.returncode, res.stdout, res.stderr) == (4, "out\n", "err\n")


def _set_size(fd: int, rows: int, cols: int) -> None:
    fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))


class Terminal:
    """`podling ARGS` on a fresh pseudo-terminal that is its controlling terminal."""

    def __init__(self, d: Daemon, *args: str) -> None:
        self.master, self.slave = os.openpty()
        _set_size(self.slave, 30, 90)
        self.output = b""

        def make_ctty() -> None:
            fcntl.ioctl(0, termios.TIOCSCTTY, 0)

        self.proc = subprocess.Popen(
            [PODLING, *args],
            stdin=self.slave,
            stdout=self.slave,
            stderr=self.slave,
            env=env_of(d),
            start_new_session=True,
            preexec_fn=make_ctty,
        )

    def expect(self, needle: bytes, timeout: float = 15) -> None:
        deadline = time.monotonic() + timeout
        os.set_blocking(self.master, False)
        while needle not in self.output:
            assert time.monotonic() < deadline, f"{needle!r} never came: {self.output!r}"
            try:
                self.output += os.read(self.master, 4096)
            except BlockingIOError:
                time.sleep(0.05)

    def type(self, text: bytes) -> None:
        os.write(self.master, text)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        os.close(self.master)
        os.close(self.slave)


def test_exec_tty_on_a_pty(clean: Daemon) -> None:
    _, cid = container(clean, "sleep", "1000")
    term = Terminal(clean, "exec", "-it", cid, "sh")
    try:
        term.expect(b"/ # ")  # the remote shell's prompt: our terminal is raw by now
        term.type(b"busybox stty size; busybox tty\n")
        term.expect(b"30 90")  # our terminal's size reached the remote one
        term.expect(b"/dev/pts/")
        _set_size(term.master, 40, 100)  # the kernel sends SIGWINCH to podling
        time.sleep(0.5)
        term.type(b"busybox stty size\n")
        term.expect(b"40 100")
        term.type(b"exit 7\n")
        assert term.proc.wait(20) == 7
        # the local terminal is back in cooked mode
        lflag = termios.tcgetattr(term.slave)[3]
        assert lflag & termios.ICANON and lflag & termios.ECHO
    finally:
        term.close()


def test_attach(clean: Daemon) -> None:
    d = clean
    _, cid = container(d, "cat", stdin=True, stdin_once=True)
    # our stdin ends after "hello": stdin-once closes the container's stdin, cat exits
    res = podling(d, "attach", "-i", cid, stdin="hello\n")
    assert (res.returncode, res.stdout, res.stderr) == (0, "hello\n", "")
    assert wait_state(d, cid, EXITED).state == EXITED

    script = "sleep 1; for i in 1 2 3; do echo line $i; echo warn $i >&2; sleep 0.2; done"
    _, ticker = container(d, "sh", "-c", script)
    res = podling(d, "attach", "-r", "websocket", ticker)
    assert (res.returncode, res.stdout) == (0, "line 1\nline 2\nline 3\n")
    assert res.stderr == "warn 1\nwarn 2\nwarn 3\n"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _get(url: str, timeout: float = 15) -> str:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(url, timeout=5) as resp:
                return str(resp.read().decode())
        except OSError:  # the pod's web server may not listen yet
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


@pytest.mark.parametrize("transport", ["spdy", "websocket"])
def test_port_forward(clean: Daemon, transport: str) -> None:
    pod_id, _ = container(clean, "sh", "-c", HTTPD)
    local = _free_port()
    proc = subprocess.Popen(
        [PODLING, "port-forward", "-r", transport, pod_id[:12], f"{local}:8080"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env_of(clean),
    )
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline() == f"Forwarding from 127.0.0.1:{local} -> 8080\n"
        assert _get(f"http://127.0.0.1:{local}/") == "hello-from-pod\n"
        assert _get(f"http://127.0.0.1:{local}/") == "hello-from-pod\n"  # a second stream
    finally:
        proc.send_signal(signal.SIGINT)
        code = proc.wait(15)
    assert code == 0, proc.stderr.read() if proc.stderr else ""
