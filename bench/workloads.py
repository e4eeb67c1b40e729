"""The workloads of issue 8: {metric name: value} per runtime.

What compares the runtimes call by call (pod starts, polls, ExecSync) runs both at once,
interleaved in blocks; the rest (concurrency, memory, pull) runs one runtime at a time.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

from cri_api.v1 import api_pb2 as pb

from bench.cri import TIMEOUT, Client, Started, timed
from bench.daemons import Daemon
from bench.procs import cpu_seconds, processes, pss_mb, rss_mb

Metrics = dict[str, float]
T = TypeVar("T")


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100) of a non-empty sample."""
    ordered = sorted(values)
    rank = max(0, min(len(ordered) - 1, round(q / 100 * len(ordered) + 0.5) - 1))
    return ordered[rank]


Clients = dict[str, Client]  # runtime name -> its client, in the run's order
ByRuntime = dict[str, Metrics]
# Paired figures are taken in blocks that alternate between the runtimes (ABBA: the
# first runtime of a block alternates too), so both see the same machine: measured one
# after the other, minutes apart, a p50 here moves by ~15 % between periods.
START_BLOCK = 10  # pods per block of workload 1
CALL_BLOCK = 50  # calls per block of workload 3 and ExecSync


def interleaved(
    clients: Clients, total: int, block: int, step: Callable[[str, int], list[T]]
) -> dict[str, list[T]]:
    """`step(name, k)` for every runtime until each has `total` results, k <= block at a
    time, runtimes alternating per block and the first of each block alternating."""
    names = list(clients)
    out: dict[str, list[T]] = {n: [] for n in names}
    for i, done in enumerate(range(0, total, block)):
        for name in names if i % 2 == 0 else names[::-1]:
            out[name] += step(name, min(block, total - done))
    return out


def serial_starts(clients: Clients, n: int) -> ByRuntime:
    """Workload 1: n pods per runtime started one after another (interleaved in blocks),
    then each removed the same way."""
    for c in clients.values():
        c.remove_pod(c.start_pod())  # warm-up: first-use costs are not the subject
    started = interleaved(
        clients, n, START_BLOCK, lambda name, k: [clients[name].start_pod() for _ in range(k)]
    )
    left = {name: list(pods) for name, pods in started.items()}

    def remove(name: str, k: int) -> list[float]:
        batch, left[name] = left[name][:k], left[name][k:]
        return [clients[name].remove_pod(p) for p in batch]

    teardown = interleaved(clients, n, START_BLOCK, remove)
    return {name: _start_metrics(started[name], teardown[name]) for name in clients}


def _start_metrics(pods: Sequence[Started], teardown: Sequence[float]) -> Metrics:
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


def _polls(client: Client, pods: Sequence[Started]) -> dict[str, Callable[[], object]]:
    """What the kubelet polls, as calls on `client` (status calls on a random pod)."""
    r = client.runtime
    pick = random.Random(8).choice
    return {
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


def _latencies(
    clients: Clients, calls: int, rpc: dict[str, Callable[[], object]]
) -> dict[str, list[float]]:
    """`calls` timed calls of rpc[name] per runtime, interleaved in blocks."""
    return interleaved(
        clients, calls, CALL_BLOCK, lambda name, k: [timed(rpc[name])[1] for _ in range(k)]
    )


def status_lists(
    clients: Clients, pods: dict[str, list[Started]], calls: int, stats_calls: int
) -> ByRuntime:
    """Workload 3: what the kubelet polls, with `pods` running; p50 and p99 of `calls`
    calls each (`stats_calls` of ListContainerStats, which takes ~100 times longer)."""
    polls = {name: _polls(c, pods[name]) for name, c in clients.items()}
    out: ByRuntime = {name: {} for name in clients}
    for rpc in polls[next(iter(clients))]:
        n_calls = stats_calls if rpc == "ListContainerStats" else calls
        values = _latencies(clients, n_calls, {name: polls[name][rpc] for name in clients})
        for name, v in values.items():
            n = len(pods[name])
            out[name][f"{rpc}, {n} pods, p50 (ms)"] = percentile(v, 50)
            out[name][f"{rpc}, {n} pods, p99 (ms)"] = percentile(v, 99)
    return out


def exec_sync(clients: Clients, container_ids: dict[str, str], calls: int) -> ByRuntime:
    """ExecSync of `true` in a running container of each runtime."""

    def call(name: str) -> Callable[[], object]:
        req = pb.ExecSyncRequest(container_id=container_ids[name], cmd=["true"], timeout=30)
        return lambda: clients[name].runtime.ExecSync(req, timeout=TIMEOUT)

    values = _latencies(clients, calls, {name: call(name) for name in clients})
    return {
        name: {"ExecSync p50 (ms)": percentile(v, 50), "ExecSync p90 (ms)": percentile(v, 90)}
        for name, v in values.items()
    }


def loaded(
    clients: Clients,
    daemons: dict[str, Daemon],
    mem_pods: int,
    status_pods: int,
    calls: int,
    stats_calls: int,
    exec_calls: int,
) -> ByRuntime:
    """Workload 4 per runtime (`mem_pods` each), then workload 3 and ExecSync with
    `status_pods` running in each runtime at once; all removed at the end."""
    pods: dict[str, list[Started]] = {name: [] for name in clients}
    out: ByRuntime = {}
    try:
        for name, client in clients.items():
            pods[name] += [client.start_pod() for _ in range(mem_pods)]
            time.sleep(1)  # let the helpers settle after their start
            out[name] = memory(daemons[name], mem_pods)
        for name, client in clients.items():
            pods[name] += [client.start_pod() for _ in range(status_pods - mem_pods)]
        for name, metrics in status_lists(clients, pods, calls, stats_calls).items():
            out[name] |= metrics
        first = {name: p[0].container_id for name, p in pods.items()}
        for name, metrics in exec_sync(clients, first, exec_calls).items():
            out[name] |= metrics
        return out
    finally:
        for client in clients.values():
            client.remove_all_pods()


def cold_pull(client: Client, daemon: Daemon, ref: str, mb: int) -> Metrics:
    """Workload 5: PullImage of an image no runtime has seen; wall and daemon CPU time."""
    cpu0 = cpu_seconds(daemon.pid)
    _, wall = timed(lambda: client.pull(ref))
    cpu = cpu_seconds(daemon.pid) - cpu0
    client.remove_image(ref)
    return {f"cold pull {mb} MB, wall (s)": wall / 1000, f"cold pull {mb} MB, daemon CPU (s)": cpu}
