"""CRI ListMetricDescriptors / ListPodSandboxMetrics: cAdvisor-style metrics for the kubelet.

The kubelet (with PodAndContainerStatsFromCRI) turns each descriptor into a Prometheus
metric whose labels are exactly `label_keys`, and each pb.Metric into one sample whose
`label_values` line up with them. The values come from the StatsCollector, the same
cgroup and /proc/net/dev readings ContainerStats answers with. CRI values are integers:
CPU time is reported in whole seconds.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from cri_api.v1 import api_pb2 as pb

from podling.services.containers import ContainerService
from podling.services.pods import PodService
from podling.services.stats import StatsCollector
from podling.store.pods import CT_RUNNING, PodRecord

CONTAINER_LABELS = ("container", "id", "image", "name", "namespace", "pod")
NETWORK_LABELS = (*CONTAINER_LABELS, "interface")
INFRA_CONTAINER = "POD"  # cAdvisor's name for the sandbox, which owns the pod's network


@dataclass(frozen=True)
class Desc:
    name: str
    help: str
    kind: pb.MetricType.ValueType
    labels: tuple[str, ...] = CONTAINER_LABELS


CPU = Desc(
    "container_cpu_usage_seconds_total",
    "Cumulative cpu time consumed in seconds.",
    pb.MetricType.COUNTER,
)
WORKING_SET = Desc(
    "container_memory_working_set_bytes", "Current working set in bytes.", pb.MetricType.GAUGE
)
MEM_USAGE = Desc(
    "container_memory_usage_bytes",
    "Current memory usage in bytes, including all memory regardless of when it was accessed",
    pb.MetricType.GAUGE,
)
RSS = Desc("container_memory_rss", "Size of RSS in bytes.", pb.MetricType.GAUGE)
RX = Desc(
    "container_network_receive_bytes_total",
    "Cumulative count of bytes received",
    pb.MetricType.COUNTER,
    NETWORK_LABELS,
)
TX = Desc(
    "container_network_transmit_bytes_total",
    "Cumulative count of bytes transmitted",
    pb.MetricType.COUNTER,
    NETWORK_LABELS,
)
RX_ERR = Desc(
    "container_network_receive_errors_total",
    "Cumulative count of errors encountered while receiving",
    pb.MetricType.COUNTER,
    NETWORK_LABELS,
)
TX_ERR = Desc(
    "container_network_transmit_errors_total",
    "Cumulative count of errors encountered while transmitting",
    pb.MetricType.COUNTER,
    NETWORK_LABELS,
)
DESCRIPTORS = (CPU, WORKING_SET, MEM_USAGE, RSS, RX, TX, RX_ERR, TX_ERR)


def descriptors() -> list[pb.MetricDescriptor]:
    return [pb.MetricDescriptor(name=d.name, help=d.help, label_keys=d.labels) for d in DESCRIPTORS]


def _metric(d: Desc, at_ns: int, labels: list[str], value: int) -> pb.Metric:
    return pb.Metric(
        name=d.name,
        timestamp=at_ns,
        metric_type=d.kind,
        label_values=labels,
        value=pb.UInt64Value(value=value),
    )


def container_metrics(
    stats: pb.ContainerStats, image: str, pod: pb.PodSandboxMetadata
) -> list[pb.Metric]:
    """CPU and memory of one container, labelled like cAdvisor labels them."""
    a = stats.attributes
    labels = [a.metadata.name, a.id, image, a.id, pod.namespace, pod.name]
    cpu, mem = stats.cpu, stats.memory
    return [
        _metric(CPU, cpu.timestamp, labels, cpu.usage_core_nano_seconds.value // 1_000_000_000),
        _metric(WORKING_SET, mem.timestamp, labels, mem.working_set_bytes.value),
        _metric(MEM_USAGE, mem.timestamp, labels, mem.usage_bytes.value),
        _metric(RSS, mem.timestamp, labels, mem.rss_bytes.value),
    ]


def network_metrics(stats: pb.PodSandboxStats) -> list[pb.Metric]:
    """The pod's interfaces (loopback excluded), attributed to its sandbox as in cAdvisor."""
    a, net = stats.attributes, stats.linux.network
    base = [INFRA_CONTAINER, a.id, "", a.id, a.metadata.namespace, a.metadata.name]
    out: list[pb.Metric] = []
    for iface in net.interfaces:
        labels = [*base, iface.name]
        out += [
            _metric(RX, net.timestamp, labels, iface.rx_bytes.value),
            _metric(TX, net.timestamp, labels, iface.tx_bytes.value),
            _metric(RX_ERR, net.timestamp, labels, iface.rx_errors.value),
            _metric(TX_ERR, net.timestamp, labels, iface.tx_errors.value),
        ]
    return out


class MetricsApi:
    """Mixin of RuntimeServicer: the two CRI metrics RPCs."""

    _pods: PodService
    _containers: ContainerService
    _stats: StatsCollector

    def ListMetricDescriptors(
        self, request: pb.ListMetricDescriptorsRequest, context: Any
    ) -> pb.ListMetricDescriptorsResponse:
        return pb.ListMetricDescriptorsResponse(descriptors=descriptors())

    def ListPodSandboxMetrics(
        self, request: pb.ListPodSandboxMetricsRequest, context: Any
    ) -> pb.ListPodSandboxMetricsResponse:
        return pb.ListPodSandboxMetricsResponse(
            pod_metrics=[self._pod_metrics(pod) for pod in self._pods.list(None)]
        )

    def _pod_metrics(self, pod: PodRecord) -> pb.PodSandboxMetrics:
        running = [c for c in self._containers.store.containers(pod.id) if c.state == CT_RUNNING]
        stats = self._stats.pod(pod, running)
        images = {c.id: c.image for c in running}
        meta = stats.attributes.metadata
        return pb.PodSandboxMetrics(
            pod_sandbox_id=pod.id,
            metrics=network_metrics(stats),
            container_metrics=[
                pb.ContainerMetrics(
                    container_id=cs.attributes.id,
                    metrics=container_metrics(cs, images.get(cs.attributes.id, ""), meta),
                )
                for cs in stats.linux.containers
            ],
        )
