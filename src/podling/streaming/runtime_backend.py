"""The streaming Backend for podling's own containers and pods.

- exec: `runc exec` in the foreground (see runtime_exec.py).
- attach: conmon's attach socket (SOCK_SEQPACKET). conmon prefixes every output packet
  with \\x02 (stdout) or \\x03 (stderr) and writes what it receives to the container's
  stdin (when created with stdin). Shutting down our write side tells conmon this
  client's stdin ended: without `--leave-stdin-open` (CRI stdin_once) conmon then closes
  the container's stdin. Output ends (EOF) when conmon exits after the container did.
- dial: a TCP connection made on a short-lived thread that joined the pod's network
  namespace (sockets stay in the namespace they were made in); host-network pods dial in
  the daemon's own namespace.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from pathlib import Path

from cri_api.v1 import api_pb2 as pb

from podling import errors
from podling.sandbox.ns_thread import run_in_netns
from podling.services.container_create import spec_of
from podling.services.containers import ContainerService
from podling.services.pods import PodService
from podling.store.pods import CT_RUNNING, POD_READY, ContainerRecord, PodRecord
from podling.streaming.backend import AttachParams, ExecParams, ProcessIO
from podling.streaming.runtime_exec import exec_process, run_exec

# conmon's attach packets: first byte names the stream
ATTACH_STDOUT, ATTACH_STDERR = 2, 3
# conmon reads stdin packets into a fixed buffer; a longer SEQPACKET would be cut short
ATTACH_STDIN_CHUNK = 4096
ATTACH_RECV = 64 * 1024
DIAL_TIMEOUT = 10.0


def running_container(containers: ContainerService, cid: str) -> ContainerRecord:
    """The container `cid` names; NotFound if none, FailedPrecondition unless running."""
    rec = containers.get(cid)
    if rec.state != CT_RUNNING:
        raise errors.FailedPrecondition(
            f"container {rec.id} is in {rec.state} state, not running: "
            "exec and attach need a running container"
        )
    return rec


def ready_pod(pods: PodService, pod_id: str) -> PodRecord:
    """The pod `pod_id` names; NotFound if none, FailedPrecondition unless ready."""
    pod = pods.get(pod_id)
    if pod.state != POD_READY:
        raise errors.FailedPrecondition(
            f"pod sandbox {pod.id} is {pod.state}, not ready: port-forward needs a ready pod"
        )
    return pod


class RuntimeBackend:
    """Backend (streaming/backend.py) over ContainerService and PodService."""

    def __init__(self, containers: ContainerService, pods: PodService) -> None:
        self._containers = containers
        self._pods = pods

    async def exec(self, p: ExecParams, io: ProcessIO) -> int:
        rec = running_container(self._containers, p.container_id)
        process = exec_process(dict(spec_of(rec).get("process") or {}), p)
        runtime = self._containers.handler(rec).runtime  # the runtime of the container's pod
        return await run_exec(runtime, rec.id, Path(rec.bundle), process, p, io)

    # --- attach -------------------------------------------------------------------------

    async def attach(self, p: AttachParams, io: ProcessIO) -> None:
        rec = running_container(self._containers, p.container_id)
        config = pb.ContainerConfig.FromString(rec.config)
        conmon = self._containers.conmon
        sock = conmon.connect_attach(self._containers.deps.paths.attach_sockets, rec.id)
        tasks: list[asyncio.Task[bool]] = []
        try:
            output = asyncio.create_task(_attach_output(sock, p, io))
            tasks.append(output)
            if p.stdin:
                tasks.append(asyncio.create_task(_attach_input(sock, io, config)))
            if config.tty:
                tasks.append(asyncio.create_task(self._attach_resizes(rec, io)))
            await _until_done(output, tasks)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            sock.close()

    async def _attach_resizes(self, rec: ContainerRecord, io: ProcessIO) -> bool:
        async for width, height in io.resizes():
            with contextlib.suppress(errors.PodlingError):  # exited meanwhile: output ends
                self._containers.conmon.resize(Path(rec.bundle), height, width)
        return False

    # --- port-forward -------------------------------------------------------------------

    async def dial(
        self, pod_sandbox_id: str, port: int
    ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        if not 0 < port < 65536:
            raise errors.InvalidArgument(f"port {port} is out of range (1-65535)")
        pod = ready_pod(self._pods, pod_sandbox_id)
        netns = pod.namespaces.get("network")
        if netns:
            sock = await asyncio.to_thread(
                run_in_netns, Path(netns), lambda: _connect(pod.id, port)
            )
        else:  # host network: the pod's localhost is ours
            sock = await asyncio.to_thread(_connect, pod.id, port)
        try:
            return await asyncio.open_connection(sock=sock)
        except BaseException:
            sock.close()
            raise


async def _until_done(output: asyncio.Task[bool], tasks: list[asyncio.Task[bool]]) -> None:
    """Wait for the output to end, or for a helper that says the session is over (a
    detach); re-raise a helper's failure."""
    pending = set(tasks)
    while output in pending:
        done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
        for task in done:
            if task.result() and task is not output:
                return


async def _attach_output(sock: socket.socket, p: AttachParams, io: ProcessIO) -> bool:
    loop = asyncio.get_running_loop()
    while packet := await loop.sock_recv(sock, ATTACH_RECV):
        kind, data = packet[0], packet[1:]
        if kind == ATTACH_STDOUT and p.stdout and data:
            await io.write_stdout(data)
        elif kind == ATTACH_STDERR and p.stderr and data:
            await io.write_stderr(data)
    return True


async def _attach_input(sock: socket.socket, io: ProcessIO, config: pb.ContainerConfig) -> bool:
    """Client stdin → the container. Returns True to end the session (detach), False to
    let the output decide. A container without stdin gets nothing; its input is dropped."""
    loop = asyncio.get_running_loop()
    try:
        while data := await io.read_stdin():
            if not config.stdin:
                continue
            for i in range(0, len(data), ATTACH_STDIN_CHUNK):
                await loop.sock_sendall(sock, data[i : i + ATTACH_STDIN_CHUNK])
        if not config.stdin:
            return False
        if config.stdin_once and not config.tty:
            # conmon closes the container's stdin; the process usually exits, output ends
            sock.shutdown(socket.SHUT_WR)
            return False
    except OSError:
        return False  # conmon went away (the container exited): the output ends too
    return True  # any other stdin EOF detaches this client


def _connect(pod_id: str, port: int) -> socket.socket:
    """A blocking connect to localhost:port, tcp4 then tcp6, in the calling thread's
    network namespace; the socket comes back non-blocking."""
    failures: list[OSError] = []
    for family, host in ((socket.AF_INET, "127.0.0.1"), (socket.AF_INET6, "::1")):
        sock = socket.socket(family, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        try:
            sock.settimeout(DIAL_TIMEOUT)
            sock.connect((host, port))
        except OSError as e:
            sock.close()
            failures.append(e)
            continue
        sock.setblocking(False)
        return sock
    if all(isinstance(e, ConnectionRefusedError) for e in failures[:1]):
        reason = "connection refused (nothing listens on localhost there)"
    else:
        reason = "; ".join(str(e.strerror or e) for e in failures)
    raise errors.Unavailable(f"pod sandbox {pod_id}, port {port}: {reason}")
