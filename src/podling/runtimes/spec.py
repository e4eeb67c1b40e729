"""Build a container's OCI runtime spec (config.json) from its CRI ContainerConfig. Pure:
it reads the image's /etc/passwd and /etc/group from the rootfs (safely, see users.py), a
Localhost seccomp profile, and asks HostInfo about host paths and devices; it changes
nothing.

The rules are Docker's and containerd's; each helper module states its part:
spec_process (args, env, cwd, user, stop signal), spec_mounts, spec_resources (cgroup
limits, devices), spec_security (capabilities, masked paths, seccomp, AppArmor),
spec_namespaces. Bad input raises InvalidArgument naming the field; what the node
cannot do raises FailedPrecondition.

Decisions worth knowing:
- process.rlimits is left out: like containerd's CRI plugin (and Docker), the container
  inherits the limits of the process that starts it (conmon → runc), so the node's
  admin sets them in one place.
- hostname is set only when the container has a UTS namespace of its own, which never
  happens through the CRI today (it joins the pod's or the host's): runc would overwrite
  the pod's hostname.
- linux.sysctl is empty: pod sysctls are applied to the pod's pinned namespaces.
- cgroupsPath is "<pod cgroup parent>/<container id>" (cgroupfs driver).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from cri_api.v1 import api_pb2 as pb

from podling.runtimes import spec_mounts as mounts_
from podling.runtimes import spec_process as process_
from podling.runtimes import spec_resources as resources_
from podling.runtimes import spec_security as security_
from podling.runtimes.spec_namespaces import namespaces, own_uts, user_namespace
from podling.runtimes.spec_types import DeviceInfo, HostInfo, PodContext, SpecResult

__all__ = ["DeviceInfo", "HostInfo", "PodContext", "SpecResult", "build_spec"]

OCI_VERSION = "1.0.2-dev"

# containerd's annotation keys, so tools that know them (nerdctl, NRI plugins) work.
A_CONTAINER_TYPE = "io.kubernetes.cri.container-type"
A_SANDBOX_ID = "io.kubernetes.cri.sandbox-id"
A_CONTAINER_NAME = "io.kubernetes.cri.container-name"
A_SANDBOX_NAME = "io.kubernetes.cri.sandbox-name"
A_SANDBOX_NAMESPACE = "io.kubernetes.cri.sandbox-namespace"
A_SANDBOX_UID = "io.kubernetes.cri.sandbox-uid"
A_IMAGE_NAME = "io.kubernetes.cri.image-name"


def spec_annotations(config: pb.ContainerConfig, pod: PodContext) -> dict[str, str]:
    """The CRI container annotations plus the io.kubernetes.cri.* keys (ours win)."""
    meta = pod.config.metadata
    out = dict(config.annotations)
    out.update(
        {
            A_CONTAINER_TYPE: "container",
            A_SANDBOX_ID: pod.sandbox_id,
            A_CONTAINER_NAME: config.metadata.name,
            A_SANDBOX_NAME: meta.name,
            A_SANDBOX_NAMESPACE: meta.namespace,
            A_SANDBOX_UID: meta.uid,
            A_IMAGE_NAME: config.image.user_specified_image or config.image.image,
        }
    )
    return out


def _process(
    config: pb.ContainerConfig,
    pod: PodContext,
    image: dict[str, Any],
    rootfs: Path,
    caps: security_.CapabilitySets,
) -> dict[str, Any]:
    sc = config.linux.security_context
    user = process_.resolve_user(sc, str(image.get("User") or ""), rootfs)
    return {
        "terminal": config.tty,
        "user": {"uid": user.uid, "gid": user.gid, "additionalGids": list(user.additional_gids)},
        "args": process_.process_args(config, image),
        "env": process_.process_env(config, image, process_.pod_hostname(pod)),
        "cwd": process_.process_cwd(config, image),
        "capabilities": caps.spec(),
        "noNewPrivileges": sc.no_new_privs,
    }


def _mounts(
    config: pb.ContainerConfig,
    pod: PodContext,
    host: HostInfo,
    image_volumes: Mapping[int, str] | None,
) -> tuple[list[dict[str, Any]], mounts_.CriMounts]:
    sc = config.linux.security_context
    cri = mounts_.cri_mounts(config.mounts, host, image_volumes)
    defaults = mounts_.default_mounts(sc.privileged, pod.shm_path)
    pod_files = mounts_.pod_file_mounts(pod, sc.readonly_rootfs)
    return mounts_.all_mounts(defaults, pod_files, cri), cri


def _linux(
    config: pb.ContainerConfig, container_id: str, pod: PodContext, host: HostInfo
) -> tuple[dict[str, Any], list[str]]:
    """linux.* except namespaces, seccomp and rootfsPropagation; and the warnings."""
    warnings: list[str] = []
    sc = config.linux.security_context
    res = resources_.resources(config.linux.resources, host, warnings)
    nodes, rules = resources_.devices(config.devices, sc.privileged, host)
    masked, readonly = security_.masked_paths(sc)
    linux: dict[str, Any] = {
        "resources": {**res, "devices": rules},
        "cgroupsPath": f"{pod.cgroup_parent.rstrip('/')}/{container_id}",
        "devices": nodes,
        "maskedPaths": masked,
        "readonlyPaths": readonly,
    }
    return linux, warnings


def build_spec(
    *,
    container_id: str,
    config: pb.ContainerConfig,
    pod: PodContext,
    image_config: dict[str, Any],
    rootfs: Path,
    target_pid: int | None = None,
    host: HostInfo = HostInfo(),  # noqa: B008 - frozen, so one shared default is safe
    image_volumes: Mapping[int, str] | None = None,
) -> SpecResult:
    """The config.json for container `container_id` of `pod`; see the module doc.

    `image_config` is the whole OCI image config (its "config" object is used);
    `rootfs` the container's mounted root filesystem; `target_pid` the process of the
    target container when namespace_options.pid is TARGET; `image_volumes` the host dir
    where the caller mounted each image volume, by index in config.mounts (an image
    mount without one is a FailedPrecondition).
    """
    image = image_config.get("config") or {}
    sc = config.linux.security_context
    caps = security_.capabilities(sc, host)
    linux, warnings = _linux(config, container_id, pod, host)
    process = _process(config, pod, image, rootfs, caps)
    process["oomScoreAdj"] = resources_.oom_score_adj(config.linux.resources, host, warnings)
    profile = security_.apparmor(sc, host, warnings)
    if profile:
        process["apparmorProfile"] = profile
    userns = user_namespace(sc, pod)  # checks the container's userns_options first
    linux["namespaces"] = namespaces(sc, pod, target_pid, host)
    if userns is not None:
        linux.update(userns.oci())
    seccomp = security_.seccomp(sc, caps.caps, host)
    if seccomp is not None:
        linux["seccomp"] = seccomp
    mounts, cri = _mounts(config, pod, host, image_volumes)
    if cri.rootfs_propagation:
        linux["rootfsPropagation"] = cri.rootfs_propagation
    spec: dict[str, Any] = {
        "ociVersion": OCI_VERSION,
        "process": process,
        "root": {"path": str(rootfs), "readonly": sc.readonly_rootfs},
        "mounts": mounts,
        "annotations": spec_annotations(config, pod),
        "linux": linux,
    }
    if own_uts(linux["namespaces"]):
        spec["hostname"] = process_.pod_hostname(pod)
    stop = process_.stop_signal(config, image, warnings)
    return SpecResult(spec=spec, mounts=cri.applied, warnings=warnings, stop_signal=stop)
