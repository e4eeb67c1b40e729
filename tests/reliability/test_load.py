"""Load on one node: 30 pods created at once, and a kubelet-like poller over N pods with
two containers each (ListPodSandbox, ListContainers, ListContainerStats every second and
PodSandboxStatus per pod): no errors, list latency flat, podlingd's memory flat.

Short mode (CI): N=20 for 30 s. Long mode (PODLING_LONG=1): N=100 for 10 minutes.
PODLING_LOAD_PODS / PODLING_LOAD_SECONDS override either. No assertion is made on
absolute latency: the machine is shared and has 2 cores.
"""

from __future__ import annotations

import os
import statistics
import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor, wait
from dataclasses import dataclass, field

import grpc
import pytest
from cri_api.v1 import api_pb2 as pb

from tests.integration.pod_fixtures import PodEnv
from tests.reliability.conftest import LONG
from tests.support.daemon import Daemon
from tests.support.pods import container_config, pod_config, run_pod, start_container

pytestmark = pytest.mark.root
BRIDGE, SUBNET = "plload0", "10.94.0.0/22"
RUNNING = pb.ContainerState.CONTAINER_RUNNING
READY = pb.PodSandboxState.SANDBOX_READY
PODS = int(os.environ.get("PODLING_LOAD_PODS", 100 if LONG else 20))
SECONDS = float(os.environ.get("PODLING_LOAD_SECONDS", 600 if LONG else 30))
RSS_MARGIN = 10 << 20  # what the poller may add to podlingd's RSS after its warm-up
WORKERS = 4  # concurrent RunPodSandbox calls while setting up: 2 cores, keep it small


@dataclass
class Pod:
    id: str
    config: pb.PodSandboxConfig
    containers: list[str] = field(default_factory=list)


def make_pod(e: PodEnv, containers: Iterable[tuple[str, pb.ContainerConfig]]) -> Pod:
    """RunPodSandbox, then create and start each container."""
    cfg = pod_config(log_dir=e.logs)
    pod = Pod(run_pod(e.daemon, cfg), cfg)
    for _name, ccfg in containers:
        pod.containers.append(start_container(e.daemon, pod.id, cfg, ccfg))
    return pod


def sleepers(n: int) -> list[tuple[str, pb.ContainerConfig]]:
    return [(f"c{i}", container_config(f"c{i}", "sleep", "100000")) for i in range(n)]


def make_pods(
    e: PodEnv, count: int, containers: Callable[[], list[tuple[str, pb.ContainerConfig]]]
) -> list[Pod]:
    """`count` pods made WORKERS at a time; fails on the first error."""
    with ThreadPoolExecutor(WORKERS) as pool:
        futures = [pool.submit(make_pod, e, containers()) for _ in range(count)]
        return [f.result(timeout=300) for f in futures]


def teardown(d: Daemon) -> None:
    """Kill every container at once (sleep ignores SIGTERM as PID 1), then stop and remove
    the pods, WORKERS at a time."""
    rt = d.runtime
    with ThreadPoolExecutor(WORKERS) as pool:
        cts = rt.ListContainers(pb.ListContainersRequest()).containers
        stop = [
            pool.submit(rt.StopContainer, pb.StopContainerRequest(container_id=c.id, timeout=0))
            for c in cts
        ]
        for f in stop:
            f.result(timeout=120)

        def remove(pod_id: str) -> None:
            rt.StopPodSandbox(pb.StopPodSandboxRequest(pod_sandbox_id=pod_id))
            rt.RemovePodSandbox(pb.RemovePodSandboxRequest(pod_sandbox_id=pod_id))

        pods = rt.ListPodSandbox(pb.ListPodSandboxRequest()).items
        for f in [pool.submit(remove, p.id) for p in pods]:
            f.result(timeout=120)


def rss(pid: int) -> int:
    """Resident set size of `pid` in bytes."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmRSS for {pid}")


def pct(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(q * len(s)))]


# --- 30 pods at once ---------------------------------------------------------------------


def test_30_pods_created_concurrently(clean: PodEnv) -> None:
    d = clean.daemon
    start = threading.Barrier(30)

    def one() -> Pod:
        start.wait(timeout=60)  # all 30 RunPodSandbox calls leave together
        return make_pod(clean, sleepers(1))

    t0 = time.monotonic()
    with ThreadPoolExecutor(30) as pool:
        futures = [pool.submit(one) for _ in range(30)]
        _done, pending = wait(futures, timeout=600)
        assert not pending, f"{len(pending)} of 30 pod creations still hang after 600 s"
        pods = [f.result() for f in futures]  # raises the first error, if any
    took = time.monotonic() - t0
    ips = []
    for pod in pods:
        st = d.runtime.PodSandboxStatus(pb.PodSandboxStatusRequest(pod_sandbox_id=pod.id)).status
        assert st.state == READY
        ips.append(st.network.ip)
        cst = d.runtime.ContainerStatus(pb.ContainerStatusRequest(container_id=pod.containers[0]))
        assert cst.status.state == RUNNING
    assert all(ips) and len(set(ips)) == 30, f"IP collision: {sorted(ips)}"
    print(f"\n30 concurrent pods: created and started in {took:.1f}s")
    t0 = time.monotonic()
    teardown(d)
    assert d.runtime.ListPodSandbox(pb.ListPodSandboxRequest()).items == []
    print(f"30 pods removed in {time.monotonic() - t0:.1f}s")


# --- the kubelet-like poller -------------------------------------------------------------


@dataclass
class PollStats:
    latency: dict[str, list[float]] = field(default_factory=dict)  # per RPC, seconds
    rounds: list[tuple[float, float]] = field(default_factory=list)  # (at, list seconds)
    errors: list[str] = field(default_factory=list)
    rss: list[tuple[float, int]] = field(default_factory=list)  # (at, bytes)

    def timed(self, name: str, call: Callable[[], object]) -> float:
        t0 = time.perf_counter()
        try:
            call()
        except grpc.RpcError as e:
            self.errors.append(f"{name}: {e.code()} {e.details()}")
        took = time.perf_counter() - t0
        self.latency.setdefault(name, []).append(took)
        return took


def poll_round(d: Daemon, stats: PollStats) -> None:
    """What the kubelet's PLEG and stats provider ask each second."""
    rt = d.runtime
    pods: list[pb.PodSandbox] = []

    def list_pods() -> None:
        pods.extend(rt.ListPodSandbox(pb.ListPodSandboxRequest()).items)

    listed = stats.timed("ListPodSandbox", list_pods)
    listed += stats.timed("ListContainers", lambda: rt.ListContainers(pb.ListContainersRequest()))
    listed += stats.timed(
        "ListContainerStats", lambda: rt.ListContainerStats(pb.ListContainerStatsRequest())
    )
    stats.rounds.append((time.monotonic(), listed))
    for p in pods:
        req = pb.PodSandboxStatusRequest(pod_sandbox_id=p.id)
        stats.timed("PodSandboxStatus", lambda r=req: rt.PodSandboxStatus(r))  # type: ignore[misc]


def poll(d: Daemon, seconds: float, warmup: int = 5) -> PollStats:
    """Poll every second for `seconds` after `warmup` rounds (not counted; RSS is taken
    after them: the first rounds fill grpc's and the stats collector's caches)."""
    assert d.proc is not None
    pid = d.proc.pid
    for _ in range(warmup):
        poll_round(d, PollStats())
        time.sleep(1)
    stats = PollStats()
    stats.rss.append((time.monotonic(), rss(pid)))
    end = time.monotonic() + seconds
    while (now := time.monotonic()) < end:
        poll_round(d, stats)
        if len(stats.rounds) % 10 == 0:
            stats.rss.append((time.monotonic(), rss(pid)))
        time.sleep(max(0.0, now + 1 - time.monotonic()))
    stats.rss.append((time.monotonic(), rss(pid)))
    return stats


def report(stats: PollStats, pods: int, seconds: float) -> tuple[float, float]:
    """Print the figures; (p50 list latency of the first third, of the last third)."""
    print(f"\npoller: {pods} pods x 2 containers, {seconds:.0f}s, {len(stats.rounds)} rounds")
    for name, xs in stats.latency.items():
        print(
            f"  {name:20s} n={len(xs):6d} p50={pct(xs, 0.5) * 1000:7.1f}ms "
            f"p99={pct(xs, 0.99) * 1000:7.1f}ms max={max(xs) * 1000:7.1f}ms"
        )
    third = max(1, len(stats.rounds) // 3)
    first = statistics.median(x for _, x in stats.rounds[:third])
    last = statistics.median(x for _, x in stats.rounds[-third:])
    print(f"  list round p50: first third {first * 1000:.1f}ms, last third {last * 1000:.1f}ms")
    mib = [round(b / (1 << 20), 1) for _, b in stats.rss]
    print(f"  podlingd RSS MiB: start {mib[0]}, end {mib[-1]}, max {max(mib)}; samples {mib}")
    print(f"  errors: {len(stats.errors)}")
    return first, last


def test_kubelet_like_poller(clean: PodEnv) -> None:
    d = clean.daemon
    t0 = time.monotonic()
    make_pods(clean, PODS, lambda: sleepers(2))
    print(f"\nset-up: {PODS} pods x 2 containers in {time.monotonic() - t0:.1f}s")
    stats = poll(d, SECONDS)
    first, last = report(stats, PODS, SECONDS)
    assert stats.errors == [], stats.errors[:10]
    assert len(stats.latency["PodSandboxStatus"]) >= PODS * len(stats.rounds)
    # flat: 20 ms of slack keeps a few-ms baseline from failing on scheduler noise
    assert last <= 2 * first + 0.02, f"list latency grew: {first:.4f}s -> {last:.4f}s"
    start_rss, end_rss = stats.rss[0][1], stats.rss[-1][1]
    assert end_rss <= start_rss + RSS_MARGIN, f"podlingd grew {start_rss} -> {end_rss} bytes"
    t0 = time.monotonic()
    teardown(d)
    print(f"tear-down: {time.monotonic() - t0:.1f}s")
