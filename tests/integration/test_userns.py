"""Pods with a user namespace of their own (hostUsers: false) on a real podlingd: the
container's root is an unprivileged host uid, the image layers are id-mapped (not
chowned), the pod's containers share one user namespace, and every refusal."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from cri_api.v1 import api_pb2 as pb

from tests.integration.pod_fixtures import PodEnv
from tests.support.pods import container_config, pod_config, rpc_code, run_pod, start_container
from tests.support.pods import status as ct_status

pytestmark = pytest.mark.root
BRIDGE, SUBNET = "pluserns0", "10.93.17.0/24"
HOST_ID = 3_211_264  # 49 * 65536: an id range nothing else on the host uses
HANDLERS = ["runc", "crun"]
POD, NODE, CONTAINER = pb.NamespaceMode.POD, pb.NamespaceMode.NODE, pb.NamespaceMode.CONTAINER


@pytest.fixture(scope="module")
def env() -> Iterator[PodEnv]:
    """The module's daemon, with its dirs under /var/tmp rather than pytest's 0700 temp
    dir: the pod's root (an unprivileged host uid) must be able to reach them."""
    base = Path(tempfile.mkdtemp(prefix="podling-userns-", dir="/var/tmp"))
    base.chmod(0o711)
    try:
        with PodEnv(base, BRIDGE, SUBNET) as e:
            yield e
    finally:
        shutil.rmtree(base, ignore_errors=True)


def mapping(host_id: int = HOST_ID, container_id: int = 0, length: int = 65536) -> pb.IDMapping:
    return pb.IDMapping(host_id=host_id, container_id=container_id, length=length)


def userns(*maps: pb.IDMapping, mode: int = POD) -> pb.UserNamespace:
    ids = list(maps) if maps else [mapping()]
    return pb.UserNamespace(mode=mode, uids=ids, gids=ids)  # type: ignore[arg-type]


def userns_pod_config(e: PodEnv, pid: int = CONTAINER, **kw: object) -> pb.PodSandboxConfig:
    cfg = pod_config(log_dir=e.logs, **kw)
    opts = cfg.linux.security_context.namespace_options
    opts.pid = pid  # type: ignore[assignment]
    opts.userns_options.CopyFrom(userns())
    return cfg


def ct_config(pod: pb.PodSandboxConfig, name: str, *cmd: str) -> pb.ContainerConfig:
    cfg = container_config(name, *(cmd or ("sleep", "1000")))
    # the kubelet copies the pod's namespace options into each container's
    cfg.linux.security_context.namespace_options.CopyFrom(
        pod.linux.security_context.namespace_options
    )
    return cfg


def sh(e: PodEnv, cid: str, script: str) -> str:
    r = e.daemon.runtime.ExecSync(
        pb.ExecSyncRequest(container_id=cid, cmd=["sh", "-c", script], timeout=10)
    )
    assert r.exit_code == 0, (script, r)
    return r.stdout.decode().strip()


def host_pid(e: PodEnv, cid: str) -> int:
    return int(json.loads(ct_status(e.daemon, cid, verbose=True).info["info"])["pid"])


def proc_ids(pid: int, field: str) -> list[int]:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return [int(x) for x in line.split()[1:]]
    raise AssertionError(f"no {field} in /proc/{pid}/status")


@pytest.mark.parametrize("handler", HANDLERS)
def test_the_containers_root_is_an_unprivileged_host_uid(clean: PodEnv, handler: str) -> None:
    cfg = userns_pod_config(clean)
    pod_id = run_pod(clean.daemon, cfg, handler)
    cid = start_container(clean.daemon, pod_id, cfg, ct_config(cfg, "main"))
    assert sh(clean, cid, "cat /proc/self/uid_map").split() == ["0", str(HOST_ID), "65536"]
    assert sh(clean, cid, "cat /proc/self/gid_map").split() == ["0", str(HOST_ID), "65536"]
    assert sh(clean, cid, "id -u; id -g").split() == ["0", "0"]
    # the process runs as the pod's host ids, not as the host's root
    pid = host_pid(clean, cid)
    assert proc_ids(pid, "Uid") == [HOST_ID] * 4
    assert proc_ids(pid, "Gid") == [HOST_ID] * 4
    # image files (owned by 0 on disk) are the container root's, through id-mapped layers
    assert sh(clean, cid, "stat -c %u:%g /bin/busybox /") == "0:0\n0:0"
    sh(clean, cid, "echo hi > /written && mkdir -p /etc/new && touch /etc/new/f")
    rootfs = Path(f"/proc/{pid}/root")
    for path in ("written", "etc/new/f"):
        st = os.stat(rootfs / path)
        assert (st.st_uid, st.st_gid) == (HOST_ID, HOST_ID), path


def test_layers_are_id_mapped_not_chowned(clean: PodEnv) -> None:
    cfg = userns_pod_config(clean)
    pod_id = run_pod(clean.daemon, cfg)
    cid = start_container(clean.daemon, pod_id, cfg, ct_config(cfg, "mapped"))
    assert sh(clean, cid, "stat -c %u /bin/busybox") == "0"
    # the same image in a pod that shares the host's user namespace: still owned by 0
    plain = pod_config(log_dir=clean.logs)
    plain.linux.security_context.namespace_options.pid = CONTAINER
    plain_id = run_pod(clean.daemon, plain)
    other = start_container(
        clean.daemon, plain_id, plain, container_config("plain", "sleep", "1000")
    )
    assert sh(clean, other, "stat -c %u /bin/busybox") == "0"
    assert proc_ids(host_pid(clean, other), "Uid")[0] == 0


def test_containers_of_a_pod_share_its_user_namespace(clean: PodEnv) -> None:
    cfg = userns_pod_config(clean, pid=POD)
    pod_id = run_pod(clean.daemon, cfg)
    first = start_container(clean.daemon, pod_id, cfg, ct_config(cfg, "one"))
    second = start_container(clean.daemon, pod_id, cfg, ct_config(cfg, "two"))
    ns_one = sh(clean, first, "readlink /proc/self/ns/user")
    assert ns_one == sh(clean, second, "readlink /proc/self/ns/user")
    assert ns_one != os.readlink("/proc/self/ns/user")
    # a shared PID namespace: the infra process (pid 1) runs in the pod's user namespace
    assert sh(clean, first, "cat /proc/1/cmdline | tr '\\0' ' '").startswith("/catatonit")
    pod = clean.daemon.runtime.PodSandboxStatus(
        pb.PodSandboxStatusRequest(pod_sandbox_id=pod_id, verbose=True)
    )
    infra_pid = json.loads(pod.info["info"])["pid"]
    assert os.readlink(f"/proc/{infra_pid}/ns/user") == ns_one


def test_pod_sysctls_and_hostname_are_set_inside(clean: PodEnv) -> None:
    cfg = userns_pod_config(clean, hostname="inside")
    cfg.linux.sysctls["net.ipv4.ip_unprivileged_port_start"] = "100"
    pod_id = run_pod(clean.daemon, cfg)
    cid = start_container(clean.daemon, pod_id, cfg, ct_config(cfg, "s"))
    assert sh(clean, cid, "cat /proc/sys/net/ipv4/ip_unprivileged_port_start") == "100"
    assert sh(clean, cid, "hostname") == "inside"


def test_status_reports_the_feature_per_handler(clean: PodEnv) -> None:
    st = clean.daemon.runtime.Status(pb.StatusRequest())
    features = {h.name: h.features.user_namespaces for h in st.runtime_handlers}
    assert features["runc"] and features["crun"]
    if "runsc" in features:
        assert not features["runsc"]


def refused(e: PodEnv, cfg: pb.PodSandboxConfig, handler: str = "") -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as err:
        run_pod(e.daemon, cfg, handler)
    assert e.daemon.runtime.ListPodSandbox(pb.ListPodSandboxRequest()).items == []
    return err.value


@pytest.mark.parametrize(
    ("maps", "says"),
    [
        ([], "needs at least one mapping"),
        ([mapping(host_id=0)], "maps host id 0"),
        ([mapping(length=0)], "length must be > 0"),
        ([mapping(container_id=1)], "container id 0"),
        ([mapping(), mapping(host_id=HOST_ID + 100, container_id=70000)], "host id ranges overlap"),
        ([mapping(host_id=2**32 - 10)], "beyond id 2^32-1"),
    ],
)
def test_bad_mappings_are_refused(clean: PodEnv, maps: list[pb.IDMapping], says: str) -> None:
    cfg = userns_pod_config(clean)
    opts = cfg.linux.security_context.namespace_options.userns_options
    del opts.uids[:]
    opts.uids.extend(maps)
    err = refused(clean, cfg)
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert says in (err.details() or "")
    assert "userns_options.uids" in (err.details() or "")


def test_a_state_dir_the_pods_root_cannot_reach_is_named(clean: PodEnv) -> None:
    state = Path(clean.daemon.state)
    mode = state.stat().st_mode
    state.chmod(0o700)
    try:
        err = refused(clean, userns_pod_config(clean))
    finally:
        state.chmod(mode)
    assert err.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert f"chmod o+x {state}" in (err.details() or "")


def test_host_namespaces_and_user_namespace_are_refused(clean: PodEnv) -> None:
    cfg = userns_pod_config(clean)
    cfg.linux.security_context.namespace_options.network = NODE
    err = refused(clean, cfg)
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "host's network namespace" in (err.details() or "")


def test_a_handler_without_the_feature_is_refused(clean: PodEnv) -> None:
    handlers = {h.name for h in clean.daemon.runtime.Status(pb.StatusRequest()).runtime_handlers}
    if "runsc" not in handlers:
        pytest.skip("runsc is not installed")
    err = refused(clean, userns_pod_config(clean), "runsc")
    assert err.code() == grpc.StatusCode.FAILED_PRECONDITION
    msg = err.details() or ""
    assert "'runsc'" in msg and "crun" in msg and "runc" in msg


def test_container_refusals(clean: PodEnv) -> None:
    cfg = userns_pod_config(clean)
    pod_id = run_pod(clean.daemon, cfg)
    rt = clean.daemon.runtime
    privileged = ct_config(cfg, "priv")
    privileged.linux.security_context.privileged = True
    req = pb.CreateContainerRequest(pod_sandbox_id=pod_id, config=privileged, sandbox_config=cfg)
    assert rpc_code(lambda: rt.CreateContainer(req)) == grpc.StatusCode.INVALID_ARGUMENT
    node = ct_config(cfg, "node")
    node.linux.security_context.namespace_options.userns_options.mode = NODE
    req = pb.CreateContainerRequest(pod_sandbox_id=pod_id, config=node, sandbox_config=cfg)
    assert rpc_code(lambda: rt.CreateContainer(req)) == grpc.StatusCode.INVALID_ARGUMENT
    other = ct_config(cfg, "other")
    other.linux.security_context.namespace_options.userns_options.uids[0].host_id += 65536
    req = pb.CreateContainerRequest(pod_sandbox_id=pod_id, config=other, sandbox_config=cfg)
    assert rpc_code(lambda: rt.CreateContainer(req)) == grpc.StatusCode.INVALID_ARGUMENT
    # a pod that shares the host's user namespace cannot host a container asking for one
    plain = pod_config(log_dir=clean.logs)
    plain_id = run_pod(clean.daemon, plain)
    asks = ct_config(cfg, "asks")
    req = pb.CreateContainerRequest(pod_sandbox_id=plain_id, config=asks, sandbox_config=plain)
    assert rpc_code(lambda: rt.CreateContainer(req)) == grpc.StatusCode.FAILED_PRECONDITION
    assert rt.ListContainers(pb.ListContainersRequest()).containers == []
