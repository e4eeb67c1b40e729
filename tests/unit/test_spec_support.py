"""Shared builders for the build_spec unit tests (no tests here)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from cri_api.v1 import api_pb2 as pb

from podling.runtimes.spec import DeviceInfo, HostInfo, PodContext, SpecResult, build_spec

PASSWD = (
    "root:x:0:0:root:/root:/bin/sh\n"
    "daemon:x:1:1::/:/bin/false\n"
    "app:x:1000:1000:app:/home/app:/bin/sh\n"
    "# a comment\n"
    "broken line\n"
    "web:x:33:33::/var/www:/bin/false\n"
)
GROUP = (
    "root:x:0:root\n"
    "wheel:x:10:root,app\n"
    "app:x:1000:\n"
    "audio:x:29:app\n"
    "www-data:x:33:\n"
    "staff:x:50:web\n"
)

DEVICES = {
    "/dev/fuse": DeviceInfo("c", 10, 229, 0o666, 0, 0),
    "/dev/sda": DeviceInfo("b", 8, 0, 0o660, 0, 6),
}


def fake_device_info(path: str) -> DeviceInfo:
    if path == "/dev/notadevice":
        raise ValueError(f"{path} is not a device node")
    if path not in DEVICES:
        raise FileNotFoundError(path)
    return DEVICES[path]


def make_rootfs(tmp: Path, passwd: str = PASSWD, group: str = GROUP) -> Path:
    root = tmp / "rootfs"
    (root / "etc").mkdir(parents=True)
    (root / "etc" / "passwd").write_text(passwd)
    (root / "etc" / "group").write_text(group)
    return root


def make_pod(tmp: Path, **overrides: Any) -> PodContext:
    pod_dir = tmp / "pod"
    pod_dir.mkdir(exist_ok=True)
    (pod_dir / "hostname").write_text("from-file\n")
    fields: dict[str, Any] = {
        "sandbox_id": "sb1",
        "config": pb.PodSandboxConfig(
            hostname="mypod",
            metadata=pb.PodSandboxMetadata(name="web", namespace="default", uid="uid-1"),
        ),
        "namespaces": {"network": "/run/netns/x", "ipc": "/run/ipc/x", "uts": "/run/uts/x"},
        "infra_pid": 4242,
        "hostname_file": pod_dir / "hostname",
        "resolv_conf": pod_dir / "resolv.conf",
        "hosts_file": pod_dir / "hosts",
        "shm_path": pod_dir / "shm",
        "cgroup_parent": "/podling/sb1",
    }
    fields.update(overrides)
    return PodContext(**fields)


def make_host(existing: set[str] | None = None, **overrides: Any) -> HostInfo:
    """A host where `existing` paths exist; /link/* resolves to /real/*."""
    present = existing if existing is not None else {"/data", "/data/sub", "/link/x", "/var/log"}

    def resolve(p: str) -> str:
        return p.replace("/link/", "/real/", 1) if p.startswith("/link/") else p

    fields: dict[str, Any] = {
        "resolve_path": resolve,
        "exists": lambda p: p in present,
        "device_info": fake_device_info,
        "machine": "x86_64",
    }
    fields.update(overrides)
    return HostInfo(**fields)


def make_config(**kwargs: Any) -> pb.ContainerConfig:
    """A ContainerConfig; `sc` (dict) and `resources` (dict) build the linux part."""
    sc = kwargs.pop("sc", {})
    res = kwargs.pop("resources", {})
    sc.setdefault("namespace_options", pb.NamespaceOption(pid=pb.CONTAINER))
    kwargs.setdefault("metadata", pb.ContainerMetadata(name="app"))
    kwargs.setdefault("image", pb.ImageSpec(image="sha256:abc", user_specified_image="busybox"))
    return pb.ContainerConfig(
        linux=pb.LinuxContainerConfig(
            security_context=pb.LinuxContainerSecurityContext(**sc),
            resources=pb.LinuxContainerResources(**res),
        ),
        **kwargs,
    )


def build(
    tmp: Path,
    config: pb.ContainerConfig | None = None,
    image: dict[str, Any] | None = None,
    pod: PodContext | None = None,
    host: HostInfo | None = None,
    target_pid: int | None = None,
    image_volumes: dict[int, str] | None = None,
) -> SpecResult:
    rootfs = tmp / "rootfs"
    if not rootfs.exists():
        make_rootfs(tmp)
    return build_spec(
        container_id="c1",
        config=config if config is not None else make_config(),
        pod=pod or make_pod(tmp),
        image_config={"config": image if image is not None else {"Cmd": ["sh"]}},
        rootfs=rootfs,
        target_pid=target_pid,
        host=host or make_host(),
        image_volumes=image_volumes,
    )


def destinations(result: SpecResult) -> list[str]:
    return [m["destination"] for m in result.spec["mounts"]]


def mount_at(result: SpecResult, dest: str) -> dict[str, Any]:
    found: list[dict[str, Any]] = [m for m in result.spec["mounts"] if m["destination"] == dest]
    assert len(found) == 1, found
    return found[0]
