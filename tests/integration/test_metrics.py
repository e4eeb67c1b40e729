"""The Prometheus endpoint and the CRI metrics RPCs, against a real podlingd."""

from __future__ import annotations

import os
import re
import urllib.error
import urllib.request
from pathlib import Path

import grpc
import pytest
from cri_api.v1 import api_pb2 as pb

from tests.integration.conftest import push, registry_config, whiteout_image
from tests.integration.pod_fixtures import PodEnv
from tests.support.daemon import Daemon
from tests.support.pods import container_config, pod_config, run_pod, start_container, wait_state
from tests.support.registry import RegistryServer, free_port

pytestmark = pytest.mark.root

BRIDGE, SUBNET = "plmetrics0", "10.93.19.0/24"
EXITED = pb.ContainerState.CONTAINER_EXITED
RUNNING = pb.ContainerState.CONTAINER_RUNNING


def scrape(port: int, path: str = "/metrics") -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as r:
        assert r.headers["Content-Type"].startswith("text/plain; version=0.0.4")
        return str(r.read().decode())


def sample(text: str, name: str, **labels: str) -> float | None:
    """The value of the sample `name{labels}` (labels in any order), or None."""
    for line in text.splitlines():
        m = re.fullmatch(r"([a-z_]+)(?:\{(.*)\})? (\S+)", line)
        if m is None or m.group(1) != name:
            continue
        got = dict(re.findall(r'([a-z_]+)="((?:[^"\\]|\\.)*)"', m.group(2) or ""))
        if got == labels:
            return float(m.group(3))
    return None


def listening_ports(pid: int) -> set[int]:
    """TCP ports process `pid` listens on (its socket inodes matched against /proc/net/tcp*)."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    ports = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            f = line.split()
            if f[3] == "0A" and f[9] in inodes:  # 0A: LISTEN
                ports.add(int(f[1].rsplit(":", 1)[1], 16))
    return ports


def test_metrics_endpoint_counts_rpcs_and_serves_descriptors(tmp_path: Path) -> None:
    port, streaming = free_port(), free_port()
    cfg = f'[metrics]\naddress = "127.0.0.1:{port}"\n[streaming]\nport = {streaming}\n'
    with Daemon(tmp_path, cfg) as d:
        assert d.proc is not None
        assert listening_ports(d.proc.pid) == {port, streaming}
        d.runtime.Version(pb.VersionRequest())
        d.runtime.Version(pb.VersionRequest())
        with pytest.raises(grpc.RpcError):
            d.runtime.PodSandboxStatus(pb.PodSandboxStatusRequest(pod_sandbox_id="nope"))
        descs = d.runtime.ListMetricDescriptors(pb.ListMetricDescriptorsRequest()).descriptors
        by_name = {x.name: x for x in descs}
        assert "container_cpu_usage_seconds_total" in by_name
        assert "container_memory_working_set_bytes" in by_name
        assert "interface" in by_name["container_network_receive_bytes_total"].label_keys
        pods = d.runtime.ListPodSandboxMetrics(pb.ListPodSandboxMetricsRequest())
        assert list(pods.pod_metrics) == []
        text = scrape(port)
        assert sample(text, "podling_rpc_requests_total", method="Version", code="OK") == 2
        assert (
            sample(text, "podling_rpc_requests_total", method="PodSandboxStatus", code="NOT_FOUND")
            == 1
        )
        assert sample(text, "podling_rpc_duration_seconds_count", method="Version") == 2
        assert "# TYPE podling_rpc_duration_seconds histogram" in text
        assert sample(text, "podling_pods", state="ready") == 0
        assert sample(text, "podling_containers", state="running") == 0
        with pytest.raises(urllib.error.HTTPError) as e:
            scrape(port, "/")
        assert e.value.code == 404


def test_pulls_are_counted_with_their_bytes(tmp_path: Path, registry: RegistryServer) -> None:
    port = free_port()
    cfg = registry_config(registry.host, f'[metrics]\naddress = "127.0.0.1:{port}"\n')
    img = whiteout_image()
    ref = push(registry, "metrics/app", "v1", img)
    with Daemon(tmp_path, cfg) as d:
        d.images.PullImage(pb.PullImageRequest(image=pb.ImageSpec(image=ref)))
        d.images.PullImage(pb.PullImageRequest(image=pb.ImageSpec(image=ref)))  # nothing new
        with pytest.raises(grpc.RpcError):
            d.images.PullImage(
                pb.PullImageRequest(image=pb.ImageSpec(image=f"{registry.host}/metrics/none:1"))
            )
        text = scrape(port)
    assert sample(text, "podling_image_pulls_total", result="success") == 2
    assert sample(text, "podling_image_pulls_total", result="failure") == 1
    assert sample(text, "podling_image_pull_bytes_total") == sum(b.size for b in img.layers)
    assert sample(text, "podling_image_pull_duration_seconds_count", result="success") == 2


def test_metrics_are_off_by_default(tmp_path: Path) -> None:
    streaming = free_port()
    with Daemon(tmp_path, f"[streaming]\nport = {streaming}\n") as d:
        assert d.proc is not None
        d.runtime.Version(pb.VersionRequest())
        assert listening_ports(d.proc.pid) == {streaming}  # the streaming server, nothing else
    assert "serving metrics" not in d.log.read_text()


def test_bad_metrics_address_fails_the_start(tmp_path: Path) -> None:
    d = Daemon(tmp_path, '[metrics]\naddress = "nonsense"\n')
    with pytest.raises(RuntimeError, match="metrics address"):
        d.start(timeout=20)
    d.stop()


def test_pod_gauges_oom_counter_and_pod_sandbox_metrics(tmp_path: Path) -> None:
    port = free_port()
    extra = f'[metrics]\naddress = "127.0.0.1:{port}"\n'
    with PodEnv(tmp_path, BRIDGE, SUBNET, extra) as env:
        d = env.daemon
        pcfg = pod_config(log_dir=env.logs)
        pod_id = run_pod(d, pcfg)
        sleeper = start_container(d, pod_id, pcfg, container_config("sleeper", "sleep", "100"))
        assert wait_state(d, sleeper, RUNNING).state == RUNNING
        hog = container_config(
            "hog", "sh", "-c", "x=$(head -c 200000000 /dev/zero | tr '\\0' a); sleep 100"
        )
        hog.linux.resources.memory_limit_in_bytes = 32 << 20
        hog_id = start_container(d, pod_id, pcfg, hog)
        assert wait_state(d, hog_id, EXITED, timeout=60).reason == "OOMKilled"

        text = scrape(port)
        assert sample(text, "podling_pods", state="ready") == 1
        assert sample(text, "podling_containers", state="running") == 1
        assert sample(text, "podling_containers", state="exited") == 1
        assert sample(text, "podling_container_oom_events_total") == 1
        assert sample(text, "podling_rpc_requests_total", method="RunPodSandbox", code="OK") == 1

        resp = d.runtime.ListPodSandboxMetrics(pb.ListPodSandboxMetricsRequest())
        (pm,) = [p for p in resp.pod_metrics if p.pod_sandbox_id == pod_id]
        assert [c.container_id for c in pm.container_metrics] == [sleeper]
        metrics = {m.name: m for m in pm.container_metrics[0].metrics}
        ws = metrics["container_memory_working_set_bytes"]
        assert ws.value.value > 0 and ws.metric_type == pb.MetricType.GAUGE
        labels = dict(zip(("container", "id", "image"), ws.label_values, strict=False))
        assert labels["container"] == "sleeper" and labels["id"] == sleeper
        assert "container_cpu_usage_seconds_total" in metrics
        rx = [m for m in pm.metrics if m.name == "container_network_receive_bytes_total"]
        assert [m.label_values[-1] for m in rx] == ["eth0"]
