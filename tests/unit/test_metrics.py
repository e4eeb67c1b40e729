"""The metrics registry and its Prometheus text exposition, and the tiny /metrics server."""

from __future__ import annotations

import asyncio
import math
from pathlib import Path

import pytest
from cri_api.v1 import api_pb2 as pb

from podling.api.metrics_api import CONTAINER_LABELS, container_metrics, descriptors
from podling.errors import InvalidArgument
from podling.metrics import (
    Counter,
    Gauge,
    Histogram,
    Metrics,
    escape_help,
    escape_label,
    format_value,
)
from podling.metrics_http import MetricsServer, parse_address
from podling.store.metadata import open_store
from podling.store.pods import PodRecord, PodStore


def test_counter_renders_help_type_and_sorted_labelled_samples() -> None:
    c = Counter("x_total", "things done", ("method", "code"))
    c.inc("B", "OK")
    c.inc("A", "OK", amount=2)
    c.inc("A", "OK")
    assert c.render() == (
        "# HELP x_total things done\n"
        "# TYPE x_total counter\n"
        'x_total{method="A",code="OK"} 3\n'
        'x_total{method="B",code="OK"} 1\n'
    )


def test_counter_rejects_decrease_and_wrong_label_count() -> None:
    c = Counter("x_total", "h", ("a",))
    with pytest.raises(ValueError):
        c.inc("v", amount=-1)
    with pytest.raises(ValueError):
        c.inc()
    assert c.get("v") == 0


def test_unlabelled_counter_has_no_braces() -> None:
    c = Counter("y_total", "h")
    c.inc(amount=1.5)
    assert c.render().splitlines()[-1] == "y_total 1.5"


def test_label_values_and_help_are_escaped() -> None:
    assert escape_label('a\\b"c\nd') == 'a\\\\b\\"c\\nd'
    assert escape_help('say "hi"\\\n') == 'say "hi"\\\\\\n'
    c = Counter("z_total", "line1\nline2", ("v",))
    c.inc('q"x\n')
    text = c.render()
    assert "# HELP z_total line1\\nline2\n" in text
    assert 'z_total{v="q\\"x\\n"} 1\n' in text


def test_format_value() -> None:
    assert format_value(3.0) == "3"
    assert format_value(0.25) == "0.25"
    assert format_value(math.inf) == "+Inf"
    assert format_value(-math.inf) == "-Inf"
    assert format_value(math.nan) == "NaN"


def test_histogram_buckets_are_cumulative_with_sum_and_count() -> None:
    h = Histogram("lat_seconds", "latency", ("m",), buckets=(0.1, 1.0))
    for v in (0.05, 0.5, 0.5, 7.0):
        h.observe("V", value=v)
    lines = h.render().splitlines()
    assert lines[1] == "# TYPE lat_seconds histogram"
    assert lines[2:] == [
        'lat_seconds_bucket{m="V",le="0.1"} 1',
        'lat_seconds_bucket{m="V",le="1"} 3',
        'lat_seconds_bucket{m="V",le="+Inf"} 4',
        'lat_seconds_sum{m="V"} 8.05',
        'lat_seconds_count{m="V"} 4',
    ]


def test_histogram_bounds_are_inclusive_and_labels_checked() -> None:
    h = Histogram("lat_seconds", "latency", ("m",), buckets=(0.1, 1.0))
    for v in (0.1, 1.0, 1.0000001):
        h.observe("V", value=v)
    assert 'lat_seconds_bucket{m="V",le="0.1"} 1' in h.render()
    assert 'lat_seconds_bucket{m="V",le="1"} 2' in h.render()
    assert 'lat_seconds_bucket{m="V",le="+Inf"} 3' in h.render()
    with pytest.raises(ValueError, match="takes labels"):
        h.observe("V", "extra", value=0.5)
    with pytest.raises(ValueError, match="takes labels"):
        Counter("c", "a counter", ("m",)).inc()


def test_gauge_is_computed_at_render_time() -> None:
    value = {"n": 1.0}
    g = Gauge("g", "a gauge", ("k",), lambda: {("a",): value["n"]})
    assert g.render().endswith('g{k="a"} 1\n')
    value["n"] = 5
    assert g.render().endswith('g{k="a"} 5\n')
    assert "# TYPE g gauge" in g.render()


def test_metrics_registry_rpc_pull_and_store_gauges(tmp_path: Path) -> None:
    store = PodStore(open_store(tmp_path / "meta.db"))
    store.insert_pod(PodRecord(id="p1", reservation="r1", state="ready", created_ns=1, config=b""))
    m = Metrics()
    m.watch_store(store)
    m.rpc("Version", "OK", 0.002)
    m.rpc("Version", "OK", 0.002)
    m.rpc("PodSandboxStatus", "NOT_FOUND", 0.001)
    m.pull(True, 1000, 3.0)
    m.ooms.inc()
    text = m.render()
    assert 'podling_rpc_requests_total{method="Version",code="OK"} 2\n' in text
    assert 'podling_rpc_requests_total{method="PodSandboxStatus",code="NOT_FOUND"} 1\n' in text
    assert 'podling_rpc_duration_seconds_count{method="Version"} 2\n' in text
    assert "podling_image_pull_bytes_total 1000\n" in text
    assert 'podling_image_pulls_total{result="success"} 1\n' in text
    assert "podling_container_oom_events_total 1\n" in text
    assert 'podling_pods{state="ready"} 1\n' in text
    assert 'podling_pods{state="notready"} 0\n' in text
    assert 'podling_containers{state="running"} 0\n' in text
    for family in m.families():  # every family declares itself exactly once
        assert text.count(f"# TYPE {family.name} ") == 1


def test_parse_address() -> None:
    assert parse_address("127.0.0.1:9900") == ("127.0.0.1", 9900)
    assert parse_address("[::1]:80") == ("::1", 80)
    for bad in ("9900", "host:", ":80", "h:99999", "h:x"):
        with pytest.raises(InvalidArgument):
            parse_address(bad)


async def _get(port: int, request: bytes) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(request)
    await writer.drain()
    data = await reader.read()
    writer.close()
    await writer.wait_closed()
    return data


async def test_server_serves_metrics_and_404s_elsewhere() -> None:
    server = MetricsServer("127.0.0.1:0", lambda: "a_total 1\n")
    await server.start()
    try:
        ok = await _get(server.port, b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        assert ok.startswith(b"HTTP/1.1 200 ")
        assert b"text/plain; version=0.0.4" in ok and ok.endswith(b"\r\n\r\na_total 1\n")
        missing = await _get(server.port, b"GET /other HTTP/1.1\r\nHost: x\r\n\r\n")
        assert missing.startswith(b"HTTP/1.1 404 ")
        post = await _get(server.port, b"POST /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        assert post.startswith(b"HTTP/1.1 405 ")
        garbage = await _get(server.port, b"\x00\x01 not http\r\n\r\n")
        assert not garbage.startswith(b"HTTP/1.1 200")
    finally:
        await server.stop()
    with pytest.raises(OSError):
        await asyncio.open_connection("127.0.0.1", server.port)


def test_descriptors_and_container_metrics_line_up() -> None:
    names = {d.name for d in descriptors()}
    assert {"container_cpu_usage_seconds_total", "container_memory_working_set_bytes"} <= names
    assert all(list(d.label_keys) for d in descriptors())
    stats = pb.ContainerStats(
        attributes=pb.ContainerAttributes(id="c1", metadata=pb.ContainerMetadata(name="app")),
        cpu=pb.CpuUsage(timestamp=5, usage_core_nano_seconds=pb.UInt64Value(value=3_500_000_000)),
        memory=pb.MemoryUsage(timestamp=6, working_set_bytes=pb.UInt64Value(value=4096)),
    )
    pod = pb.PodSandboxMetadata(name="web", namespace="default")
    by_name = {m.name: m for m in container_metrics(stats, "busybox:latest", pod)}
    cpu = by_name["container_cpu_usage_seconds_total"]
    assert cpu.value.value == 3 and cpu.metric_type == pb.MetricType.COUNTER
    assert dict(zip(CONTAINER_LABELS, cpu.label_values, strict=True)) == {
        "container": "app",
        "id": "c1",
        "image": "busybox:latest",
        "name": "c1",
        "namespace": "default",
        "pod": "web",
    }
    ws = by_name["container_memory_working_set_bytes"]
    assert ws.value.value == 4096 and ws.timestamp == 6 and ws.metric_type == pb.MetricType.GAUGE
