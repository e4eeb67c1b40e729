"""The host side of the guest agent: one line per request on the `agent` virtio-serial
port (qemu's unix socket chardev `agent.sock` in the state dir).

Requests: `EXEC ID BASE64-SCRIPT` runs a busybox sh script (guest.process_script) and
answers `OUT ID BASE64`, `ERR ID BASE64`, `RC ID CODE`; `SIG ID N` sends signal N to the
container's process and answers `RC ID 0|1`. Lines of an earlier request (a client that
gave up) are skipped by their ID. One request at a time: callers hold agent.lock.
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import os
import secrets
import socket
import time
from collections.abc import Iterator
from pathlib import Path

from podling.errors import DeadlineExceeded, Unavailable
from podling.vmrt.qemu import AGENT_SOCKET


class Agent:
    def __init__(self, state_dir: Path) -> None:
        self.dir = state_dir

    @contextlib.contextmanager
    def _connected(self, timeout: float) -> Iterator[socket.socket]:
        """A connection to the agent socket, retried until `timeout` (qemu may still be
        starting); the path goes through /proc/self/fd to stay short."""
        lock = os.open(self.dir / "agent.lock", os.O_CREAT | os.O_RDWR, 0o600)
        dfd = os.open(self.dir, os.O_RDONLY | os.O_DIRECTORY)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            fcntl.flock(lock, fcntl.LOCK_EX)
            deadline = time.monotonic() + timeout
            while True:
                try:
                    sock.connect(f"/proc/self/fd/{dfd}/{AGENT_SOCKET}")
                    break
                except OSError as e:
                    if time.monotonic() >= deadline:
                        raise Unavailable(f"guest agent of {self.dir.name}: {e}") from None
                    time.sleep(0.1)
            yield sock
        finally:
            sock.close()
            os.close(dfd)
            os.close(lock)

    def _call(self, verb: str, arg: str, timeout: float | None) -> dict[str, str]:
        """Send one request; the answer's lines by kind (OUT/ERR/RC), this request's only."""
        rid = secrets.token_hex(4)
        with self._connected(timeout or 30.0) as sock:
            sock.settimeout(timeout)
            sock.sendall(f"{verb} {rid} {arg}\n".encode())
            answer: dict[str, str] = {}
            for line in _lines(sock, self.dir.name):
                kind, _, rest = line.partition(" ")
                got, _, value = rest.partition(" ")
                if got == rid:
                    answer[kind] = value
                if kind == "RC" and got == rid:
                    return answer
        raise Unavailable(f"guest agent of {self.dir.name} closed the connection")

    def exec(self, script: str, timeout: float | None = None) -> tuple[int, bytes, bytes]:
        """Run `script` in the guest; (exit code, stdout, stderr)."""
        a = self._call("EXEC", base64.b64encode(script.encode()).decode(), timeout)
        out, err = base64.b64decode(a.get("OUT", "")), base64.b64decode(a.get("ERR", ""))
        return int(a["RC"]), out, err

    def signal(self, signum: int, timeout: float) -> bool:
        """Send `signum` to the container's process; False if it is not running yet."""
        return self._call("SIG", str(signum), timeout).get("RC") == "0"


def _lines(sock: socket.socket, name: str) -> Iterator[str]:
    buf = b""
    while True:
        try:
            chunk = sock.recv(65536)
        except TimeoutError:
            raise DeadlineExceeded(f"guest agent of {name}: no answer in time") from None
        if not chunk:
            return
        buf += chunk
        while b"\n" in buf:
            line, buf = buf.split(b"\n", 1)
            yield line.decode(errors="replace")
