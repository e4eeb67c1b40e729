"""Pod sandboxes end to end: namespaces, CNI, pod files, infra process, stop and removal."""

from __future__ import annotations

import json
import os
import subprocess
import time
import urllib.request
from pathlib import Path

import grpc
import pytest
from cri_api.v1 import api_pb2 as pb

from tests.integration.pod_fixtures import PodEnv
from tests.support.pods import (
    container_config,
    pod_config,
    rpc_code,
    run_pod,
    start_container,
    wait_state,
)
from tests.support.registry import free_port

pytestmark = pytest.mark.root
BRIDGE, SUBNET = "plpods0", "10.93.0.0/24"


def pod_status(e: PodEnv, pod_id: str, verbose: bool = False) -> pb.PodSandboxStatusResponse:
    return e.daemon.runtime.PodSandboxStatus(
        pb.PodSandboxStatusRequest(pod_sandbox_id=pod_id, verbose=verbose)
    )


def exec_out(e: PodEnv, cid: str, *cmd: str) -> str:
    r = e.daemon.runtime.ExecSync(pb.ExecSyncRequest(container_id=cid, cmd=list(cmd), timeout=10))
    assert r.exit_code == 0, r.stderr
    return r.stdout.decode()


def test_pod_lifecycle_status_and_list(clean: PodEnv) -> None:
    d = clean.daemon
    cfg = pod_config(labels={"app": "web", "tier": "a"}, annotations={"note": "x"})
    pod_id = run_pod(d, cfg)
    st = pod_status(clean, pod_id, verbose=True)
    assert st.status.state == pb.PodSandboxState.SANDBOX_READY
    assert st.status.network.ip.startswith("10.93.0.")
    assert st.status.metadata.name == cfg.metadata.name
    assert dict(st.status.labels) == {"app": "web", "tier": "a"}
    assert dict(st.status.annotations) == {"note": "x"}
    assert st.status.runtime_handler == "runc"
    assert abs(st.status.created_at - time.time_ns()) < 60e9
    info = json.loads(st.info["info"])
    assert set(info["namespaces"]) == {"network", "ipc", "uts"}
    assert all(Path(p).exists() for p in info["namespaces"].values())
    assert info["cniResult"]["ips"]
    listed = d.runtime.ListPodSandbox(pb.ListPodSandboxRequest()).items
    assert [p.id for p in listed] == [pod_id]

    def by(f: pb.PodSandboxFilter) -> list[str]:
        return [p.id for p in d.runtime.ListPodSandbox(pb.ListPodSandboxRequest(filter=f)).items]

    assert by(pb.PodSandboxFilter(id=pod_id[:12])) == [pod_id]
    assert by(pb.PodSandboxFilter(label_selector={"app": "web"})) == [pod_id]
    assert by(pb.PodSandboxFilter(label_selector={"app": "db"})) == []
    ready = pb.PodSandboxStateValue(state=pb.PodSandboxState.SANDBOX_READY)
    assert by(pb.PodSandboxFilter(state=ready)) == [pod_id]
    d.runtime.StopPodSandbox(pb.StopPodSandboxRequest(pod_sandbox_id=pod_id))
    stopped = pod_status(clean, pod_id)
    assert stopped.status.state == pb.PodSandboxState.SANDBOX_NOTREADY
    assert by(pb.PodSandboxFilter(state=ready)) == []
    d.runtime.StopPodSandbox(pb.StopPodSandboxRequest(pod_sandbox_id=pod_id))  # idempotent
    d.runtime.RemovePodSandbox(pb.RemovePodSandboxRequest(pod_sandbox_id=pod_id))
    d.runtime.RemovePodSandbox(pb.RemovePodSandboxRequest(pod_sandbox_id=pod_id))  # idempotent
    assert rpc_code(lambda: pod_status(clean, pod_id)) == grpc.StatusCode.NOT_FOUND
    assert not any(Path(p).exists() for p in info["namespaces"].values())


def test_web_server_on_pod_ip_and_host_port(clean: PodEnv) -> None:
    d = clean.daemon
    host_port = free_port()
    cfg = pod_config(
        log_dir=clean.logs,
        port_mappings=[
            pb.PortMapping(container_port=8080, host_port=host_port, host_ip="127.0.0.1")
        ],
    )
    pod_id = run_pod(d, cfg)
    ip = pod_status(clean, pod_id).status.network.ip
    script = "mkdir /www && echo hello-from-pod > /www/index.html && httpd -f -p 8080 -h /www"
    cid = start_container(d, pod_id, cfg, container_config("web", "sh", "-c", script))
    assert (
        wait_state(d, cid, pb.ContainerState.CONTAINER_RUNNING).state
        == pb.ContainerState.CONTAINER_RUNNING
    )
    assert _get(f"http://{ip}:8080/") == "hello-from-pod\n"
    assert _get(f"http://127.0.0.1:{host_port}/") == "hello-from-pod\n"
    d.runtime.StopPodSandbox(pb.StopPodSandboxRequest(pod_sandbox_id=pod_id))
    # the last host port is gone: so are portmap's shared chains
    nat = subprocess.run(["iptables-save", "-t", "nat"], capture_output=True, text=True).stdout
    assert "CNI-HOSTPORT" not in nat and str(host_port) not in nat


def _get(url: str, tries: int = 50) -> str:
    for _ in range(tries):
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                return str(r.read().decode())
        except OSError:
            time.sleep(0.1)
    raise AssertionError(f"{url} never answered")


def test_dns_hostname_and_hosts_files(clean: PodEnv) -> None:
    d = clean.daemon
    dns = pb.DNSConfig(
        servers=["10.96.0.10"],
        searches=["ns.svc.cluster.local", "cluster.local"],
        options=["ndots:5"],
    )
    cfg = pod_config(name="dnspod")
    cfg.dns_config.CopyFrom(dns)
    cfg.hostname = "my-host"
    pod_id = run_pod(d, cfg)
    ip = pod_status(clean, pod_id).status.network.ip
    cid = start_container(d, pod_id, cfg, container_config("c", "sleep", "1000"))
    resolv = exec_out(clean, cid, "cat", "/etc/resolv.conf")
    assert "nameserver 10.96.0.10" in resolv
    assert "search ns.svc.cluster.local cluster.local" in resolv
    assert "options ndots:5" in resolv
    assert exec_out(clean, cid, "hostname").strip() == "my-host"
    assert exec_out(clean, cid, "cat", "/etc/hostname").strip() == "my-host"
    hosts = exec_out(clean, cid, "cat", "/etc/hosts")
    assert f"{ip}\tmy-host" in hosts or f"{ip} my-host" in hosts
    assert "localhost" in hosts


def test_namespaced_sysctls(clean: PodEnv) -> None:
    d = clean.daemon
    cfg = pod_config()
    cfg.linux.sysctls["net.ipv4.ip_unprivileged_port_start"] = "80"
    cfg.linux.sysctls["kernel.shmmni"] = "1234"
    pod_id = run_pod(d, cfg)
    cid = start_container(d, pod_id, cfg, container_config("c", "sleep", "1000"))
    assert (
        exec_out(clean, cid, "cat", "/proc/sys/net/ipv4/ip_unprivileged_port_start").strip() == "80"
    )
    assert exec_out(clean, cid, "cat", "/proc/sys/kernel/shmmni").strip() == "1234"
    bad = pod_config()
    bad.linux.sysctls["vm.swappiness"] = "10"
    assert rpc_code(lambda: run_pod(d, bad)) == grpc.StatusCode.INVALID_ARGUMENT


def test_shared_pid_namespace_uses_an_infra_process(clean: PodEnv) -> None:
    d = clean.daemon
    cfg = pod_config()
    cfg.linux.security_context.namespace_options.pid = pb.NamespaceMode.POD
    pod_id = run_pod(d, cfg)
    info = json.loads(pod_status(clean, pod_id, verbose=True).info["info"])
    assert info["pid"] > 0
    assert Path(f"/proc/{info['pid']}/comm").read_text().strip() == "catatonit"
    shared = container_config("a", "sleep", "1001")
    shared.linux.security_context.namespace_options.pid = pb.NamespaceMode.POD
    a = start_container(d, pod_id, cfg, shared)
    procs = exec_out(clean, a, "ps")
    assert "catatonit" in procs and "sleep 1001" in procs
    alone = container_config("b", "sleep", "1002")
    alone.linux.security_context.namespace_options.pid = pb.NamespaceMode.CONTAINER
    b = start_container(d, pod_id, cfg, alone)
    procs_b = exec_out(clean, b, "ps")
    assert "sleep 1002" in procs_b and "catatonit" not in procs_b and "1001" not in procs_b
    d.runtime.StopPodSandbox(pb.StopPodSandboxRequest(pod_sandbox_id=pod_id))
    assert not Path(f"/proc/{info['pid']}").exists()


def test_pod_without_shared_pid_has_no_infra_process(clean: PodEnv) -> None:
    cfg = pod_config()
    # the kubelet sends CONTAINER unless the pod sets shareProcessNamespace (POD is 0,
    # the proto default, so a bare config shares the PID namespace)
    cfg.linux.security_context.namespace_options.pid = pb.NamespaceMode.CONTAINER
    pod_id = run_pod(clean.daemon, cfg)
    info = json.loads(pod_status(clean, pod_id, verbose=True).info["info"])
    assert info["pid"] == 0 and info["infraContainerId"] == ""


def test_host_network_pod(clean: PodEnv) -> None:
    d = clean.daemon
    cfg = pod_config()
    cfg.linux.security_context.namespace_options.network = pb.NamespaceMode.NODE
    pod_id = run_pod(d, cfg)
    st = pod_status(clean, pod_id, verbose=True)
    info = json.loads(st.info["info"])
    assert "network" not in info["namespaces"] and info["cniResult"] == {}
    cid = start_container(d, pod_id, cfg, container_config("c", "sleep", "1000"))
    assert exec_out(clean, cid, "hostname").strip() == os.uname().nodename


def test_failed_run_rolls_back_everything(clean: PodEnv) -> None:
    d = clean.daemon
    cfg = pod_config()
    assert (
        rpc_code(
            lambda: d.runtime.RunPodSandbox(
                pb.RunPodSandboxRequest(config=cfg, runtime_handler="kata")
            )
        )
        == grpc.StatusCode.NOT_FOUND
    )
    # a network config naming a plugin that is not installed sorts first in the conf dir:
    # CNI ADD fails after the namespaces and the cgroup were made, and both are undone
    broken = clean.base / "cni" / "00-broken.conflist"
    broken.write_text(
        json.dumps(
            {"cniVersion": "1.0.0", "name": "broken", "plugins": [{"type": "no-such-plugin"}]}
        )
    )
    pods_dir = clean.daemon.state / "pods"
    before = set(pods_dir.iterdir())
    try:
        with pytest.raises(grpc.RpcError) as e:
            run_pod(d, pod_config())
    finally:
        broken.unlink()
    assert e.value.code() == grpc.StatusCode.UNAVAILABLE
    assert "CNI ADD failed" in (e.value.details() or "")
    assert "no-such-plugin" in (e.value.details() or "")
    assert set(pods_dir.iterdir()) == before
    assert d.runtime.ListPodSandbox(pb.ListPodSandboxRequest()).items == []
    # and a kernel-refused sysctl value fails at the first step
    bad = pod_config()
    bad.linux.sysctls["net.ipv4.ip_unprivileged_port_start"] = "not-a-number"
    assert rpc_code(lambda: run_pod(d, bad)) == grpc.StatusCode.INVALID_ARGUMENT


def test_cgroup_parent_must_stay_in_the_cgroup_tree(clean: PodEnv) -> None:
    for parent in ("relative/path", "/kubepods/../../../etc"):
        cfg = pod_config()
        cfg.linux.cgroup_parent = parent
        assert rpc_code(lambda c=cfg: run_pod(clean.daemon, c)) == grpc.StatusCode.INVALID_ARGUMENT


@pytest.mark.parametrize(
    ("mutate", "code"),
    [
        (lambda c: c.metadata.ClearField("name"), grpc.StatusCode.INVALID_ARGUMENT),
        (lambda c: c.metadata.ClearField("uid"), grpc.StatusCode.INVALID_ARGUMENT),
        (lambda c: c.metadata.ClearField("namespace"), grpc.StatusCode.INVALID_ARGUMENT),
        (lambda c: setattr(c, "hostname", "Bad_Host"), grpc.StatusCode.INVALID_ARGUMENT),
        (lambda c: c.port_mappings.add(container_port=70000), grpc.StatusCode.INVALID_ARGUMENT),
        (lambda c: c.dns_config.servers.append("not-an-ip"), grpc.StatusCode.INVALID_ARGUMENT),
    ],
)
def test_bad_pod_configs(clean: PodEnv, mutate: object, code: grpc.StatusCode) -> None:
    cfg = pod_config()
    mutate(cfg)  # type: ignore[operator]
    assert rpc_code(lambda: run_pod(clean.daemon, cfg)) == code
    assert clean.daemon.runtime.ListPodSandbox(pb.ListPodSandboxRequest()).items == []


def test_duplicate_pod_name_is_already_exists(clean: PodEnv) -> None:
    cfg = pod_config()
    run_pod(clean.daemon, cfg)
    assert rpc_code(lambda: run_pod(clean.daemon, cfg)) == grpc.StatusCode.ALREADY_EXISTS


def test_empty_and_unknown_pod_ids(clean: PodEnv) -> None:
    rt = clean.daemon.runtime
    assert (
        rpc_code(lambda: rt.PodSandboxStatus(pb.PodSandboxStatusRequest()))
        == grpc.StatusCode.INVALID_ARGUMENT
    )
    assert (
        rpc_code(lambda: rt.StopPodSandbox(pb.StopPodSandboxRequest()))
        == grpc.StatusCode.INVALID_ARGUMENT
    )
    unknown = "f" * 64
    assert (
        rpc_code(lambda: rt.PodSandboxStatus(pb.PodSandboxStatusRequest(pod_sandbox_id=unknown)))
        == grpc.StatusCode.NOT_FOUND
    )
    rt.StopPodSandbox(pb.StopPodSandboxRequest(pod_sandbox_id=unknown))
    rt.RemovePodSandbox(pb.RemovePodSandboxRequest(pod_sandbox_id=unknown))


def test_pod_stats_and_events(clean: PodEnv) -> None:
    d = clean.daemon
    cfg = pod_config()
    pod_id = run_pod(d, cfg)
    cid = start_container(
        d,
        pod_id,
        cfg,
        container_config("c", "sh", "-c", "head -c 5000000 /dev/zero > /tmp/x; sleep 1000"),
    )
    time.sleep(0.5)
    stats = d.runtime.PodSandboxStats(pb.PodSandboxStatsRequest(pod_sandbox_id=pod_id)).stats
    assert stats.attributes.id == pod_id
    assert stats.linux.memory.working_set_bytes.value > 0
    assert [c.attributes.id for c in stats.linux.containers] == [cid]
    assert stats.linux.network.default_interface.name == "eth0"
    assert stats.linux.process.process_count.value >= 1
    listed = d.runtime.ListPodSandboxStats(pb.ListPodSandboxStatsRequest()).stats
    assert [s.attributes.id for s in listed] == [pod_id]
