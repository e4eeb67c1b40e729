"""The contract between the streaming protocols and the runtime that does the work.

The protocol layer (HTTP front, SPDY, WebSocket, remote-command, port-forward) knows
nothing about containers: it turns a client's streams into a `ProcessIO` and calls a
`Backend`. The runtime side (streaming/runtime_backend.py) runs the command in the
container, attaches to conmon, or dials a port inside the pod's network namespace.

Vocabulary:
- stdin/stdout/stderr: the process' standard streams as the client asked for them;
  with a tty there is no stderr (the terminal merges it into stdout).
- resize: terminal size changes sent by the client, as (width, height) in cells.
- exit code: 0..255 (128+n for a signal); the protocol layer reports it on the
  error stream (v4+: a JSON Status with an ExitCode cause when non-zero).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Literal, Protocol

Kind = Literal["exec", "attach", "portforward"]


@dataclass(frozen=True)
class ExecParams:
    container_id: str
    cmd: tuple[str, ...]
    tty: bool
    stdin: bool
    stdout: bool
    stderr: bool


@dataclass(frozen=True)
class AttachParams:
    container_id: str
    tty: bool
    stdin: bool
    stdout: bool
    stderr: bool


@dataclass(frozen=True)
class PortForwardParams:
    pod_sandbox_id: str
    ports: tuple[int, ...]  # the ports the CRI request named (empty: any port the client asks)


Params = ExecParams | AttachParams | PortForwardParams


class ProcessIO(Protocol):
    """The client's side of one exec or attach session."""

    async def read_stdin(self) -> bytes:
        """The next chunk of client stdin; b"" once the client closed it. Without a
        stdin stream this waits until the session ends (never returns data)."""
        ...

    async def write_stdout(self, data: bytes) -> None: ...

    async def write_stderr(self, data: bytes) -> None:
        """Discarded when the client asked for no stderr (or with a tty)."""
        ...

    def resizes(self) -> AsyncIterator[tuple[int, int]]:
        """(width, height) terminal sizes as the client sends them; ends with the session."""
        ...


class Backend(Protocol):
    async def exec(self, p: ExecParams, io: ProcessIO) -> int:
        """Run p.cmd in the container wired to `io`; return its exit code once it ended
        and its output was written. PodlingError if it cannot be started (reported to
        the client on the error stream)."""
        ...

    async def attach(self, p: AttachParams, io: ProcessIO) -> None:
        """Relay the running container's output to `io` (no history) and `io`'s stdin to
        the container (if it has stdin); return when the container's output ends or the
        client detached (stdin EOF without stdin_once, or with a tty)."""
        ...

    async def dial(
        self, pod_sandbox_id: str, port: int
    ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        """A TCP connection to localhost:port inside the pod's network namespace (tcp4,
        then tcp6). PodlingError (e.g. Unavailable "connection refused") if none."""
        ...
