"""Container and pod stats from the cgroups (v1 and v2) and the writable layers.

CPU usage in nano-cores needs two samples: the previous cumulative reading of each
cgroup is kept, and the rate is computed against it (0 on the first call).
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from pathlib import Path

from cri_api.v1 import api_pb2 as pb

from podling.oslib import cgroups
from podling.sandbox.ns_thread import run_in_netns
from podling.snapshots.base import Snapshotter
from podling.store.pods import ContainerRecord, PodRecord


@dataclass
class _Sample:
    at_ns: int
    usage_ns: int


# A CPU sample older than this gives no useful rate; cgroups not read for that long are
# mostly of removed containers, whose samples are dropped (see _prune).
SAMPLE_TTL_NS = 300 * 1_000_000_000
_PRUNE_MIN = 1024


class StatsCollector:
    def __init__(self, snapshotter: Snapshotter, snapshots_dir: str) -> None:
        self._snapshotter = snapshotter
        self._snapshots_dir = snapshots_dir
        self._last: dict[str, _Sample] = {}  # cgroup path → its last CPU sample
        self._prune_at = _PRUNE_MIN
        # the API reads stats in worker threads (cgroup files, disk usage): one at a time
        # may update the samples
        self._samples_lock = threading.Lock()

    def _prune(self, now: int) -> None:
        """Drop samples older than SAMPLE_TTL_NS once the map has doubled since the last
        prune: without it the map grows with every container the node ever ran."""
        if len(self._last) < self._prune_at:
            return
        self._last = {p: s for p, s in self._last.items() if now - s.at_ns < SAMPLE_TTL_NS}
        self._prune_at = max(_PRUNE_MIN, 2 * len(self._last))

    def _cpu(self, path: str, now: int, usage_ns: int) -> pb.CpuUsage:
        with self._samples_lock:
            prev = self._last.get(path)
            self._last[path] = _Sample(now, usage_ns)
            self._prune(now)
        rate = 0
        if prev is not None and now > prev.at_ns and usage_ns >= prev.usage_ns:
            rate = (usage_ns - prev.usage_ns) * 1_000_000_000 // (now - prev.at_ns)
        return pb.CpuUsage(
            timestamp=now,
            usage_core_nano_seconds=pb.UInt64Value(value=usage_ns),
            usage_nano_cores=pb.UInt64Value(value=rate),
        )

    def _cpu_mem(self, path: str) -> tuple[pb.CpuUsage, pb.MemoryUsage]:
        now = time.time_ns()
        st = cgroups.stats(path)
        if st is None:
            return pb.CpuUsage(timestamp=now), pb.MemoryUsage(timestamp=now)
        available = (
            max(0, st.memory_limit - st.memory_working_set) if st.memory_limit < 1 << 62 else 0
        )
        mem = pb.MemoryUsage(
            timestamp=now,
            working_set_bytes=pb.UInt64Value(value=st.memory_working_set),
            available_bytes=pb.UInt64Value(value=available),
            usage_bytes=pb.UInt64Value(value=st.memory_usage),
            rss_bytes=pb.UInt64Value(value=st.memory_rss),
            page_faults=pb.UInt64Value(value=st.page_faults),
            major_page_faults=pb.UInt64Value(value=st.major_page_faults),
        )
        return self._cpu(path, now, st.cpu_usage_ns), mem

    def container(self, rec: ContainerRecord, pod: PodRecord) -> pb.ContainerStats:
        config = pb.ContainerConfig.FromString(rec.config)
        cpu, mem = self._cpu_mem(f"{pod.cgroup_parent}/{rec.id}")
        used, inodes = (0, 0)
        if self._snapshotter.exists(rec.snapshot):
            used, inodes = self._snapshotter.usage(rec.snapshot)
        return pb.ContainerStats(
            attributes=pb.ContainerAttributes(
                id=rec.id,
                metadata=config.metadata,
                labels=dict(config.labels),
                annotations=dict(config.annotations),
            ),
            cpu=cpu,
            memory=mem,
            writable_layer=pb.FilesystemUsage(
                timestamp=time.time_ns(),
                fs_id=pb.FilesystemIdentifier(mountpoint=self._snapshots_dir),
                used_bytes=pb.UInt64Value(value=used),
                inodes_used=pb.UInt64Value(value=inodes),
            ),
        )

    def pod(self, pod: PodRecord, containers: list[ContainerRecord]) -> pb.PodSandboxStats:
        config = pb.PodSandboxConfig.FromString(pod.config)
        cpu, mem = self._cpu_mem(pod.cgroup_parent)
        linux = pb.LinuxPodSandboxStats(
            cpu=cpu,
            memory=mem,
            network=self._network(pod),
            process=pb.ProcessUsage(
                timestamp=time.time_ns(),
                process_count=pb.UInt64Value(value=len(cgroups.pids(pod.cgroup_parent))),
            ),
            containers=[self.container(c, pod) for c in containers],
        )
        return pb.PodSandboxStats(
            attributes=pb.PodSandboxAttributes(
                id=pod.id,
                metadata=config.metadata,
                labels=dict(config.labels),
                annotations=dict(config.annotations),
            ),
            linux=linux,
        )

    def _network(self, pod: PodRecord) -> pb.NetworkUsage | None:
        netns = pod.namespaces.get("network")
        if not netns:
            return None
        try:
            counters = run_in_netns(Path(netns), _read_net_dev)
        except OSError:
            return None
        now = time.time_ns()
        ifaces = [
            pb.NetworkInterfaceUsage(
                name=name,
                rx_bytes=pb.UInt64Value(value=c[0]),
                rx_errors=pb.UInt64Value(value=c[1]),
                tx_bytes=pb.UInt64Value(value=c[2]),
                tx_errors=pb.UInt64Value(value=c[3]),
            )
            for name, c in counters.items()
            if name != "lo"
        ]
        default = next((i for i in ifaces if i.name == "eth0"), ifaces[0] if ifaces else None)
        return pb.NetworkUsage(timestamp=now, default_interface=default, interfaces=ifaces)


def _read_net_dev() -> dict[str, tuple[int, int, int, int]]:
    """rx bytes, rx errors, tx bytes, tx errors per interface of this thread's netns."""
    out: dict[str, tuple[int, int, int, int]] = {}
    with open("/proc/thread-self/net/dev") as f:
        for line in f.readlines()[2:]:
            name, _, rest = line.partition(":")
            v = [int(x) for x in rest.split()]
            out[name.strip()] = (v[0], v[2], v[8], v[10])
    return out
