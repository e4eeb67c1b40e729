"""podling alone: idle RSS, then status/list latencies with N pods: `python -m bench.micro_status`.

    python -m bench.micro_status [--pods 20] [--calls 500]   # from the project root, as root

A focused, one-minute loop for the daemon's memory and its status/list RPCs (issue 8,
workloads 3 and 4) without containerd or the pull. Same set-up as `bench.run` (the
`Podling` daemon, the loopback registry, busybox `sleep` pods), same place
(settings.BASE), same clean-up sweep; so never run both at once.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

from cri_api.v1 import api_pb2 as pb

from bench import cleanup, images
from bench.cri import Client, timed
from bench.daemons import Podling
from bench.procs import rss_mb
from bench.settings import BASE
from bench.workloads import percentile, status_lists
from tests.support.registry import RegistryServer


def measure(pods: int, calls: int) -> dict[str, float]:
    registry = RegistryServer(BASE / "registry")
    registry.start()
    daemon = Podling(BASE, "")
    client: Client | None = None
    try:
        images.push(registry.url, images.BUSYBOX, images.busybox())
        daemon.registry_url = registry.url
        daemon.start()
        client = Client(daemon.socket, daemon.base / "logs", daemon.net.cgroup_root)
        client.wait_ready()
        time.sleep(1)  # settle: the first Status may still be importing lazily
        out = {"daemon RSS idle (MB)": rss_mb(daemon.pid)}
        client.pull(images.BUSYBOX)
        out["daemon RSS after pull (MB)"] = rss_mb(daemon.pid)
        started = [client.start_pod() for _ in range(pods)]
        out[f"daemon RSS, {pods} pods (MB)"] = rss_mb(daemon.pid)
        out |= status_lists({"podling": client}, {"podling": started}, calls, calls)["podling"]
        # the floor: an RPC that does no work (podling.rpc, no log line at INFO)
        req = pb.VersionRequest()
        floor = [timed(lambda: client.runtime.Version(req))[1] for _ in range(calls)]
        out["Version (floor), p50 (ms)"] = percentile(floor, 50)
        return out
    finally:
        if client is not None:
            client.remove_all_pods()
            client.close()
        daemon.stop()
        registry.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.micro_status")
    parser.add_argument("--pods", type=int, default=20)
    parser.add_argument("--calls", type=int, default=500)
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        parser.error("needs root: it starts a container runtime")
    if BASE.exists():
        cleanup.sweep()
    BASE.mkdir(parents=True)
    cleanup.note_host_dirs()
    try:
        out = measure(args.pods, args.calls)
    finally:
        cleanup.sweep()
    for name, value in out.items():
        print(f"| {name} | {value:.3g} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
