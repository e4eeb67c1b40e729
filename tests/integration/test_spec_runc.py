"""build_spec's config.json run for real by runc (no conmon): `runc run` waits for the
container, its stdout goes to a file. A busybox rootfs is built in tmp_path; the pod has
no pinned namespaces (host network, IPC, UTS), which is enough to test the spec."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from cri_api.v1 import api_pb2 as pb

from podling.oslib import cgroups
from podling.runtimes.host import own_capabilities
from podling.runtimes.spec import HostInfo, PodContext, build_spec

pytestmark = pytest.mark.root

CGROUP_PARENT = "/podling-spec-test"
APPLETS = ["sh", "echo", "cat", "ls", "id", "sleep", "nc", "touch", "grep", "wc", "unshare", "true"]
PASSWD = "root:x:0:0:root:/root:/bin/sh\napp:x:1234:2345:app:/home/app:/bin/sh\n"
GROUP = "root:x:0:\napp:x:2345:\nextra:x:3456:app\n"


@dataclass
class Env:
    tmp: Path
    rootfs: Path
    pod: PodContext
    host: HostInfo


def _busybox_rootfs(root: Path) -> None:
    (root / "bin").mkdir(parents=True)
    shutil.copy2("/usr/bin/busybox", root / "bin" / "busybox")
    for applet in APPLETS:
        (root / "bin" / applet).symlink_to("busybox")
    for d in ("etc", "proc", "sys", "dev", "tmp", "data"):
        (root / d).mkdir(exist_ok=True)
    (root / "etc" / "passwd").write_text(PASSWD)
    (root / "etc" / "group").write_text(GROUP)


@pytest.fixture
def env(tmp_path: Path) -> Iterator[Env]:
    rootfs = tmp_path / "rootfs"
    _busybox_rootfs(rootfs)
    files = tmp_path / "pod"
    files.mkdir()
    (files / "hostname").write_text("spectest-pod\n")
    (files / "resolv.conf").write_text("nameserver 127.0.0.1\n")
    (files / "hosts").write_text("127.0.0.1 localhost\n")
    pod = PodContext(
        sandbox_id="spectest-sandbox",
        config=pb.PodSandboxConfig(
            hostname="spectest-pod",
            metadata=pb.PodSandboxMetadata(name="p", namespace="ns", uid="u"),
        ),
        namespaces={},
        infra_pid=None,
        hostname_file=files / "hostname",
        resolv_conf=files / "resolv.conf",
        hosts_file=files / "hosts",
        shm_path=None,
        cgroup_parent=CGROUP_PARENT,
    )
    yield Env(tmp_path, rootfs, pod, HostInfo(capabilities=own_capabilities()))
    # runc removes the container's cgroup; the parent is ours to remove
    cgroups.remove(CGROUP_PARENT)


def _config(args: list[str], **linux_sc: object) -> pb.ContainerConfig:
    sc = pb.LinuxContainerSecurityContext(
        namespace_options=pb.NamespaceOption(pid=pb.CONTAINER, network=pb.NODE, ipc=pb.NODE),
        **linux_sc,  # type: ignore[arg-type]
    )
    return pb.ContainerConfig(
        metadata=pb.ContainerMetadata(name="c"),
        command=args,
        linux=pb.LinuxContainerConfig(security_context=sc),
    )


def _run(
    env: Env, config: pb.ContainerConfig, image_config: dict[str, object] | None = None
) -> tuple[int, str]:
    """Run the container to completion; (exit code, stdout + stderr)."""
    cid = f"spectest-{uuid.uuid4().hex[:12]}"
    result = build_spec(
        container_id=cid,
        config=config,
        pod=env.pod,
        image_config=image_config or {"config": {}},
        rootfs=env.rootfs,
        host=env.host,
    )
    bundle = env.tmp / f"bundle-{cid}"
    bundle.mkdir()
    (bundle / "config.json").write_text(json.dumps(result.spec))
    out = env.tmp / f"out-{cid}"
    with open(out, "wb") as f:
        proc = subprocess.run(
            ["runc", "--root", str(env.tmp / "runc"), "run", "--bundle", str(bundle), cid],
            stdin=subprocess.DEVNULL,
            stdout=f,
            stderr=subprocess.STDOUT,
            timeout=60,
        )
    # `runc run` deletes the container when it exits; make sure, in case it failed midway
    subprocess.run(
        ["runc", "--root", str(env.tmp / "runc"), "delete", "-f", cid],
        capture_output=True,
        timeout=30,
    )
    return proc.returncode, out.read_text()


def test_default_container_runs_as_root_with_pod_files(env: Env) -> None:
    code, out = _run(env, _config(["sh", "-c", "id -u; cat /etc/hostname; echo $HOSTNAME"]))
    assert code == 0, out
    assert out.split() == ["0", "spectest-pod", "spectest-pod"]


def test_user_by_name_from_image_passwd(env: Env) -> None:
    code, out = _run(env, _config(["id"]), {"config": {"User": "app"}})
    assert code == 0, out
    assert "uid=1234" in out and "gid=2345" in out and "3456" in out


def test_run_as_username(env: Env) -> None:
    code, out = _run(env, _config(["id", "-u"], run_as_username="app"))
    assert code == 0, out
    assert out.strip() == "1234"


def test_readonly_rootfs_refuses_writes(env: Env) -> None:
    code, out = _run(env, _config(["sh", "-c", "touch /x && echo wrote"], readonly_rootfs=True))
    assert code != 0
    assert "wrote" not in out
    assert not (env.rootfs / "x").exists()


def test_cri_bind_mount_readonly(env: Env) -> None:
    src = env.tmp / "volume"
    src.mkdir()
    (src / "f").write_text("from the host\n")
    config = _config(["sh", "-c", "cat /data/vol/f; touch /data/vol/g || echo refused"])
    config.mounts.append(pb.Mount(container_path="/data/vol", host_path=str(src), readonly=True))
    code, out = _run(env, config)
    assert code == 0, out
    assert "from the host" in out and "refused" in out
    assert not (src / "g").exists()


def test_runtime_default_seccomp_allows_shell_blocks_userns(env: Env) -> None:
    profile = pb.SecurityProfile(profile_type=pb.SecurityProfile.RuntimeDefault)
    script = "echo ok; ls / >/dev/null && echo listed; unshare -U true || echo blocked"
    code, out = _run(env, _config(["sh", "-c", script], seccomp=profile))
    assert code == 0, out
    lines = out.splitlines()
    assert lines[:2] == ["ok", "listed"] and lines[-1] == "blocked", out
    # the same container without seccomp may create a user namespace: the filter did it
    unconfined = pb.SecurityProfile(profile_type=pb.SecurityProfile.Unconfined)
    code, out = _run(env, _config(["sh", "-c", "unshare -U true && echo made"], seccomp=unconfined))
    assert code == 0 and "made" in out, out


def test_runtime_default_seccomp_runs_python(env: Env) -> None:
    """The host's Python (bind-mounted /usr) starts threads, a subprocess and a socket."""
    for d in ("usr", "lib", "lib64"):
        (env.rootfs / d).mkdir(exist_ok=True)
    config = _config(
        [
            "/usr/bin/python3",
            "-c",
            "import socket, subprocess, threading, tempfile;"
            "t = threading.Thread(target=print); t.start(); t.join();"
            "s = socket.socket(); s.bind(('127.0.0.1', 0)); s.close();"
            "print(subprocess.run(['/bin/echo', 'sub'], capture_output=True).stdout.decode());"
            "print('python ok')",
        ],
        seccomp=pb.SecurityProfile(profile_type=pb.SecurityProfile.RuntimeDefault),
    )
    for d in ("/usr", "/lib", "/lib64"):
        if os.path.exists(d):
            config.mounts.append(pb.Mount(container_path=d, host_path=d, readonly=True))
    code, out = _run(env, config)
    assert code == 0, out
    assert "sub" in out and "python ok" in out


def test_masked_paths(env: Env) -> None:
    # (this kernel has no /proc/kcore: /proc/timer_list and /proc/keys stand in for it)
    script = "wc -c < /proc/timer_list; grep -c ' /proc/keys ' /proc/self/mountinfo"
    code, out = _run(env, _config(["sh", "-c", script]))
    assert code == 0, out
    assert out.split() == ["0", "1"]


def test_privileged_sees_unmasked_proc(env: Env) -> None:
    code, out = _run(env, _config(["sh", "-c", "wc -c < /proc/timer_list"], privileged=True))
    assert code == 0, out
    assert int(out.split()[0]) > 0


def test_drop_all_capabilities(env: Env) -> None:
    caps = pb.Capability(drop_capabilities=["ALL"])
    code, out = _run(env, _config(["grep", "CapEff", "/proc/self/status"], capabilities=caps))
    assert code == 0, out
    assert out.split()[1] == "0000000000000000"


def test_default_capabilities_are_effective(env: Env) -> None:
    code, out = _run(env, _config(["grep", "CapEff", "/proc/self/status"]))
    assert code == 0, out
    # CHOWN(0) DAC_OVERRIDE(1) FOWNER(3) FSETID(4) KILL(5) SETGID(6) SETUID(7) SETPCAP(8)
    # NET_BIND_SERVICE(10) NET_RAW(13) SYS_CHROOT(18) MKNOD(27) AUDIT_WRITE(29) SETFCAP(31)
    assert int(out.split()[1], 16) == 0xA80425FB
