"""The per-RPC floor of grpc.aio here, with and without podling's interceptor.

    python -m bench.micro_floor [--calls 3000]   # no root needed; a socket in a temp dir

Serves a do-nothing RuntimeService.Version on a unix socket, once bare and once behind
LoggingErrorInterceptor (logging to /dev/null as the daemon's text format would), and
prints the p50/p99 of a synchronous client's calls: what no podling code can go below.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import grpc
from cri_api.v1 import api_pb2 as pb
from cri_api.v1 import api_pb2_grpc as pb_grpc

from bench.workloads import percentile
from podling.api.interceptors import LoggingErrorInterceptor
from podling.log import TextFormatter


class _Version(pb_grpc.RuntimeServiceServicer):
    async def Version(self, request: pb.VersionRequest, context: Any) -> pb.VersionResponse:
        return pb.VersionResponse(version="0.1.0", runtime_name="floor")


def _serve(socket: Path, intercept: bool, ready: threading.Event, stop: threading.Event) -> None:
    async def main() -> None:
        server = grpc.aio.server(interceptors=[LoggingErrorInterceptor()] if intercept else [])
        pb_grpc.add_RuntimeServiceServicer_to_server(_Version(), server)
        server.add_insecure_port(f"unix://{socket}")
        await server.start()
        ready.set()
        while not stop.is_set():
            await asyncio.sleep(0.05)
        await server.stop(0)

    asyncio.run(main())


def floor(calls: int, intercept: bool) -> tuple[float, float]:
    with tempfile.TemporaryDirectory(prefix="podling-floor-") as tmp:
        socket = Path(tmp) / "floor.sock"
        ready, stop = threading.Event(), threading.Event()
        thread = threading.Thread(target=_serve, args=(socket, intercept, ready, stop))
        thread.start()
        try:
            ready.wait(10)
            with grpc.insecure_channel(f"unix://{socket}") as channel:
                stub = pb_grpc.RuntimeServiceStub(channel)
                values = []
                for _ in range(calls):
                    t0 = time.perf_counter()
                    stub.Version(pb.VersionRequest())
                    values.append((time.perf_counter() - t0) * 1000)
        finally:
            stop.set()
            thread.join()
    values = values[calls // 10 :]  # the first calls warm up the channel
    return percentile(values, 50), percentile(values, 99)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.micro_floor")
    parser.add_argument("--calls", type=int, default=3000)
    args = parser.parse_args(argv)
    handler = logging.StreamHandler(open("/dev/null", "w"))  # noqa: SIM115 (process-long)
    handler.setFormatter(TextFormatter())
    logging.getLogger().handlers[:] = [handler]
    logging.getLogger().setLevel(logging.INFO)
    for intercept in (False, True):
        p50, p99 = floor(args.calls, intercept)
        label = "with interceptor" if intercept else "bare grpc.aio"
        print(f"| Version, {label} | p50 {p50:.3f} ms | p99 {p99:.3f} ms |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
