"""Read-only rootfs, no_new_privs, masked and read-only /proc paths and host namespaces
on each runtime handler, checked from inside the container."""

from __future__ import annotations

import os
import socket
import threading
from pathlib import Path

import grpc
import pytest
from cri_api.v1 import api_pb2 as pb

from tests.integration.pod_fixtures import PodEnv
from tests.integration.security_pods import (  # noqa: F401 - the fixtures
    NODE,
    Pod,
    groups_image_fixture,
    handler_fixture,
    pod_fixture,
)
from tests.support.pods import pod_config, run_pod

pytestmark = pytest.mark.root
BRIDGE, SUBNET = "plsecB0", "10.93.9.0/24"
U = pb.Int64Value


def test_readonly_rootfs(pod: Pod, tmp_path: Path) -> None:
    ro = pod.run(readonly_rootfs=True)
    for path in ("/x", "/tmp/x", "/etc/hosts"):
        r = pod.sh(ro, f"echo hi > {path}")
        assert r.exit_code != 0 and b"Read-only file system" in r.stderr, (path, r)
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    tmp = pb.Mount(container_path="/tmp", host_path=str(scratch))
    with_tmp = pod.run(readonly_rootfs=True, mounts=[tmp])
    assert pod.sh(with_tmp, "echo hi > /tmp/x").exit_code == 0
    assert (scratch / "x").read_text() == "hi\n"
    assert pod.sh(with_tmp, "touch /x").exit_code != 0
    rw = pod.run()
    assert pod.sh(rw, "echo hi > /x && cat /x").stdout == b"hi\n"


def test_no_new_privs(pod: Pod) -> None:
    app = U(value=1000)
    confined = pod.run(no_new_privs=True, run_as_user=app)
    free = pod.run(run_as_user=app)
    # the setuid-root /bin/euid exits with its effective uid (mod 256): 1000 → 232
    assert pod.sh(confined, "/bin/euid").exit_code == 1000 % 256
    if pod.gvisor:
        # gVisor's /proc has no NoNewPrivs line, and its file system (served by the
        # gofer) never honours a setuid bit: the uid stays 1000 either way
        assert pod.sh(confined, "grep -c NoNewPrivs /proc/self/status").stdout == b"0\n"
        assert pod.sh(free, "/bin/euid").exit_code == 1000 % 256
        return
    assert pod.status_field(confined, "NoNewPrivs") == "1"
    assert pod.status_field(free, "NoNewPrivs") == "0"
    assert pod.sh(free, "/bin/euid").exit_code == 0


# /proc/sys/net/* is the pod's own network namespace: writing a value back is harmless
WRITE_TTL = (
    "v=$(cat /proc/sys/net/ipv4/ip_default_ttl) && echo $v > /proc/sys/net/ipv4/ip_default_ttl"
)


def _mountpoint(pod: Pod, cid: str, path: str) -> bool:
    return pod.sh(cid, f"grep -q ' {path} ' /proc/self/mountinfo").exit_code == 0


def test_masked_and_readonly_paths(pod: Pod) -> None:
    if pod.gvisor:
        return _gvisor_proc(pod)
    default = pod.run()
    assert pod.out(default, "cat /proc/timer_list | wc -c") == "0"
    assert pod.out(default, "cat /proc/keys | wc -c") == "0"
    assert _mountpoint(pod, default, "/proc/keys") and _mountpoint(pod, default, "/proc/sys")
    r = pod.sh(default, WRITE_TTL)
    assert r.exit_code != 0 and b"Read-only file system" in r.stderr
    # NET_ADMIN would allow the write: only the read-only mount stops it
    net_admin = pod.run(capabilities=pb.Capability(add_capabilities=["NET_ADMIN"]))
    assert pod.sh(net_admin, WRITE_TTL).exit_code != 0
    privileged = pod.run(privileged=True)
    assert int(pod.out(privileged, "cat /proc/timer_list | wc -c")) > 0
    assert not _mountpoint(pod, privileged, "/proc/keys")
    assert not _mountpoint(pod, privileged, "/proc/sys")
    assert pod.sh(privileged, WRITE_TTL).exit_code == 0


def _gvisor_proc(pod: Pod) -> None:
    """gVisor's /proc is its own kernel's: the files runc masks do not exist at all,
    /proc/sys holds a few emulated entries that refuse writes, privileged or not."""
    for cid in (pod.run(), pod.run(privileged=True)):
        for path in ("/proc/keys", "/proc/timer_list", "/proc/kcore", "/proc/sched_debug"):
            assert pod.sh(cid, f"test -e {path}").exit_code != 0, path
        r = pod.sh(cid, "echo x > /proc/sys/kernel/hostname")
        assert r.exit_code != 0 and b"error" in r.stderr
        assert pod.sh(cid, "test -e /proc/sys/net/ipv4/ip_default_ttl").exit_code != 0


def _links(pod: Pod, cid: str) -> dict[str, str]:
    text = pod.out(cid, "for n in net ipc pid; do readlink /proc/self/ns/$n; done")
    return dict(zip(("net", "ipc", "pid"), text.split("\n"), strict=True))


def test_host_namespaces(clean: PodEnv, groups_image: None, handler: str) -> None:
    host = {n: os.readlink(f"/proc/self/ns/{n}") for n in ("net", "ipc", "pid")}
    host_init = Path("/proc/1/comm").read_text().strip()
    if handler == "runsc":
        return _gvisor_host_namespaces(clean)
    shared = Pod(clean, handler, network=NODE, ipc=NODE, pid=NODE)
    cid = shared.run()
    assert _links(shared, cid) == host
    assert shared.out(cid, "cat /proc/1/comm") == host_init
    assert BRIDGE in shared.out(cid, "cat /proc/net/dev")  # the host's interfaces
    private = Pod(clean, handler)
    own = private.run()
    links = _links(private, own)
    assert all(links[n] != host[n] for n in host), links
    assert private.out(own, "cat /proc/1/comm") == "sleep"  # its own command is PID 1
    assert BRIDGE not in private.out(own, "cat /proc/net/dev")


def _gvisor_host_namespaces(e: PodEnv) -> None:
    """runsc: the node's network is used (its host network is the namespace it starts
    in); the node's PID and IPC namespaces cannot be shared by gVisor's own kernel."""
    host_net, private = Pod(e, "runsc", network=NODE), Pod(e, "runsc")
    shared, own = host_net.run(), private.run()
    with socket.socket() as server:  # listens on the node's loopback only
        server.bind(("127.0.0.1", 0))
        server.listen(1)
        got: list[bytes] = []
        reader = threading.Thread(target=_read_one, args=(server, got))
        reader.start()
        dial = f"echo hi | nc 127.0.0.1 {server.getsockname()[1]}"
        assert host_net.sh(shared, dial).exit_code == 0
        reader.join(10)
        assert got == [b"hi\n"]
        assert private.sh(own, dial).exit_code != 0  # the pod's loopback has no listener
    for kind in ("pid", "ipc"):
        cfg = pod_config(log_dir=e.logs)
        setattr(cfg.linux.security_context.namespace_options, kind, NODE)
        with pytest.raises(grpc.RpcError) as caught:  # refused at RunPodSandbox already
            run_pod(e.daemon, cfg, "runsc")
        err = caught.value
        assert err.code() == grpc.StatusCode.FAILED_PRECONDITION, kind
        assert (
            f"runtime handler 'runsc' (gVisor) cannot share the node's {kind.upper()} "
            f"namespace (namespace_options.{kind} NODE)" in err.details()
        )
    assert private.out(own, "cat /proc/1/comm") == "sleep"  # its own command is PID 1


def _read_one(server: socket.socket, got: list[bytes]) -> None:
    """Accept one connection, keep what it sends, close it (so the client's nc ends)."""
    conn, _ = server.accept()
    with conn:
        conn.settimeout(10)
        got.append(conn.recv(16))
