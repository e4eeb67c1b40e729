"""The inputs and output of OCI spec generation (re-exported by podling.runtimes.spec).

Kept apart from spec.py so the helper modules (mounts, security, ...) can name them
without importing the entry point.
"""

from __future__ import annotations

import os
import platform
import stat
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

from cri_api.v1 import api_pb2 as pb


@dataclass(frozen=True)
class PodContext:
    """What the container needs from its pod sandbox.

    `namespaces` maps a namespace kind ("network", "ipc", "uts") to the pinned file the
    container joins; an absent kind means the host's namespace (e.g. hostNetwork has no
    "network"). `infra_pid` is the pod's infra process, whose pid namespace the
    containers of a shared-pid pod join. `shm_path` is the pod's /dev/shm (a tmpfs the
    sandbox mounted); None gives the container a private tmpfs. `cgroup_parent` is the
    pod's cgroupfs path, e.g. "/podling/<sandbox id>".
    """

    sandbox_id: str
    config: pb.PodSandboxConfig
    namespaces: dict[str, str]
    infra_pid: int | None
    hostname_file: Path
    resolv_conf: Path
    hosts_file: Path
    shm_path: Path | None
    cgroup_parent: str


class DeviceInfo(NamedTuple):
    """A host device node: kind "c" or "b", numbers, permission bits, owner."""

    kind: str
    major: int
    minor: int
    mode: int
    uid: int = 0
    gid: int = 0


def stat_device(path: str) -> DeviceInfo:
    """The device node at `path` (symlinks followed). OSError if it does not exist,
    ValueError if it is not a character or block device."""
    st = os.stat(path)
    if stat.S_ISCHR(st.st_mode):
        kind = "c"
    elif stat.S_ISBLK(st.st_mode):
        kind = "b"
    else:
        raise ValueError(f"{path} is not a device node")
    rdev = st.st_rdev
    return DeviceInfo(
        kind, os.major(rdev), os.minor(rdev), stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid
    )


@dataclass(frozen=True)
class HostInfo:
    """What the node can do; the defaults describe our nodes (Debian 12, cgroup v1 hybrid,
    no AppArmor, root without CAP_SYS_RESOURCE) and look things up on the real host.

    `capabilities`: the capabilities podling itself holds (a container cannot get more);
    None means every capability the spec knows. `cgroup2`: the unified hierarchy only
    (linux.resources.unified is honoured only there). `memory_swap`: the memory cgroup
    can limit swap (v1: memory.memsw.* exists), so the swap limit is set. `machine`:
    platform.machine(), picks the seccomp architectures. `seccomp_profile_root`: the
    directory a relative seccomp localhost_ref is resolved under ([runtime]
    seccomp_profile_root); None refuses relative refs.
    """

    min_oom_score_adj: int = 0
    apparmor: bool = False
    resolve_path: Callable[[str], str] = os.path.realpath
    exists: Callable[[str], bool] = os.path.exists
    device_info: Callable[[str], DeviceInfo] = stat_device
    capabilities: frozenset[str] | None = None
    cgroup2: bool = False
    memory_swap: bool = True
    machine: str = field(default_factory=platform.machine)
    seccomp_profile_root: Path | None = None


@dataclass(frozen=True)
class SpecResult:
    """The OCI config.json, the CRI mounts as applied (host paths resolved, for
    ContainerStatus), warnings for the operator, and the signal that stops the container."""

    spec: dict[str, Any]
    mounts: list[pb.Mount]
    warnings: list[str]
    stop_signal: str
