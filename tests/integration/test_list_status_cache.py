"""ListContainers / ContainerStatus / ListPodSandbox / PodSandboxStatus served from the
per-record reply caches (api/reply_cache.py) on a real podlingd: every list and status
call in these tests runs with the caches warm from the previous one, so a stale entry
would show up as an old state, exit code or a removed record still listed."""

from __future__ import annotations

import grpc
import pytest
from cri_api.v1 import api_pb2 as pb

from tests.integration.pod_fixtures import PodEnv
from tests.support.pods import (
    container_config,
    pod_config,
    rpc_code,
    run_pod,
    status,
    wait_state,
)

pytestmark = pytest.mark.root
BRIDGE, SUBNET = "podl-hlist", "10.231.0.0/24"
C = pb.ContainerState
CREATED, RUNNING, EXITED = C.CONTAINER_CREATED, C.CONTAINER_RUNNING, C.CONTAINER_EXITED


def listed(e: PodEnv, **flt: object) -> dict[str, int]:
    """ListContainers (filtered if `flt`): container id → state."""
    req = pb.ListContainersRequest(filter=pb.ContainerFilter(**flt)) if flt else None  # type: ignore[arg-type]
    resp = e.daemon.runtime.ListContainers(req or pb.ListContainersRequest())
    return {c.id: c.state for c in resp.containers}


def pods_listed(e: PodEnv, **flt: object) -> dict[str, int]:
    req = pb.ListPodSandboxRequest(filter=pb.PodSandboxFilter(**flt)) if flt else None  # type: ignore[arg-type]
    return {
        p.id: p.state
        for p in e.daemon.runtime.ListPodSandbox(req or pb.ListPodSandboxRequest()).items
    }


def create(e: PodEnv, pod_id: str, pcfg: pb.PodSandboxConfig, cfg: pb.ContainerConfig) -> str:
    req = pb.CreateContainerRequest(pod_sandbox_id=pod_id, config=cfg, sandbox_config=pcfg)
    return str(e.daemon.runtime.CreateContainer(req).container_id)


def test_container_list_and_status_follow_created_running_exited(clean: PodEnv) -> None:
    d = clean.daemon
    pcfg = pod_config(log_dir=clean.logs)
    pod_id = run_pod(d, pcfg)
    cfg = container_config("job", "sh", "-c", "sleep 1.5; exit 7", labels={"k": "job"})
    cid = create(clean, pod_id, pcfg, cfg)
    other = create(clean, pod_id, pcfg, container_config("idle", "sleep", "1000"))
    assert listed(clean) == {cid: CREATED, other: CREATED}
    assert status(d, cid).status.state == CREATED

    d.runtime.StartContainer(pb.StartContainerRequest(container_id=cid))
    assert listed(clean)[cid] == RUNNING
    st = status(d, cid).status
    assert st.state == RUNNING and st.started_at > 0 and st.finished_at == 0

    st = wait_state(d, cid, EXITED)
    assert (st.state, st.exit_code, st.reason) == (EXITED, 7, "Error")
    assert st.finished_at >= st.started_at > 0
    assert listed(clean) == {cid: EXITED, other: CREATED}

    # filters with the cache warm
    assert listed(clean, id=cid[:12]) == {cid: EXITED}
    assert listed(clean, state=pb.ContainerStateValue(state=CREATED)) == {other: CREATED}
    assert listed(clean, label_selector={"k": "job"}) == {cid: EXITED}
    assert listed(clean, pod_sandbox_id=pod_id[:12]) == {cid: EXITED, other: CREATED}

    d.runtime.RemoveContainer(pb.RemoveContainerRequest(container_id=cid))
    assert listed(clean) == {other: CREATED}
    assert rpc_code(lambda: status(d, cid)) == grpc.StatusCode.NOT_FOUND


def test_pod_list_and_status_follow_stop_and_remove(clean: PodEnv) -> None:
    d = clean.daemon
    a = run_pod(d, pod_config(log_dir=clean.logs, labels={"app": "a"}))
    b = run_pod(d, pod_config(log_dir=clean.logs, labels={"app": "b"}))
    ready, notready = pb.PodSandboxState.SANDBOX_READY, pb.PodSandboxState.SANDBOX_NOTREADY

    def pod_st(pod_id: str) -> pb.PodSandboxStatus:
        return d.runtime.PodSandboxStatus(pb.PodSandboxStatusRequest(pod_sandbox_id=pod_id)).status

    assert pods_listed(clean) == {a: ready, b: ready}
    assert pod_st(a).state == ready and pod_st(a).network.ip.startswith("10.231.0.")

    d.runtime.StopPodSandbox(pb.StopPodSandboxRequest(pod_sandbox_id=a))
    assert pod_st(a).state == notready
    assert pods_listed(clean) == {a: notready, b: ready}
    assert pods_listed(clean, label_selector={"app": "b"}) == {b: ready}
    notready_only = pb.PodSandboxStateValue(state=notready)
    assert pods_listed(clean, state=notready_only) == {a: notready}

    d.runtime.RemovePodSandbox(pb.RemovePodSandboxRequest(pod_sandbox_id=a))
    assert pods_listed(clean) == {b: ready}
    code = rpc_code(lambda: pod_st(a))
    assert code == grpc.StatusCode.NOT_FOUND
