"""The per-RPC floor: a do-nothing `Version` answered by different servers, same client.

    python -m bench.micro_floor [--calls 3000] [--no-containerd]

Each server runs in a process of its own on a unix socket in a temp dir; one synchronous
Python client (the bench's) calls it `calls` times and prints p50/p99. Servers:
grpc.aio bare, grpc's thread-pool server bare, podling's own server (podling.rpc, logging
to /dev/null as the daemon's text format would; a successful Version logs at DEBUG, so
not at all here), and, when containerd is installed and this runs as root, containerd's
own CRI Version (Go).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc
from cri_api.v1 import api_pb2 as pb
from cri_api.v1 import api_pb2_grpc as pb_grpc

from bench.workloads import percentile

KINDS = {
    "aio": "grpc.aio, bare",
    "sync": "grpc thread-pool server, bare",
    "podling": "podling.rpc (podlingd's server; a poll logs at DEBUG: off)",
}


class _AsyncVersion(pb_grpc.RuntimeServiceServicer):  # type: ignore[misc]
    async def Version(self, request: pb.VersionRequest, context: Any) -> pb.VersionResponse:
        return pb.VersionResponse(version="0.1.0", runtime_name="floor")


class _SyncVersion(pb_grpc.RuntimeServiceServicer):  # type: ignore[misc]
    def Version(self, request: pb.VersionRequest, context: Any) -> pb.VersionResponse:
        return pb.VersionResponse(version="0.1.0", runtime_name="floor")


def serve(kind: str, socket: str) -> None:
    """Serve Version of `kind` on `socket` until killed (run in a child process)."""
    if kind == "sync":
        server = grpc.server(futures.ThreadPoolExecutor(4))
        pb_grpc.add_RuntimeServiceServicer_to_server(_SyncVersion(), server)
        server.add_insecure_port(f"unix://{socket}")
        server.start()
        server.wait_for_termination()
        return
    asyncio.run(_serve_podling(socket) if kind == "podling" else _serve_aio(socket))


async def _serve_aio(socket: str) -> None:
    server = grpc.aio.server()
    pb_grpc.add_RuntimeServiceServicer_to_server(_AsyncVersion(), server)
    server.add_insecure_port(f"unix://{socket}")
    await server.start()
    await server.wait_for_termination()


async def _serve_podling(socket: str) -> None:
    from podling.log import TextFormatter
    from podling.rpc.server import Server, service_methods

    handler = logging.StreamHandler(open(os.devnull, "w"))  # noqa: SIM115 (process-long)
    handler.setFormatter(TextFormatter())
    logging.getLogger().handlers[:] = [handler]
    logging.getLogger().setLevel(logging.INFO)
    service = pb.DESCRIPTOR.services_by_name["RuntimeService"]
    server = Server(service_methods(_AsyncVersion(), service))
    server.bind(Path(socket))
    await server.start()
    await asyncio.Event().wait()


def measure(socket: Path, calls: int) -> tuple[float, float]:
    """p50/p99 in ms of `calls` Version calls (the first tenth warms up the channel)."""
    with grpc.insecure_channel(f"unix://{socket}") as channel:
        grpc.channel_ready_future(channel).result(timeout=20)
        stub = pb_grpc.RuntimeServiceStub(channel)
        values = []
        for _ in range(calls):
            t0 = time.perf_counter()
            stub.Version(pb.VersionRequest())
            values.append((time.perf_counter() - t0) * 1000)
    values = values[calls // 10 :]
    return percentile(values, 50), percentile(values, 99)


def python_floor(kind: str, calls: int, tmp: Path) -> tuple[float, float]:
    socket = tmp / f"{kind}.sock"
    cmd = [sys.executable, "-m", "bench.micro_floor", "--serve", kind, str(socket)]
    with subprocess.Popen(cmd) as proc:
        try:
            return measure(socket, calls)
        finally:
            proc.kill()


def containerd_floor(calls: int, tmp: Path) -> tuple[float, float] | None:
    if os.geteuid() != 0 or shutil.which("containerd") is None:
        return None
    from bench.daemons import Containerd

    daemon = Containerd(tmp, "http://127.0.0.1:9")  # no pull happens: any mirror will do
    daemon.start()
    try:
        return measure(daemon.socket, calls)
    finally:
        daemon.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.micro_floor")
    parser.add_argument("--calls", type=int, default=3000)
    parser.add_argument("--no-containerd", action="store_true")
    parser.add_argument("--serve", nargs=2, metavar=("KIND", "SOCKET"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve:
        serve(*args.serve)
        return 0
    with tempfile.TemporaryDirectory(prefix="podling-floor-", dir="/var/tmp") as tmp:
        rows: list[tuple[str, tuple[float, float] | None]] = [
            (label, python_floor(kind, args.calls, Path(tmp))) for kind, label in KINDS.items()
        ]
        if not args.no_containerd:
            rows.append(
                ("containerd (Go), its CRI Version", containerd_floor(args.calls, Path(tmp)))
            )
    for label, result in rows:
        if result is not None:
            print(f"| Version, {label} | p50 {result[0]:.3f} ms | p99 {result[1]:.3f} ms |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
