"""Helpers for pod and container tests against a real podlingd."""

from __future__ import annotations

import json
import time
import uuid
from pathlib import Path

import grpc
from cri_api.v1 import api_pb2 as pb

from tests.support.daemon import Daemon
from tests.support.images import BuiltImage, build_image, busybox_rootfs_layer, write_oci_archive

BUSYBOX = "localhost/test/busybox:1"


def pod_daemon_config(
    base: Path, bridge: str, subnet: str, extra: str = "", cgroup_parent: str = "podling-it"
) -> str:
    """A daemon config whose networking stays on the test's own bridge and subnet."""
    cni = base / "cni"
    cni.mkdir(parents=True, exist_ok=True)
    return (
        f'[network]\ncni_conf_dir = "{cni}"\ndefault_bridge = "{bridge}"\n'
        f'default_subnet = "{subnet}"\n[runtime]\ncgroup_parent = "/{cgroup_parent}"\n'
        "stop_timeout = 2\n" + extra
    )


def load_busybox(d: Daemon, tmp: Path) -> BuiltImage:
    """Load a busybox image (built from busybox-static) into the daemon as BUSYBOX."""
    img = build_image([busybox_rootfs_layer()], "gzip", {"Cmd": ["sh"]})
    archive = write_oci_archive(img, BUSYBOX, tmp / "busybox.tar")
    call = d.channel.unary_unary(  # type: ignore[union-attr]
        "/podling.v1.Admin/LoadImage",
        request_serializer=lambda x: json.dumps(x).encode(),
        response_deserializer=json.loads,
    )
    call({"path": str(archive)})
    return img


def pod_config(name: str = "", log_dir: Path | None = None, **kw: object) -> pb.PodSandboxConfig:
    name = name or f"pod-{uuid.uuid4().hex[:8]}"
    cfg = pb.PodSandboxConfig(
        metadata=pb.PodSandboxMetadata(name=name, uid=uuid.uuid4().hex, namespace="test"),
        hostname=name,
        log_directory=str(log_dir) if log_dir else "",
    )
    for k, v in kw.items():
        if isinstance(v, dict):
            getattr(cfg, k).update(v)
        elif isinstance(v, list):
            getattr(cfg, k).extend(v)
        else:
            setattr(cfg, k, v)
    return cfg


def container_config(name: str, *cmd: str, **kw: object) -> pb.ContainerConfig:
    return pb.ContainerConfig(
        metadata=pb.ContainerMetadata(name=name),
        image=pb.ImageSpec(image=BUSYBOX),
        command=list(cmd),
        log_path=f"{name}.log",
        **kw,  # type: ignore[arg-type]
    )


def run_pod(d: Daemon, config: pb.PodSandboxConfig, handler: str = "") -> str:
    """Run a pod sandbox on runtime handler `handler` ("" = the daemon's default)."""
    req = pb.RunPodSandboxRequest(config=config, runtime_handler=handler)
    return str(d.runtime.RunPodSandbox(req).pod_sandbox_id)


def start_container(
    d: Daemon, pod_id: str, pod: pb.PodSandboxConfig, cfg: pb.ContainerConfig
) -> str:
    cid = d.runtime.CreateContainer(
        pb.CreateContainerRequest(pod_sandbox_id=pod_id, config=cfg, sandbox_config=pod)
    ).container_id
    d.runtime.StartContainer(pb.StartContainerRequest(container_id=cid))
    return str(cid)


def status(d: Daemon, cid: str, verbose: bool = False) -> pb.ContainerStatusResponse:
    return d.runtime.ContainerStatus(pb.ContainerStatusRequest(container_id=cid, verbose=verbose))


def wait_state(d: Daemon, cid: str, state: int, timeout: float = 20) -> pb.ContainerStatus:
    deadline = time.monotonic() + timeout
    while True:
        st = status(d, cid).status
        if st.state == state or time.monotonic() > deadline:
            return st
        time.sleep(0.05)


def remove_all(d: Daemon) -> None:
    """Stop and remove every pod (and so every container) of the daemon."""
    for pod in d.runtime.ListPodSandbox(pb.ListPodSandboxRequest()).items:
        d.runtime.StopPodSandbox(pb.StopPodSandboxRequest(pod_sandbox_id=pod.id))
        d.runtime.RemovePodSandbox(pb.RemovePodSandboxRequest(pod_sandbox_id=pod.id))


def rpc_code(fn: object) -> grpc.StatusCode:
    try:
        fn()  # type: ignore[operator]
    except grpc.RpcError as e:
        return e.code()  # type: ignore[no-any-return]
    raise AssertionError("the call succeeded")
