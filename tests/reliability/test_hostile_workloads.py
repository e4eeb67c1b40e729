"""Hostile workloads: a fork bomb, a log flood, a container that ignores SIGTERM. Limits
hold, the node keeps serving, the log can be rotated the kubelet's way (rename, then
ReopenContainerLog), and StopContainer completes within its timeout plus a margin.

podling sets no pids limit of its own: the CRI has none per container, and the kubelet
puts the pod's on the pod cgroup it creates and passes as `linux.cgroup_parent`. The fork
bomb test does what the kubelet does: it makes the pod cgroup with `pids.max` first.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from cri_api.v1 import api_pb2 as pb

from podling.oslib import cgroups
from tests.integration.pod_fixtures import PodEnv
from tests.reliability.conftest import LONG
from tests.support.daemon import Daemon
from tests.support.pods import (
    container_config,
    pod_config,
    remove_all,
    run_pod,
    start_container,
    wait_state,
)

pytestmark = pytest.mark.root

BRIDGE, SUBNET = "plfault2", "10.93.23.0/24"
PIDS_MAX = 64
PIDS = Path("/sys/fs/cgroup/pids")
FLOOD = "while :; do echo plfault-flood; done"  # echo is a shell builtin: no forks


def own_pid_pod(env: PodEnv, **kw: object) -> pb.PodSandboxConfig:
    cfg = pod_config(log_dir=env.logs / uuid.uuid4().hex[:8], **kw)
    cfg.linux.security_context.namespace_options.pid = pb.NamespaceMode.CONTAINER
    return cfg


def stop(d: Daemon, cid: str, timeout: int) -> float:
    """StopContainer; returns how long it took."""
    start = time.monotonic()
    d.runtime.StopContainer(pb.StopContainerRequest(container_id=cid, timeout=timeout))
    return time.monotonic() - start


def exited(d: Daemon, cid: str) -> pb.ContainerStatus:
    st = wait_state(d, cid, pb.CONTAINER_EXITED, timeout=5)
    assert st.state == pb.CONTAINER_EXITED
    return st


@pytest.fixture
def kubelet_pod_cgroup(clean: PodEnv) -> Iterator[str]:
    """A pod cgroup made the kubelet's way, with a pids limit; removed afterwards."""
    path = f"/{clean.cgroup_parent}/plfault-pod-{uuid.uuid4().hex[:8]}"
    cgroups.create(path)
    (PIDS / path.lstrip("/") / "pids.max").write_text(str(PIDS_MAX))
    try:
        yield path
    finally:
        remove_all(clean.daemon)  # the pod's containers hold the cgroup until they go
        cgroups.remove(path)


def test_fork_bomb_is_held_by_the_pod_pids_limit(clean: PodEnv, kubelet_pod_cgroup: str) -> None:
    d = clean.daemon
    assert (PIDS / kubelet_pod_cgroup.lstrip("/") / "pids.max").read_text().strip() == str(PIDS_MAX)
    cfg = own_pid_pod(clean)
    cfg.linux.cgroup_parent = kubelet_pod_cgroup
    pod_id = run_pod(d, cfg)
    bomb = "f() { f | f & }; f; exec sleep 1000"  # the classic, in busybox sh
    cid = start_container(d, pod_id, cfg, container_config("bomb", "sh", "-c", bomb))
    pod_cg = PIDS / kubelet_pod_cgroup.lstrip("/")
    peak = 0
    watch_until = time.monotonic() + (60 if LONG else 5)
    while time.monotonic() < watch_until:
        current = int((pod_cg / "pids.current").read_text())
        assert current <= PIDS_MAX, "the pids limit did not hold"
        peak = max(peak, current)
        time.sleep(0.05)
    refused = _refused_forks(pod_cg)
    # busybox sh dies on a refused fork, so the bomb burns out; what matters is that it
    # ran into the limit (refused forks, a peak at the limit) and never past it
    assert refused > 0 and peak >= PIDS_MAX - 4, f"{refused} forks refused, peak {peak} pids"
    # the node still serves, and the bomb's container can be stopped
    assert d.runtime.Version(pb.VersionRequest()).runtime_name == "podling"
    took = stop(d, cid, 2)
    assert took < 2 + 5, took
    assert exited(d, cid).exit_code == 137
    assert int((PIDS / kubelet_pod_cgroup.lstrip("/") / "pids.current").read_text()) == 0
    d.runtime.StopPodSandbox(pb.StopPodSandboxRequest(pod_sandbox_id=pod_id))
    d.runtime.RemovePodSandbox(pb.RemovePodSandboxRequest(pod_sandbox_id=pod_id))


def _refused_forks(cgroup: Path) -> int:
    """Forks refused for the pids limit, counted in the cgroup and its children (where
    the kernel counts them varies across versions)."""
    total = 0
    for events in cgroup.rglob("pids.events"):
        for line in events.read_text().splitlines():
            key, _, value = line.partition(" ")
            total += int(value) if key == "max" else 0
    return total


def _size(path: Path) -> int:
    return path.stat().st_size if path.exists() else 0


def _wait_size(path: Path, at_least: int, timeout: float = 10) -> int:
    deadline = time.monotonic() + timeout
    while (size := _size(path)) < at_least and time.monotonic() < deadline:
        time.sleep(0.05)
    return size


def test_log_flood_rotated_by_reopen(clean: PodEnv) -> None:
    d = clean.daemon
    cfg = own_pid_pod(clean)
    pod_id = run_pod(d, cfg)
    cid = start_container(d, pod_id, cfg, container_config("flood", "sh", "-c", FLOOD))
    log = Path(
        d.runtime.ContainerStatus(pb.ContainerStatusRequest(container_id=cid)).status.log_path
    )
    assert _wait_size(log, 1 << 20) >= 1 << 20, "the flood did not reach the log"
    rotated = log.with_name(log.name + ".1")
    log.rename(rotated)
    d.runtime.ReopenContainerLog(pb.ReopenContainerLogRequest(container_id=cid))
    assert _wait_size(log, 64 << 10) >= 64 << 10, "the reopened log gets no lines"
    first = _size(rotated)
    time.sleep(0.5)
    assert _size(rotated) == first, "the rotated file still grows after the reopen"
    line = log.read_bytes().split(b"\n", 2)[1]  # a whole line, after any split one
    assert line.endswith(b" stdout F plfault-flood") or b" stdout P " in line, line
    took = stop(d, cid, 1)
    assert took < 1 + 5, took
    grown = _size(log)
    time.sleep(0.3)
    assert _size(log) == grown, "the log grows after the container stopped"


def test_sigterm_ignored_stop_completes_within_timeout(clean: PodEnv) -> None:
    d = clean.daemon
    cfg = pod_config(log_dir=clean.logs / uuid.uuid4().hex[:8])  # shared PID namespace:
    pod_id = run_pod(d, cfg)  # the shell is not PID 1, so only its trap ignores TERM
    stubborn = container_config("stubborn", "sh", "-c", "trap '' TERM; echo ready; sleep 1000")
    cid = start_container(d, pod_id, cfg, stubborn)
    log = Path(
        d.runtime.ContainerStatus(pb.ContainerStatusRequest(container_id=cid)).status.log_path
    )
    _wait_size(log, 1)
    time.sleep(0.2)  # the trap is set before "ready" is written
    took = stop(d, cid, 2)
    assert 2 <= took < 2 + 3, f"StopContainer(timeout=2) took {took:.2f}s"
    st = exited(d, cid)
    assert st.exit_code == 137, st
    assert st.reason == "Error"
