"""`podling port-forward POD [LOCAL:]REMOTE ...`: local TCP ports to ports in a pod.

Each mapping listens on 127.0.0.1:LOCAL (LOCAL omitted: the same number as REMOTE;
empty or 0: any free port). Every accepted connection makes its own PortForward call
(stream URLs are single use) and its own stream to REMOTE on the pod's localhost. Runs
until Ctrl-C or SIGTERM.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sys
from typing import Literal

import click
from cri_api.v1 import api_pb2 as pb

from podling.cli.connect import Client, fail
from podling.cli.lookup import client_of, resolve_pod
from podling.cli.streams import transport_option
from podling.errors import PodlingError
from podling.streaming import client as stream_client
from podling.streaming.client import ForwardedConnection

LISTEN_HOST = "127.0.0.1"
CHUNK = 64 * 1024
# once the pod's side is done, how long our client's last bytes may still take
CLOSE_GRACE = 1.0


def parse_mapping(text: str) -> tuple[int, int]:
    """'8080' → (8080, 8080); '18080:8080' → (18080, 8080); ':8080' → (0, 8080)."""
    local, sep, remote = text.rpartition(":")
    if not sep:
        local = remote
    try:
        lport, rport = int(local or "0"), int(remote)
    except ValueError:
        fail(f"port mapping {text!r}: want [LOCAL:]REMOTE with port numbers")
    if not 0 < rport < 65536 or not 0 <= lport < 65536:
        fail(f"port mapping {text!r}: ports must be 1-65535 (LOCAL 0: any free port)")
    return lport, rport


@click.command("port-forward")
@click.argument("pod")
@click.argument("mappings", nargs=-1, required=True, metavar="[LOCAL:]REMOTE...")
@transport_option
@click.pass_obj
def port_forward(
    obj: dict[str, object], pod: str, mappings: tuple[str, ...], transport: str
) -> None:
    """Forward local ports on 127.0.0.1 to ports on POD's localhost, until Ctrl-C."""
    pairs = [parse_mapping(m) for m in mappings]
    with client_of(obj) as c:
        pod_id = resolve_pod(c, pod)
        forwarder = Forwarder(c, pod_id, transport)
        try:
            asyncio.run(forwarder.serve(pairs))
        except OSError as e:
            fail(f"cannot listen on {LISTEN_HOST}: {e.strerror or e}")


class Forwarder:
    def __init__(self, c: Client, pod_id: str, transport: str) -> None:
        self._c = c
        self._pod_id = pod_id
        self._transport = transport

    async def serve(self, pairs: list[tuple[int, int]]) -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        servers: list[asyncio.Server] = []
        try:
            for local, remote in pairs:
                servers.append(await self._listen(local, remote))
            await stop.wait()
        finally:
            for server in servers:
                server.close()
            for server in servers:
                await server.wait_closed()

    async def _listen(self, local: int, remote: int) -> asyncio.Server:
        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await self._forward(reader, writer, remote)

        server = await asyncio.start_server(handle, LISTEN_HOST, local)
        port = server.sockets[0].getsockname()[1]
        print(f"Forwarding from {LISTEN_HOST}:{port} -> {remote}", flush=True)
        return server

    async def _forward(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, remote: int
    ) -> None:
        try:
            url = await asyncio.to_thread(self._url)
            conn = await stream_client.port_forward(url, remote, protocol=self._protocol())
        except Exception as e:  # this connection fails; the others go on
            _complain(remote, e)
            writer.close()
            return
        try:
            await splice(reader, writer, conn)
        except Exception as e:
            _complain(remote, e)
        finally:
            await conn.close()
            writer.close()

    def _protocol(self) -> Literal["spdy", "websocket"]:
        return "websocket" if self._transport == "websocket" else "spdy"

    def _url(self) -> str:
        req = pb.PortForwardRequest(pod_sandbox_id=self._pod_id)
        return str(self._c.runtime.PortForward(req, timeout=self._c.timeout).url)


def _complain(remote: int, e: Exception) -> None:
    print(f"podling: forwarding to port {remote}: {e}", file=sys.stderr, flush=True)


async def splice(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, conn: ForwardedConnection
) -> None:
    """Copy our client's connection to the pod's and back. Our client's EOF half-closes
    the pod side (the answer may still come); once the pod's side ended, our client gets
    CLOSE_GRACE to finish. A forward failure (nothing listens) is raised."""
    up = asyncio.create_task(_upload(reader, conn))
    try:
        while data := await conn.read():
            writer.write(data)
            await writer.drain()
        if writer.can_write_eof():
            writer.write_eof()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(up), CLOSE_GRACE)
    finally:
        up.cancel()
        await asyncio.gather(up, return_exceptions=True)


async def _upload(reader: asyncio.StreamReader, conn: ForwardedConnection) -> None:
    with contextlib.suppress(ConnectionError, OSError, PodlingError):
        while data := await reader.read(CHUNK):
            await conn.write(data)
        await conn.close_write()


def register(group: click.Group) -> None:
    group.add_command(port_forward)
