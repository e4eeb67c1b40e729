"""The mounts of config.json: runtime defaults, the pod's files, then the CRI mounts.

Order (runc mounts in spec order): /proc, /dev, /dev/pts, /dev/shm, /dev/mqueue, /sys,
/sys/fs/cgroup; then /etc/hosts, /etc/resolv.conf, /etc/hostname (binds of the pod's
files, read-only when the rootfs is); then the CRI mounts, stably sorted by the depth of
their container path so a parent is mounted before what goes inside it. A default or
pod-file mount is left out when a CRI mount has the same destination, and every /dev
default is left out under a CRI /dev (containerd does the same).

CRI mounts are binds ("rbind") of the host path with symlinks followed on the host (the
CRI says to mount the real destination); a missing host path is the caller's error.
`recursive_read_only` adds "rro" (runc and crun make every submount read-only too; the
caller refuses it for a handler that cannot).
Propagation maps PRIVATE/HOST_TO_CONTAINER/BIDIRECTIONAL to rprivate/rslave/rshared,
and the rootfs is made rslave/rshared to match, or runc's mount would not propagate.
SELinux relabelling is ignored (SELinux is not active on our nodes).

Image volumes (a CRI mount with `image` set) are prepared by the caller: it mounts a
read-only view of the image and passes the dir by mount index (`image_volumes`). They
become read-only binds of that dir whatever `readonly` says (the CRI: image volumes are
read-only), and must not name a host_path as well.
"""

from __future__ import annotations

import posixpath
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cri_api.v1 import api_pb2 as pb

from podling.errors import FailedPrecondition, InvalidArgument
from podling.runtimes.spec_types import HostInfo, PodContext

Mount = dict[str, Any]

_PROPAGATION = {
    pb.PROPAGATION_PRIVATE: "rprivate",
    pb.PROPAGATION_HOST_TO_CONTAINER: "rslave",
    pb.PROPAGATION_BIDIRECTIONAL: "rshared",
}


def _m(dest: str, kind: str, source: str, options: list[str]) -> Mount:
    return {"destination": dest, "type": kind, "source": source, "options": options}


def default_mounts(privileged: bool, shm_path: Path | None) -> list[Mount]:
    """The mounts every container gets; /sys and the cgroup fs are writable only when
    privileged (CRI: "any sysfs and procfs mounts are mounted RW")."""
    ro = [] if privileged else ["ro"]
    if shm_path is None:
        shm = _m(
            "/dev/shm", "tmpfs", "shm", ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"]
        )
    else:
        shm = _m(
            "/dev/shm",
            "bind",
            str(shm_path),
            ["rbind", "rprivate", "nosuid", "noexec", "nodev", "rw"],
        )
    return [
        _m("/proc", "proc", "proc", ["nosuid", "noexec", "nodev"]),
        _m("/dev", "tmpfs", "tmpfs", ["nosuid", "strictatime", "mode=755", "size=65536k"]),
        _m(
            "/dev/pts",
            "devpts",
            "devpts",
            ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"],
        ),
        shm,
        _m("/dev/mqueue", "mqueue", "mqueue", ["nosuid", "noexec", "nodev"]),
        _m("/sys", "sysfs", "sysfs", ["nosuid", "noexec", "nodev", *ro]),
        _m("/sys/fs/cgroup", "cgroup", "cgroup", ["nosuid", "noexec", "nodev", "relatime", *ro]),
    ]


def pod_file_mounts(pod: PodContext, readonly_rootfs: bool) -> list[Mount]:
    """Binds of the pod's hosts, resolv.conf and hostname files (containerd: rw unless
    the rootfs is read-only)."""
    mode = "ro" if readonly_rootfs else "rw"
    files = [
        ("/etc/hosts", pod.hosts_file),
        ("/etc/resolv.conf", pod.resolv_conf),
        ("/etc/hostname", pod.hostname_file),
    ]
    return [_m(dest, "bind", str(src), ["rbind", "rprivate", mode]) for dest, src in files]


@dataclass
class CriMounts:
    """The CRI mounts as OCI mounts (sorted) and as applied (host path resolved)."""

    oci: list[Mount] = field(default_factory=list)
    applied: list[pb.Mount] = field(default_factory=list)
    rootfs_propagation: str = ""


def _container_path(index: int, m: pb.Mount) -> str:
    path = m.container_path
    if not path.startswith("/"):
        raise InvalidArgument(f"mounts[{index}].container_path {path!r} must be an absolute path")
    clean = posixpath.normpath(path)
    if clean.startswith("//"):
        clean = "/" + clean.lstrip("/")
    if clean == "/":
        raise InvalidArgument(f"mounts[{index}].container_path: cannot mount over /")
    return clean


def is_image_volume(m: pb.Mount) -> bool:
    """Whether the CRI mount asks for an image's root filesystem (Mount.image)."""
    return m.HasField("image") and bool(m.image.image)


def _check_unsupported(index: int, m: pb.Mount) -> None:
    if m.uidMappings or m.gidMappings:
        raise FailedPrecondition(
            f"mounts[{index}] ({m.container_path}): per-mount id mappings (uidMappings/"
            "gidMappings) are not supported; in a pod with a user namespace the image layers "
            "are id-mapped and volumes keep their host ownership"
        )
    if m.recursive_read_only and (not m.readonly or m.propagation != pb.PROPAGATION_PRIVATE):
        raise InvalidArgument(
            f"mounts[{index}] ({m.container_path}): recursive_read_only needs readonly "
            "and PROPAGATION_PRIVATE"
        )


def _host_path(index: int, m: pb.Mount, host: HostInfo) -> str:
    if not m.host_path:
        raise InvalidArgument(f"mounts[{index}] ({m.container_path}): host_path is empty")
    if not m.host_path.startswith("/"):
        raise InvalidArgument(f"mounts[{index}].host_path {m.host_path!r} must be an absolute path")
    if not host.exists(m.host_path):
        raise InvalidArgument(
            f"mount host path {m.host_path} does not exist (mounts[{index}], container path "
            f"{m.container_path}); create it on the node or fix the volume"
        )
    return host.resolve_path(m.host_path)


def _image_source(index: int, m: pb.Mount, image_volumes: Mapping[int, str]) -> str:
    if m.host_path:
        raise InvalidArgument(
            f"mounts[{index}] ({m.container_path}): set either host_path or image "
            f"({m.image.image}), not both"
        )
    source = image_volumes.get(index)
    if source is None:
        raise FailedPrecondition(
            f"mounts[{index}] ({m.container_path}): image volume {m.image.image} was not "
            "prepared for this container"
        )
    return source


def _depth(path: str) -> int:
    return len([p for p in path.split("/") if p])


def cri_mounts(
    mounts: Sequence[pb.Mount], host: HostInfo, image_volumes: Mapping[int, str] | None = None
) -> CriMounts:
    """Validate and convert the CRI mounts; see the module doc for the rules.
    `image_volumes` maps the index of each image mount to its prepared host dir."""
    converted: list[tuple[Mount, pb.Mount]] = []
    for i, m in enumerate(mounts):
        _check_unsupported(i, m)
        dest = _container_path(i, m)
        image = is_image_volume(m)
        source = _image_source(i, m, image_volumes or {}) if image else _host_path(i, m, host)
        propagation = _PROPAGATION.get(m.propagation)
        if propagation is None:
            raise InvalidArgument(f"mounts[{i}].propagation {m.propagation} is not known")
        readonly = m.readonly or image
        options = ["rbind", propagation, "ro" if readonly else "rw"]
        if m.recursive_read_only:
            options.append("rro")  # mount_setattr(AT_RECURSIVE): the submounts too
        applied = pb.Mount()
        applied.CopyFrom(m)
        applied.host_path, applied.readonly = source, readonly
        converted.append((_m(dest, "bind", source, options), applied))
    converted.sort(key=lambda pair: _depth(pair[0]["destination"]))
    out = CriMounts([c[0] for c in converted], [c[1] for c in converted])
    out.rootfs_propagation = _rootfs_propagation(mounts)
    return out


def _rootfs_propagation(mounts: Sequence[pb.Mount]) -> str:
    kinds = {m.propagation for m in mounts}
    if pb.PROPAGATION_BIDIRECTIONAL in kinds:
        return "rshared"
    if pb.PROPAGATION_HOST_TO_CONTAINER in kinds:
        return "rslave"
    return ""


def _overridden(dest: str, cri_dests: set[str]) -> bool:
    return dest in cri_dests or ("/dev" in cri_dests and dest.startswith("/dev/"))


def all_mounts(defaults: list[Mount], pod_files: list[Mount], cri: CriMounts) -> list[Mount]:
    """The spec's mounts: defaults and pod files not overridden by a CRI mount, then CRI."""
    cri_dests = {m["destination"] for m in cri.oci}
    kept = [m for m in [*defaults, *pod_files] if not _overridden(m["destination"], cri_dests)]
    return [*kept, *cri.oci]
