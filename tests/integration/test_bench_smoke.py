"""The benchmark harness end to end at tiny sizes: podlingd from this tree and Debian's
containerd, the loopback registry, every workload, the results written, the host clean.

Only that the harness works is checked, not its numbers (the benchmark is not a test).
It uses the bench's fixed place, /tmp/podling-bench, its bridges plbench0/plbench1 and
subnets 10.95.0.0/24 and 10.95.1.0/24; a bench running at the same time would clash.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from bench import run
from bench.procs import cgroup_dirs, processes
from bench.settings import BASE, NETS, Sizes

pytestmark = pytest.mark.root

TINY = Sizes(
    serial_pods=2,
    concurrent_pods=2,
    memory_pods=1,
    status_pods=2,
    status_calls=10,
    stats_calls=4,
    exec_calls=4,
    pull_mb=8,
    runs=1,
)
WORKLOADS = (
    "daemon RSS idle (MB)",
    "full pod start p90 (ms)",
    "stop + remove pod p50 (ms)",
    "2 concurrent pod starts, wall (ms)",
    "daemon RSS, 1 pods (MB)",
    "helper PSS per pod (MB)",
    "ContainerStatus, 2 pods, p99 (ms)",
    "ListContainerStats, 2 pods, p50 (ms)",
    "ExecSync p90 (ms)",
    "cold pull 8 MB, wall (s)",
    "cold pull 8 MB, daemon CPU (s)",
)


def test_the_bench_runs_every_workload_on_both_runtimes(tmp_path: Path) -> None:
    run.bench(TINY, quick=True, results=tmp_path)
    figures = json.loads((tmp_path / "latest.json").read_text())["runs"][0]
    assert set(figures) == {"podling", "containerd"}
    assert set(figures["podling"]) == set(figures["containerd"])
    for workload in WORKLOADS:
        assert figures["podling"][workload] > 0, workload
        assert figures["containerd"][workload] > 0, workload
    # each runtime keeps its helpers: conmon per container; a shim and pause per pod
    assert figures["podling"]["helper processes per pod"] == 1
    assert figures["containerd"]["helper processes per pod"] == 2
    table = (tmp_path / "latest.md").read_text()
    assert all(f"| {w} |" in table for w in WORKLOADS)
    assert (tmp_path / "ratios.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # the shared leak check covers mounts and iptables; these are the bench's own
    assert not BASE.exists()
    for net in NETS.values():
        assert cgroup_dirs(net.cgroup_root) == [], net.cgroup_root
        assert not Path(f"/sys/class/net/{net.bridge}").exists(), net.bridge
    me = os.getpid()
    assert [p.cmdline for p in processes() if str(BASE) in p.cmdline and p.pid != me] == []
