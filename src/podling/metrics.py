"""The daemon's own metrics, rendered in the Prometheus text exposition format (0.0.4).

Counters and histograms are updated as things happen (RPCs, pulls, OOM kills, runtime
failures); gauges of pods and containers by state are computed at scrape time from the
PodStore, so they can never drift from the records. Nothing here does I/O: `Metrics.render()`
returns the text that metrics_http.MetricsServer serves.
"""

from __future__ import annotations

import math
from bisect import bisect_left
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from itertools import accumulate

from podling.store.pods import (
    CT_CREATED,
    CT_CREATING,
    CT_EXITED,
    CT_RUNNING,
    POD_CREATING,
    POD_NOTREADY,
    POD_READY,
    PodStore,
)

Labels = tuple[str, ...]
Sample = tuple[str, dict[str, str], float]  # name suffix, labels, value

# RPC latencies span a cached Version (sub-millisecond) to a slow StopPodSandbox (seconds)
RPC_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
PULL_BUCKETS = (0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0)


def escape_label(value: str) -> str:
    """A label value as the exposition format wants it: backslash, quote, newline escaped."""
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def escape_help(text: str) -> str:
    """HELP text: only backslash and newline are escaped (quotes stay as they are)."""
    return text.replace("\\", "\\\\").replace("\n", "\\n")


def format_value(v: float) -> str:
    """Integers without a decimal point, infinities as +Inf/-Inf, NaN as NaN."""
    if math.isnan(v):
        return "NaN"
    if math.isinf(v):
        return "+Inf" if v > 0 else "-Inf"
    if v == int(v) and abs(v) < 1e15:
        return str(int(v))
    return repr(v)


def _label_text(labels: dict[str, str]) -> str:
    if not labels:
        return ""
    return "{" + ",".join(f'{k}="{escape_label(v)}"' for k, v in labels.items()) + "}"


@dataclass
class Metric:
    """One metric family. Subclasses give `kind` and their samples."""

    name: str
    help: str
    label_names: Labels = ()
    kind = "untyped"

    def _labels(self, values: Labels) -> dict[str, str]:
        if len(values) != len(self.label_names):
            raise ValueError(f"{self.name} takes labels {self.label_names}, got {values}")
        return dict(zip(self.label_names, values, strict=True))

    def samples(self) -> Iterator[Sample]:
        return iter(())

    def render(self) -> str:
        lines = [f"# HELP {self.name} {escape_help(self.help)}", f"# TYPE {self.name} {self.kind}"]
        for suffix, labels, value in self.samples():
            lines.append(f"{self.name}{suffix}{_label_text(labels)} {format_value(value)}")
        return "\n".join(lines) + "\n"


@dataclass
class Counter(Metric):
    """A monotonically increasing count per label set."""

    values: dict[Labels, float] = field(default_factory=dict)
    kind = "counter"

    def inc(self, *labels: str, amount: float = 1.0) -> None:
        if amount < 0:
            raise ValueError(f"{self.name}: a counter cannot decrease")
        value = self.values.get(labels)
        if value is None:  # a new label set: checked once (every RPC counts here)
            self._labels(labels)
            value = 0.0
        self.values[labels] = value + amount

    def get(self, *labels: str) -> float:
        return self.values.get(labels, 0.0)

    def samples(self) -> Iterator[Sample]:
        for key in sorted(self.values):
            yield "", self._labels(key), self.values[key]


@dataclass
class Gauge(Metric):
    """A value per label set, computed by `collect` at scrape time."""

    collect: Callable[[], dict[Labels, float]] = dict
    kind = "gauge"

    def samples(self) -> Iterator[Sample]:
        values = self.collect()
        for key in sorted(values):
            yield "", self._labels(key), values[key]


@dataclass
class _Series:
    counts: list[int]  # observations per bucket, not cumulative (the last one: above all)
    total: float = 0.0
    count: int = 0


@dataclass
class Histogram(Metric):
    """Observations counted into cumulative `le` buckets, with _sum and _count."""

    buckets: tuple[float, ...] = RPC_BUCKETS
    series: dict[Labels, _Series] = field(default_factory=dict)
    kind = "histogram"

    def observe(self, *labels: str, value: float) -> None:
        s = self.series.get(labels)
        if s is None:  # a new label set: checked once (every RPC is observed here)
            self._labels(labels)
            s = self.series[labels] = _Series([0] * (len(self.buckets) + 1))
        s.counts[bisect_left(self.buckets, value)] += 1  # the first bound >= value
        s.total += value
        s.count += 1

    def samples(self) -> Iterator[Sample]:
        for key in sorted(self.series):
            s, labels = self.series[key], self._labels(key)
            for bound, n in zip(self.buckets, accumulate(s.counts[:-1]), strict=True):
                yield "_bucket", {**labels, "le": format_value(bound)}, n
            yield "_bucket", {**labels, "le": "+Inf"}, s.count
            yield "_sum", labels, s.total
            yield "_count", labels, s.count


class Metrics:
    """Every metric podlingd exports. One instance per daemon, passed to what updates it."""

    def __init__(self) -> None:
        self.rpcs = Counter(
            "podling_rpc_requests_total",
            "CRI RPCs handled, by method and gRPC code",
            ("method", "code"),
        )
        self.rpc_seconds = Histogram(
            "podling_rpc_duration_seconds", "CRI RPC latency in seconds, by method", ("method",)
        )
        self.pulls = Counter(
            "podling_image_pulls_total", "image pulls finished, by result", ("result",)
        )
        self.pull_bytes = Counter(
            "podling_image_pull_bytes_total", "compressed layer bytes downloaded by pulls"
        )
        self.pull_seconds = Histogram(
            "podling_image_pull_duration_seconds",
            "seconds image pulls took, by result",
            ("result",),
            buckets=PULL_BUCKETS,
        )
        self.ooms = Counter("podling_container_oom_events_total", "containers OOM-killed")
        self.runtime_failures = Counter(
            "podling_runtime_failures_total",
            "failed conmon/OCI runtime operations, by operation",
            ("operation",),
        )
        self._store: PodStore | None = None
        self.pods = Gauge("podling_pods", "pod sandboxes by state", ("state",), self._pod_states)
        self.containers = Gauge(
            "podling_containers", "containers by state", ("state",), self._container_states
        )

    def watch_store(self, store: PodStore) -> None:
        """The PodStore the pod and container gauges are computed from at scrape time."""
        self._store = store

    def rpc(self, method: str, code: str, seconds: float) -> None:
        """One RPC finished with gRPC status `code` (OK, NOT_FOUND, ...)."""
        self.rpcs.inc(method, code)
        self.rpc_seconds.observe(method, value=seconds)

    def pull(self, ok: bool, downloaded: int, seconds: float) -> None:
        """One pull finished; `downloaded` is the bytes of the layers it had to fetch."""
        result = "success" if ok else "failure"
        self.pulls.inc(result)
        self.pull_bytes.inc(amount=downloaded)
        self.pull_seconds.observe(result, value=seconds)

    def _pod_states(self) -> dict[Labels, float]:
        out: dict[Labels, float] = {(s,): 0.0 for s in (POD_CREATING, POD_READY, POD_NOTREADY)}
        for pod in self._store.pods() if self._store else []:
            out[(pod.state,)] = out.get((pod.state,), 0.0) + 1
        return out

    def _container_states(self) -> dict[Labels, float]:
        states = (CT_CREATING, CT_CREATED, CT_RUNNING, CT_EXITED)
        out: dict[Labels, float] = {(s,): 0.0 for s in states}
        for ct in self._store.containers() if self._store else []:
            out[(ct.state,)] = out.get((ct.state,), 0.0) + 1
        return out

    def families(self) -> list[Metric]:
        return [
            self.rpcs,
            self.rpc_seconds,
            self.pulls,
            self.pull_bytes,
            self.pull_seconds,
            self.ooms,
            self.runtime_failures,
            self.pods,
            self.containers,
        ]

    def render(self) -> str:
        """The whole exposition text, as served at /metrics."""
        return "".join(m.render() for m in self.families())
