"""linux.resources and linux.devices: cgroup limits, the device cgroup, device nodes.

- Devices: the device cgroup denies everything, then allows mknod of any node and the
  nodes runc creates in every container (null, zero, full, random, urandom, tty,
  console, ptmx, pts) — runc's and Docker's defaults — plus each CRI device with its
  permissions. A privileged container may use every device (CRI: "the device cgroup
  does not restrict access to any devices"); the host's /dev is not enumerated.
- Memory: like containerd, the swap limit equals the memory limit unless the CRI gives
  one (no swapping by default), set only where the memory cgroup can limit swap.
- oom_score_adj is clamped to what the node can set (root without CAP_SYS_RESOURCE
  cannot lower it below 0), with a warning.
- `unified` (cgroup v2 keys) is passed through on cgroup v2 only; runc fails on v1 with
  it, so there it is dropped with a warning.
- No pids limit: the CRI has none per container (the kubelet sets it on the pod cgroup).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from cri_api.v1 import api_pb2 as pb

from podling.errors import InvalidArgument
from podling.runtimes.spec_types import DeviceInfo, HostInfo


def _allow(kind: str, major: int | None, minor: int | None, access: str) -> dict[str, Any]:
    rule: dict[str, Any] = {"allow": True, "type": kind, "access": access}
    if major is not None:  # absent major/minor means "any" ('*') in the OCI spec
        rule["major"] = major
    if minor is not None:
        rule["minor"] = minor
    return rule


DEFAULT_DEVICE_RULES: list[dict[str, Any]] = [
    {"allow": False, "access": "rwm"},
    _allow("c", None, None, "m"),
    _allow("b", None, None, "m"),
    _allow("c", 1, 3, "rwm"),  # /dev/null
    _allow("c", 1, 5, "rwm"),  # /dev/zero
    _allow("c", 1, 7, "rwm"),  # /dev/full
    _allow("c", 1, 8, "rwm"),  # /dev/random
    _allow("c", 1, 9, "rwm"),  # /dev/urandom
    _allow("c", 5, 0, "rwm"),  # /dev/tty
    _allow("c", 5, 1, "rwm"),  # /dev/console
    _allow("c", 5, 2, "rwm"),  # /dev/ptmx
    _allow("c", 136, None, "rwm"),  # /dev/pts/*
]


def _device_info(index: int, d: pb.Device, host: HostInfo) -> DeviceInfo:
    try:
        return host.device_info(d.host_path)
    except FileNotFoundError as e:
        raise InvalidArgument(
            f"device host path {d.host_path} does not exist (devices[{index}])"
        ) from e
    except (OSError, ValueError) as e:
        raise InvalidArgument(f"devices[{index}].host_path {d.host_path}: {e}") from e


def _permissions(index: int, d: pb.Device) -> str:
    perms = d.permissions or "rwm"  # Docker's default for a device given without any
    if set(perms) - set("rwm"):
        raise InvalidArgument(
            f"devices[{index}].permissions {d.permissions!r} may only hold r, w and m"
        )
    return "".join(c for c in "rwm" if c in perms)


def devices(
    cri_devices: Sequence[pb.Device], privileged: bool, host: HostInfo
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(linux.devices, linux.resources.devices) for the CRI devices."""
    nodes: list[dict[str, Any]] = []
    rules = [{"allow": True, "access": "rwm"}] if privileged else list(DEFAULT_DEVICE_RULES)
    for i, d in enumerate(cri_devices):
        path = d.container_path or d.host_path
        if not path.startswith("/") or not d.host_path.startswith("/"):
            raise InvalidArgument(
                f"devices[{i}]: host_path {d.host_path!r} and container_path {path!r} must be "
                "absolute paths"
            )
        info = _device_info(i, d, host)
        nodes.append(
            {
                "path": path,
                "type": info.kind,
                "major": info.major,
                "minor": info.minor,
                "fileMode": info.mode,
                "uid": info.uid,
                "gid": info.gid,
            }
        )
        if not privileged:
            rules.append(_allow(info.kind, info.major, info.minor, _permissions(i, d)))
    return nodes, rules


# The kernel's (and runc's) accepted ranges: cpu.shares 2..262144, CFS period 1 ms..1 s,
# a quota of at least 1 ms (-1: none). Outside them runc fails after the container exists.
_SHARES = (2, 262144)
_PERIOD = (1000, 1_000_000)
_CPUSET = re.compile(r"[0-9]+(-[0-9]+)?(,[0-9]+(-[0-9]+)?)*")
_PAGE_SIZE = re.compile(r"[0-9]+[KMG]B")


def check_cpu(r: pb.LinuxContainerResources) -> None:
    """InvalidArgument for CPU values the kernel's cgroup files refuse (EINVAL): for a
    container's resources and for a pod's (which podling writes to the pod cgroup)."""
    if r.cpu_shares and not _SHARES[0] <= r.cpu_shares <= _SHARES[1]:
        raise InvalidArgument(f"cpu_shares {r.cpu_shares} is outside {_SHARES[0]}..{_SHARES[1]}")
    if r.cpu_period and not _PERIOD[0] <= r.cpu_period <= _PERIOD[1]:
        raise InvalidArgument(
            f"cpu_period {r.cpu_period} is outside {_PERIOD[0]}..{_PERIOD[1]} microseconds"
        )
    if r.cpu_quota not in (0, -1) and r.cpu_quota < 1000:
        raise InvalidArgument(f"cpu_quota {r.cpu_quota} must be -1 (none) or >= 1000 microseconds")
    for name in ("cpuset_cpus", "cpuset_mems"):
        value = getattr(r, name)
        if value and _CPUSET.fullmatch(value) is None:
            raise InvalidArgument(f"{name} {value!r} is not a CPU/node list such as '0-2,4'")


def _cpu(r: pb.LinuxContainerResources) -> dict[str, Any]:
    check_cpu(r)
    cpu: dict[str, Any] = {}
    if r.cpu_shares:
        cpu["shares"] = r.cpu_shares
    if r.cpu_quota:
        cpu["quota"] = r.cpu_quota
    if r.cpu_period:
        cpu["period"] = r.cpu_period
    if r.cpuset_cpus:
        cpu["cpus"] = r.cpuset_cpus
    if r.cpuset_mems:
        cpu["mems"] = r.cpuset_mems
    return cpu


def _memory(r: pb.LinuxContainerResources, host: HostInfo) -> dict[str, Any]:
    memory: dict[str, Any] = {}
    if r.memory_limit_in_bytes < 0 or r.memory_swap_limit_in_bytes < -1:
        raise InvalidArgument(
            "memory_limit_in_bytes and memory_swap_limit_in_bytes must not be negative"
        )

    _check_swap(r.memory_limit_in_bytes, r.memory_swap_limit_in_bytes)
    if r.memory_limit_in_bytes:
        memory["limit"] = r.memory_limit_in_bytes
        if host.memory_swap:
            memory["swap"] = r.memory_limit_in_bytes
    if r.memory_swap_limit_in_bytes and host.memory_swap:
        memory["swap"] = r.memory_swap_limit_in_bytes
    return memory


def _check_swap(limit: int, swap: int) -> None:
    """The kernel's swap limit counts memory plus swap: it needs a memory limit no larger
    than itself (runc's write of a smaller one fails with EINVAL). -1 means no limit."""
    if swap <= 0:
        return
    if not limit:
        raise InvalidArgument(
            "memory_swap_limit_in_bytes needs memory_limit_in_bytes as well: the swap limit "
            "counts memory plus swap"
        )
    if swap < limit:
        raise InvalidArgument(
            f"memory_swap_limit_in_bytes ({swap}) must be at least memory_limit_in_bytes "
            f"({limit}): it counts memory plus swap"
        )


def _hugepages(r: pb.LinuxContainerResources) -> list[dict[str, Any]]:
    out = []
    for i, h in enumerate(r.hugepage_limits):
        if _PAGE_SIZE.fullmatch(h.page_size) is None:
            raise InvalidArgument(
                f"hugepage_limits[{i}].page_size {h.page_size!r} is not a size such as '2MB'"
            )
        out.append({"pageSize": h.page_size, "limit": h.limit})
    return out


def resources(r: pb.LinuxContainerResources, host: HostInfo, warnings: list[str]) -> dict[str, Any]:
    """linux.resources without devices (see `devices`)."""
    out: dict[str, Any] = {}
    if cpu := _cpu(r):
        out["cpu"] = cpu
    if memory := _memory(r, host):
        out["memory"] = memory
    if hugepages := _hugepages(r):
        out["hugepageLimits"] = hugepages
    if r.unified:
        if host.cgroup2:
            out["unified"] = dict(r.unified)
        else:
            keys = ", ".join(sorted(r.unified))
            warnings.append(f"ignoring cgroup v2 resources ({keys}): this node uses cgroup v1")
    return out


def oom_score_adj(r: pb.LinuxContainerResources, host: HostInfo, warnings: list[str]) -> int:
    """The process' oomScoreAdj: the CRI value, clamped to what the node can set."""
    value = r.oom_score_adj
    if not -1000 <= value <= 1000:
        raise InvalidArgument(f"oom_score_adj {value} is outside -1000..1000")
    if value < host.min_oom_score_adj:
        warnings.append(
            f"oom_score_adj {value} raised to {host.min_oom_score_adj}: this node cannot set "
            "a lower value (podling lacks CAP_SYS_RESOURCE)"
        )
        return host.min_oom_score_adj
    return value
