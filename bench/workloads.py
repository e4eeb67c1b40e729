"""The workloads of issue 8; each returns {metric name: value} for one runtime."""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor

from cri_api.v1 import api_pb2 as pb

from bench.cri import TIMEOUT, Client, Started, timed
from bench.daemons import Daemon
from bench.procs import cpu_seconds, processes, pss_mb, rss_mb

Metrics = dict[str, float]


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100) of a non-empty sample."""
    ordered = sorted(values)
    rank = max(0, min(len(ordered) - 1, round(q / 100 * len(ordered) + 0.5) - 1))
    return ordered[rank]


def serial_starts(client: Client, n: int) -> Metrics:
    """Workload 1: n pods started one after another, then each removed."""
    client.remove_pod(client.start_pod())  # warm-up: first-use costs are not the subject
    pods = [client.start_pod() for _ in range(n)]
    teardown = [client.remove_pod(p) for p in pods]
    out: Metrics = {}
    steps: dict[str, Callable[[Started], float]] = {
        "RunPodSandbox": lambda p: p.run_ms,
        "CreateContainer": lambda p: p.create_ms,
        "StartContainer": lambda p: p.start_ms,
        "full pod start": lambda p: p.total_ms,
    }
    for name, get in steps.items():
        values = [get(p) for p in pods]
        out[f"{name} p50 (ms)"] = percentile(values, 50)
        out[f"{name} p90 (ms)"] = percentile(values, 90)
    out["stop + remove pod p50 (ms)"] = percentile(teardown, 50)
    return out


def concurrent_starts(client: Client, k: int) -> Metrics:
    """Workload 2: k pod starts issued at once; wall time until every container runs."""
    gate = threading.Barrier(k + 1)

    def one() -> Started:
        gate.wait()
        return client.start_pod()

    with ThreadPoolExecutor(k) as pool:
        futures = [pool.submit(one) for _ in range(k)]
        gate.wait()
        t0 = time.perf_counter()
        pods = [f.result() for f in futures]
        while not all(client.running(p.container_id) for p in pods):
            time.sleep(0.01)
        wall = (time.perf_counter() - t0) * 1000
    client.remove_all_pods()
    return {f"{k} concurrent pod starts, wall (ms)": wall}


def helper_pids(daemon: Daemon) -> list[int]:
    """The per-pod processes the runtime keeps: those naming its dirs (conmon, shims) and
    their catatonit children (pause or infra)."""
    procs = list(processes())
    own = {p.pid for p in procs if str(daemon.base) in p.cmdline and p.pid != daemon.pid}
    infra = {p.pid for p in procs if p.ppid in own and p.comm == "catatonit"}
    return sorted(own | infra)


def memory(daemon: Daemon, pods: int) -> Metrics:
    """Workload 4 (with pods running): daemon RSS, helper PSS per pod."""
    helpers = helper_pids(daemon)
    return {
        f"daemon RSS, {pods} pods (MB)": rss_mb(daemon.pid),
        "helper PSS per pod (MB)": sum(pss_mb(p) for p in helpers) / pods,
        "helper processes per pod": len(helpers) / pods,
    }


def _latencies(calls: int, fn: Callable[[], object]) -> list[float]:
    return [timed(fn)[1] for _ in range(calls)]


def status_lists(client: Client, pods: Sequence[Started], calls: int) -> Metrics:
    """Workload 3: what the kubelet polls, with `pods` running; p50 and p99."""
    r = client.runtime
    pick = random.Random(8).choice
    rpcs: dict[str, Callable[[], object]] = {
        "ContainerStatus": lambda: r.ContainerStatus(
            pb.ContainerStatusRequest(container_id=pick(pods).container_id), timeout=TIMEOUT
        ),
        "PodSandboxStatus": lambda: r.PodSandboxStatus(
            pb.PodSandboxStatusRequest(pod_sandbox_id=pick(pods).pod_id), timeout=TIMEOUT
        ),
        "ListContainers": lambda: r.ListContainers(pb.ListContainersRequest(), timeout=TIMEOUT),
        "ListPodSandbox": lambda: r.ListPodSandbox(pb.ListPodSandboxRequest(), timeout=TIMEOUT),
        "ListContainerStats": lambda: r.ListContainerStats(
            pb.ListContainerStatsRequest(), timeout=TIMEOUT
        ),
    }
    out: Metrics = {}
    for name, fn in rpcs.items():
        values = _latencies(calls, fn)
        out[f"{name}, {len(pods)} pods, p50 (ms)"] = percentile(values, 50)
        out[f"{name}, {len(pods)} pods, p99 (ms)"] = percentile(values, 99)
    return out


def exec_sync(client: Client, container_id: str, calls: int) -> Metrics:
    """ExecSync of `true` in a running container."""
    req = pb.ExecSyncRequest(container_id=container_id, cmd=["true"], timeout=30)
    values = _latencies(calls, lambda: client.runtime.ExecSync(req, timeout=TIMEOUT))
    return {
        "ExecSync p50 (ms)": percentile(values, 50),
        "ExecSync p90 (ms)": percentile(values, 90),
    }


def loaded(
    client: Client, daemon: Daemon, mem_pods: int, status_pods: int, calls: int, exec_calls: int
) -> Metrics:
    """Workloads 4, 3 and ExecSync: pods started up to `mem_pods` (memory read), then up
    to `status_pods` (status/list latencies, ExecSync); all removed at the end."""
    try:
        pods = [client.start_pod() for _ in range(mem_pods)]
        time.sleep(1)  # let the helpers settle after their start
        out = memory(daemon, mem_pods)
        pods += [client.start_pod() for _ in range(status_pods - mem_pods)]
        out |= status_lists(client, pods, calls)
        out |= exec_sync(client, pods[0].container_id, exec_calls)
        return out
    finally:
        client.remove_all_pods()


def cold_pull(client: Client, daemon: Daemon, ref: str, mb: int) -> Metrics:
    """Workload 5: PullImage of an image no runtime has seen; wall and daemon CPU time."""
    cpu0 = cpu_seconds(daemon.pid)
    _, wall = timed(lambda: client.pull(ref))
    cpu = cpu_seconds(daemon.pid) - cpu0
    client.remove_image(ref)
    return {f"cold pull {mb} MB, wall (s)": wall / 1000, f"cold pull {mb} MB, daemon CPU (s)": cpu}
