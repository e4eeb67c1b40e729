"""The container security context on a real podlingd, checked from inside the container
(ExecSync): capabilities, users and groups, read-only rootfs, no_new_privs, masked and
read-only /proc paths, host namespaces, seccomp and AppArmor, and every refusal."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from cri_api.v1 import api_pb2 as pb

from tests.integration.pod_fixtures import PodEnv
from tests.support.daemon import Daemon
from tests.support.images import build_image, busybox_rootfs_layer, layer, write_oci_archive
from tests.support.pods import container_config, pod_config, run_pod, start_container

pytestmark = pytest.mark.root
BRIDGE, SUBNET = "plsec0", "10.93.6.0/24"
NODE, CONTAINER = pb.NamespaceMode.NODE, pb.NamespaceMode.CONTAINER
# The busybox test image plus an /etc/group in which app and nobody have memberships.
GROUPS_IMAGE = "localhost/test/secgroups:1"
GROUP = b"root:x:0:\nwheel:x:10:app\naudio:x:29:app,nobody\napp:x:1000:\nnogroup:x:65534:\n"
# Docker's and containerd's default capability set, as a CapEff mask
DEFAULT_CAPS = 0xA80425FB
CAP_NET_ADMIN = 1 << 12


@pytest.fixture(scope="module")
def groups_image(env: PodEnv) -> None:
    img = build_image([busybox_rootfs_layer(), layer({"etc/group": GROUP})], "gzip", {})
    archive = write_oci_archive(img, GROUPS_IMAGE, env.base / "secgroups.tar")
    call = env.daemon.channel.unary_unary(  # type: ignore[union-attr]
        "/podling.v1.Admin/LoadImage",
        request_serializer=lambda x: json.dumps(x).encode(),
        response_deserializer=json.loads,
    )
    call({"path": str(archive)})
    archive.unlink()


class Pod:
    """A pod of the module's daemon, and containers started in it with a security context."""

    def __init__(self, e: PodEnv, network: int = 0, ipc: int = 0, pid: int = CONTAINER) -> None:
        self.d: Daemon = e.daemon
        self.config = pod_config(log_dir=e.logs)
        opts = self.config.linux.security_context.namespace_options
        opts.network, opts.ipc, opts.pid = network, ipc, pid  # type: ignore[assignment]
        self.id = run_pod(self.d, self.config)
        self.count = 0

    def config_for(self, image: str, mounts: list[pb.Mount], **sc: Any) -> pb.ContainerConfig:
        self.count += 1
        cfg = container_config(f"c{self.count}", "sleep", "1000")
        cfg.image.image = image
        cfg.mounts.extend(mounts)
        opts = self.config.linux.security_context.namespace_options
        sc.setdefault("namespace_options", pb.NamespaceOption(**_ns(opts)))
        cfg.linux.security_context.CopyFrom(pb.LinuxContainerSecurityContext(**sc))
        return cfg

    def run(self, image: str = "", mounts: list[pb.Mount] | None = None, **sc: Any) -> str:
        """Start `sleep 1000` with security context `sc` (the pod's namespace modes)."""
        cfg = self.config_for(image or GROUPS_IMAGE, mounts or [], **sc)
        return start_container(self.d, self.id, self.config, cfg)

    def refuse(self, **sc: Any) -> grpc.RpcError:
        cfg = self.config_for(GROUPS_IMAGE, [], **sc)
        with pytest.raises(grpc.RpcError) as e:
            self.d.runtime.CreateContainer(
                pb.CreateContainerRequest(pod_sandbox_id=self.id, config=cfg)
            )
        return e.value

    def sh(self, cid: str, script: str) -> pb.ExecSyncResponse:
        req = pb.ExecSyncRequest(container_id=cid, cmd=["sh", "-c", script], timeout=10)
        return self.d.runtime.ExecSync(req)

    def out(self, cid: str, script: str) -> str:
        r = self.sh(cid, script)
        assert r.exit_code == 0, (script, r)
        return r.stdout.decode().strip()

    def status_field(self, cid: str, name: str) -> str:
        return self.out(cid, f"grep '^{name}:' /proc/self/status").split(":", 1)[1].strip()


def _ns(opts: pb.NamespaceOption) -> dict[str, int]:
    return {"network": opts.network, "ipc": opts.ipc, "pid": opts.pid}


@pytest.fixture
def pod(clean: PodEnv, groups_image: None) -> Iterator[Pod]:
    yield Pod(clean)


def own_status(pid: int | str, name: str) -> str:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(name + ":"):
            return line.split(":", 1)[1].strip()
    raise AssertionError(f"{name} not in /proc/{pid}/status")


def daemon_pid(d: Daemon) -> int:
    assert d.proc is not None
    return d.proc.pid


# ---- capabilities -------------------------------------------------------------------


def test_capability_sets(pod: Pod) -> None:
    default = pod.run()
    assert int(pod.status_field(default, "CapEff"), 16) == DEFAULT_CAPS
    assert int(pod.status_field(default, "CapBnd"), 16) == DEFAULT_CAPS
    assert int(pod.status_field(default, "CapInh"), 16) == 0
    added = pod.run(capabilities=pb.Capability(add_capabilities=["NET_ADMIN"]))
    assert int(pod.status_field(added, "CapEff"), 16) == DEFAULT_CAPS | CAP_NET_ADMIN
    # NET_ADMIN really works: the pod's own network namespace lets it take eth0 down
    # and up (a default container gets "Operation not permitted")
    assert pod.sh(added, "ip link set lo down && ip link set lo up").exit_code == 0
    assert b"not permitted" in pod.sh(default, "ip link set lo down").stderr
    none = pod.run(capabilities=pb.Capability(drop_capabilities=["ALL"]))
    assert int(pod.status_field(none, "CapEff"), 16) == 0
    assert int(pod.status_field(none, "CapBnd"), 16) == 0
    # root without CAP_DAC_OVERRIDE cannot read a file only its owner may read
    unreadable = pod.sh(none, "echo x > /tmp/f && chmod 0 /tmp/f && cat /tmp/f")
    assert unreadable.exit_code != 0 and b"Permission denied" in unreadable.stderr
    privileged = pod.run(privileged=True)
    mine = own_status(daemon_pid(pod.d), "CapEff")
    assert pod.status_field(privileged, "CapEff") == mine
    assert pod.status_field(privileged, "CapBnd") == mine


def test_capability_refusals(pod: Pod) -> None:
    bogus = pod.refuse(capabilities=pb.Capability(add_capabilities=["CAP_BOGUS"]))
    assert bogus.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "capabilities.add_capabilities: unknown capability 'CAP_BOGUS'" in bogus.details()
    eff = int(own_status(daemon_pid(pod.d), "CapEff"), 16)
    if eff & (1 << 24):
        pytest.skip("podlingd holds CAP_SYS_RESOURCE here: nothing to refuse")
    lacking = pod.refuse(capabilities=pb.Capability(add_capabilities=["SYS_RESOURCE"]))
    assert lacking.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "capabilities CAP_SYS_RESOURCE are not available on this node" in lacking.details()


# ---- users and groups ---------------------------------------------------------------


def _id(pod: Pod, cid: str) -> tuple[int, int, set[int]]:
    uid, gid, groups = pod.out(cid, "id -u; id -g; id -G").split("\n")
    return int(uid), int(gid), {int(g) for g in groups.split()}


U = pb.Int64Value
USER_CASES: list[tuple[dict[str, Any], tuple[int, int, set[int]]]] = [
    ({}, (0, 0, {0})),
    ({"run_as_user": U(value=1000)}, (1000, 1000, {1000, 10, 29})),
    ({"run_as_username": "nobody"}, (65534, 65534, {65534, 29})),
    ({"run_as_user": U(value=1000), "run_as_group": U(value=4000)}, (1000, 4000, {4000, 10, 29})),
    ({"run_as_user": U(value=1234)}, (1234, 0, {0})),  # not in /etc/passwd: gid 0
    (
        {"run_as_username": "app", "supplemental_groups": [4242]},  # Merge, the default
        (1000, 1000, {1000, 10, 29, 4242}),
    ),
    (
        {
            "run_as_username": "app",
            "supplemental_groups": [4242],
            "supplemental_groups_policy": pb.SupplementalGroupsPolicy.Strict,
        },
        (1000, 1000, {1000, 4242}),  # the image's /etc/group memberships are left out
    ),
]


def test_users_and_supplemental_groups(pod: Pod) -> None:
    for sc, expected in USER_CASES:
        cid = pod.run(**sc)
        assert _id(pod, cid) == expected, sc


def test_status_announces_the_supplemental_groups_policy(clean: PodEnv) -> None:
    """The kubelet only sends Strict to a runtime whose Status says it implements it."""
    st = clean.daemon.runtime.Status(pb.StatusRequest())
    assert st.HasField("features") and st.features.supplemental_groups_policy is True


def test_user_refusals(pod: Pod) -> None:
    ghost = pod.refuse(run_as_username="ghost")
    assert ghost.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "run_as_username 'ghost' does not exist in the image's /etc/passwd" in ghost.details()
    group_only = pod.refuse(run_as_group=U(value=5))
    assert group_only.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "run_as_group needs run_as_user or run_as_username" in group_only.details()
    both = pod.refuse(run_as_user=U(value=1), run_as_username="app")
    assert both.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "only one of run_as_user and run_as_username may be set" in both.details()


# ---- rootfs, no_new_privs, /proc ----------------------------------------------------


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
    assert pod.status_field(pod.run(no_new_privs=True), "NoNewPrivs") == "1"
    assert pod.status_field(pod.run(), "NoNewPrivs") == "0"


# /proc/sys/net/* is the pod's own network namespace: writing a value back is harmless
WRITE_TTL = (
    "v=$(cat /proc/sys/net/ipv4/ip_default_ttl) && echo $v > /proc/sys/net/ipv4/ip_default_ttl"
)


def _mountpoint(pod: Pod, cid: str, path: str) -> bool:
    return pod.sh(cid, f"grep -q ' {path} ' /proc/self/mountinfo").exit_code == 0


def test_masked_and_readonly_paths(pod: Pod) -> None:
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


# ---- host namespaces ----------------------------------------------------------------


def _links(pod: Pod, cid: str) -> dict[str, str]:
    text = pod.out(cid, "for n in net ipc pid; do readlink /proc/self/ns/$n; done")
    return dict(zip(("net", "ipc", "pid"), text.split("\n"), strict=True))


def test_host_namespaces(clean: PodEnv, groups_image: None) -> None:
    host = {n: os.readlink(f"/proc/self/ns/{n}") for n in ("net", "ipc", "pid")}
    host_init = Path("/proc/1/comm").read_text().strip()
    shared = Pod(clean, network=NODE, ipc=NODE, pid=NODE)
    cid = shared.run()
    assert _links(shared, cid) == host
    assert shared.out(cid, "cat /proc/1/comm") == host_init
    assert BRIDGE in shared.out(cid, "cat /proc/net/dev")  # the host's interfaces
    private = Pod(clean)
    own = private.run()
    links = _links(private, own)
    assert all(links[n] != host[n] for n in host), links
    assert private.out(own, "cat /proc/1/comm") == "sleep"  # its own command is PID 1
    assert BRIDGE not in private.out(own, "cat /proc/net/dev")


# ---- seccomp and AppArmor -----------------------------------------------------------

RUNTIME_DEFAULT = pb.SecurityProfile(profile_type=pb.SecurityProfile.RuntimeDefault)
UNCONFINED = pb.SecurityProfile(profile_type=pb.SecurityProfile.Unconfined)


def localhost(ref: str) -> pb.SecurityProfile:
    return pb.SecurityProfile(profile_type=pb.SecurityProfile.Localhost, localhost_ref=ref)


def test_seccomp_profiles(pod: Pod, tmp_path: Path) -> None:
    confined = pod.run(seccomp=RUNTIME_DEFAULT)
    assert pod.status_field(confined, "Seccomp") == "2"
    # a user namespace needs no capability, but the default profile allows unshare
    # only with CAP_SYS_ADMIN
    blocked = pod.sh(confined, "unshare -U true")
    assert blocked.exit_code != 0 and b"Operation not permitted" in blocked.stderr
    free = pod.run(seccomp=UNCONFINED)
    assert pod.status_field(free, "Seccomp") == "0"
    assert pod.sh(free, "unshare -U true").exit_code == 0
    # CRI: seccomp is not applied to privileged containers
    assert pod.status_field(pod.run(privileged=True, seccomp=RUNTIME_DEFAULT), "Seccomp") == "0"
    profile = tmp_path / "no-mkdir.json"
    rule = {"names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_ERRNO", "errnoRet": 1}
    profile.write_text(json.dumps({"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [rule]}))
    no_mkdir = pod.run(seccomp=localhost(str(profile)))
    assert pod.status_field(no_mkdir, "Seccomp") == "2"
    r = pod.sh(no_mkdir, "mkdir /tmp/x")
    assert r.exit_code != 0 and b"Operation not permitted" in r.stderr
    assert pod.sh(no_mkdir, "touch /tmp/y").exit_code == 0  # only mkdir is blocked
    assert pod.sh(free, "mkdir /tmp/x").exit_code == 0


def test_seccomp_and_apparmor_refusals(pod: Pod, tmp_path: Path) -> None:
    missing = tmp_path / "missing.json"
    err = pod.refuse(seccomp=localhost(str(missing)))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert f"seccomp profile {missing} does not exist on this node" in err.details()
    relative = pod.refuse(seccomp=localhost("profiles/x.json"))
    assert relative.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "seccomp localhost_ref 'profiles/x.json' must be an absolute path" in relative.details()
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    invalid = pod.refuse(seccomp=localhost(str(bad)))
    assert invalid.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert f"seccomp profile {bad} is not valid JSON" in invalid.details()
    aa = pod.refuse(apparmor=localhost("my-profile"))
    assert aa.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "AppArmor is not enabled on this node; cannot apply profile 'my-profile'" in aa.details()
    # RuntimeDefault AppArmor on a node without AppArmor: runs unconfined, not refused
    cid = pod.run(apparmor=RUNTIME_DEFAULT)
    assert pod.out(cid, "cat /proc/self/attr/current 2>/dev/null || echo none") in (
        "unconfined",
        "none",
    )
