"""Names, places and sizes of one benchmark run (all owned by the bench alone)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

# Fixed, so that `--cleanup` finds what a crashed run left behind.
BASE = Path("/tmp/podling-bench")
RUNTIMES = ("podling", "containerd")


@dataclass(frozen=True)
class Net:
    """One runtime's own CNI network: bridge, subnet, network name, cgroup parent."""

    name: str
    bridge: str
    subnet: str
    cgroup_root: str  # top-level cgroup dir (every hierarchy) the pods go under


NETS = {
    "podling": Net("plbench-podling", "plbench0", "10.95.0.0/24", "plbench-podling"),
    "containerd": Net("plbench-containerd", "plbench1", "10.95.1.0/24", "plbench-containerd"),
}


@dataclass(frozen=True)
class Sizes:
    """How much work each workload does."""

    serial_pods: int  # workload 1
    concurrent_pods: int  # workload 2
    memory_pods: int  # workload 4: pods running when daemon RSS and helper PSS are read
    status_pods: int  # workload 3: pods running while status/list latencies are measured
    status_calls: int  # calls per status/list RPC (a p99 is the 1/100th slowest of them)
    stats_calls: int  # ListContainerStats calls (each reads every container's cgroups)
    exec_calls: int  # ExecSync calls
    pull_mb: int  # workload 5: compressed size of the pull image, roughly
    runs: int


QUICK = Sizes(10, 10, 10, 20, 500, 100, 20, 30, 3)
FULL = Sizes(50, 20, 50, 100, 2000, 300, 50, 300, 3)
