"""Capabilities, masked/read-only paths, seccomp and AppArmor of a container.

Capabilities (names with or without "CAP_", any case): start from Docker's and
containerd's default set (or every capability when privileged or when "ALL" is added),
drop the CRI drops ("ALL" drops everything), then add the CRI adds: an individual add
wins over a drop of the same capability. Bounding = effective = permitted = that set;
inheritable is empty (CVE-2022-24769) except for ambient capabilities, which the kernel
needs in every set. The node's own capabilities (HostInfo.capabilities) cap the result:
the defaults, "ALL" and privileged are trimmed to them, an explicit add of one the node
lacks is a FailedPrecondition (runc would fail later with EPERM).

Seccomp: Unconfined or unset means none; RuntimeDefault is seccomp_default's profile;
Localhost loads the JSON profile at localhost_ref: an absolute path as given, a relative
one under HostInfo.seccomp_profile_root ([runtime] seccomp_profile_root) and never
outside it. A privileged container gets no
seccomp unless a Localhost profile is asked for explicitly (CRI: "seccomp restrictions
are not applied" to privileged containers; the kubelet sends RuntimeDefault by default).
The deprecated string fields (seccomp_profile_path, apparmor_profile) are honoured when
the message fields are unset.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cri_api.v1 import api_pb2 as pb

from podling.errors import FailedPrecondition, InvalidArgument
from podling.runtimes.seccomp_default import default_profile
from podling.runtimes.seccomp_docker import from_docker_format
from podling.runtimes.spec_types import HostInfo

# In kernel order (the number is the index): the order the spec lists them in.
ALL_CAPABILITIES = [
    "CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_DAC_READ_SEARCH", "CAP_FOWNER", "CAP_FSETID",
    "CAP_KILL", "CAP_SETGID", "CAP_SETUID", "CAP_SETPCAP", "CAP_LINUX_IMMUTABLE",
    "CAP_NET_BIND_SERVICE", "CAP_NET_BROADCAST", "CAP_NET_ADMIN", "CAP_NET_RAW",
    "CAP_IPC_LOCK", "CAP_IPC_OWNER", "CAP_SYS_MODULE", "CAP_SYS_RAWIO", "CAP_SYS_CHROOT",
    "CAP_SYS_PTRACE", "CAP_SYS_PACCT", "CAP_SYS_ADMIN", "CAP_SYS_BOOT", "CAP_SYS_NICE",
    "CAP_SYS_RESOURCE", "CAP_SYS_TIME", "CAP_SYS_TTY_CONFIG", "CAP_MKNOD", "CAP_LEASE",
    "CAP_AUDIT_WRITE", "CAP_AUDIT_CONTROL", "CAP_SETFCAP", "CAP_MAC_OVERRIDE",
    "CAP_MAC_ADMIN", "CAP_SYSLOG", "CAP_WAKE_ALARM", "CAP_BLOCK_SUSPEND", "CAP_AUDIT_READ",
    "CAP_PERFMON", "CAP_BPF", "CAP_CHECKPOINT_RESTORE",
]  # fmt: skip

DEFAULT_CAPABILITIES = frozenset(
    {
        "CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_FSETID", "CAP_FOWNER", "CAP_MKNOD",
        "CAP_NET_RAW", "CAP_SETGID", "CAP_SETUID", "CAP_SETFCAP", "CAP_SETPCAP",
        "CAP_NET_BIND_SERVICE", "CAP_SYS_CHROOT", "CAP_KILL", "CAP_AUDIT_WRITE",
    }
)  # fmt: skip

# What the kubelet sends by default (procMount: Default), used when it sends nothing.
DEFAULT_MASKED_PATHS = [
    "/proc/asound", "/proc/acpi", "/proc/kcore", "/proc/keys", "/proc/latency_stats",
    "/proc/timer_list", "/proc/timer_stats", "/proc/sched_debug", "/proc/scsi",
    "/sys/firmware", "/sys/devices/virtual/powercap",
]  # fmt: skip
DEFAULT_READONLY_PATHS = ["/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"]


def cap_name(raw: str, field: str) -> str:
    """ "net_admin" / "CAP_NET_ADMIN" → "CAP_NET_ADMIN"; InvalidArgument if unknown."""
    name = raw.strip().upper()
    name = name if name.startswith("CAP_") else "CAP_" + name
    if name not in ALL_CAPABILITIES:
        raise InvalidArgument(f"{field}: unknown capability {raw!r}")
    return name


def _names(values: Any, field: str) -> tuple[bool, set[str]]:
    """(whether "ALL" is listed, the other capabilities)."""
    listed = [v for v in values if v.strip().upper() not in ("ALL", "CAP_ALL")]
    return len(listed) != len(values), {cap_name(v, field) for v in listed}


@dataclass(frozen=True)
class CapabilitySets:
    caps: list[str]
    ambient: list[str]

    def spec(self) -> dict[str, list[str]]:
        return {
            "bounding": list(self.caps),
            "effective": list(self.caps),
            "permitted": list(self.caps),
            "inheritable": list(self.ambient),
            "ambient": list(self.ambient),
        }


def capabilities(sc: pb.LinuxContainerSecurityContext, host: HostInfo) -> CapabilitySets:
    """The container's capability sets; see the module doc for the rules."""
    available = host.capabilities if host.capabilities is not None else set(ALL_CAPABILITIES)
    c = sc.capabilities
    add_all, add = _names(c.add_capabilities, "capabilities.add_capabilities")
    drop_all, drop = _names(c.drop_capabilities, "capabilities.drop_capabilities")
    _, ambient = _names(c.add_ambient_capabilities, "capabilities.add_ambient_capabilities")
    if sc.privileged:
        result = set(ALL_CAPABILITIES)  # CRI: "All capabilities are added."
    else:
        result = set(ALL_CAPABILITIES) if add_all else set(DEFAULT_CAPABILITIES)
        result = set() if drop_all else result - drop
    missing = sorted((add | ambient) - available)
    if missing:
        raise FailedPrecondition(
            f"capabilities {', '.join(missing)} are not available on this node (podling "
            "itself does not hold them); remove them from the container's securityContext"
        )
    result = (result | add | ambient) & available
    ordered = [n for n in ALL_CAPABILITIES if n in result]
    return CapabilitySets(ordered, [n for n in ALL_CAPABILITIES if n in ambient])


def masked_paths(sc: pb.LinuxContainerSecurityContext) -> tuple[list[str], list[str]]:
    """(linux.maskedPaths, linux.readonlyPaths): none when privileged, the CRI's when
    given (the kubelet sends the defaults), else the defaults."""
    if sc.privileged:
        return [], []
    masked = list(sc.masked_paths) or list(DEFAULT_MASKED_PATHS)
    readonly = list(sc.readonly_paths) or list(DEFAULT_READONLY_PATHS)
    return masked, readonly


def _legacy_profile(value: str, field: str) -> pb.SecurityProfile | None:
    """A deprecated profile string as a SecurityProfile; None for unset/unconfined."""
    if value in ("", "unconfined"):
        return None
    if value in ("runtime/default", "docker/default"):
        return pb.SecurityProfile(profile_type=pb.SecurityProfile.RuntimeDefault)
    if value.startswith("localhost/"):
        return pb.SecurityProfile(
            profile_type=pb.SecurityProfile.Localhost, localhost_ref=value[len("localhost/") :]
        )
    raise InvalidArgument(f"{field} {value!r} is not runtime/default, unconfined or localhost/…")


def _profile(sc: pb.LinuxContainerSecurityContext, kind: str) -> pb.SecurityProfile | None:
    if sc.HasField(kind):  # type: ignore[arg-type]
        prof: pb.SecurityProfile = getattr(sc, kind)
        return None if prof.profile_type == pb.SecurityProfile.Unconfined else prof
    legacy = "seccomp_profile_path" if kind == "seccomp" else "apparmor_profile"
    return _legacy_profile(getattr(sc, legacy), legacy)


ROOT_KEY = "[runtime] seccomp_profile_root"


def localhost_path(ref: str, root: Path | None) -> Path:
    """The file of seccomp Localhost profile `ref`: an absolute ref as given (the kubelet
    sends its own root joined already), a relative one under `root`, symlinks resolved.
    InvalidArgument if a relative ref escapes `root` (by "..", or a symlink pointing out)
    or no root is configured."""
    if not ref:
        raise InvalidArgument("seccomp profile type Localhost needs a localhost_ref")
    if os.path.isabs(ref):
        return Path(ref)
    if root is None:
        raise InvalidArgument(
            f"seccomp localhost_ref {ref!r} is relative but no {ROOT_KEY} is configured; "
            "give an absolute path or set the key"
        )
    real_root = os.path.realpath(root)
    real = os.path.realpath(os.path.join(real_root, ref))
    if os.path.commonpath([real, real_root]) != real_root or real == real_root:
        raise InvalidArgument(
            f"seccomp localhost_ref {ref!r} leaves the profile root {root} ({ROOT_KEY}); "
            "name a profile file inside that directory"
        )
    return Path(real)


def _load_localhost(ref: str, root: Path | None) -> dict[str, Any]:
    path = localhost_path(ref, root)
    try:
        text = path.read_text()
    except FileNotFoundError as e:
        raise InvalidArgument(
            f"seccomp profile {path} does not exist on this node (localhost_ref {ref!r}); "
            "install it there or fix the container's seccompProfile"
        ) from e
    except OSError as e:
        raise InvalidArgument(f"seccomp profile {path} cannot be read: {e}") from e
    try:
        data = json.loads(text)
    except ValueError as e:
        raise InvalidArgument(f"seccomp profile {path} is not valid JSON: {e}") from e
    if not isinstance(data, dict):
        raise InvalidArgument(f"seccomp profile {path} must hold a JSON object")
    return data


def seccomp(
    sc: pb.LinuxContainerSecurityContext, caps: list[str], host: HostInfo
) -> dict[str, Any] | None:
    """linux.seccomp, or None for no filter."""
    prof = _profile(sc, "seccomp")
    if prof is None:
        return None
    if prof.profile_type == pb.SecurityProfile.Localhost:
        ref = prof.localhost_ref
        profile = _load_localhost(ref, host.seccomp_profile_root)
        return from_docker_format(profile, caps, host.machine, ref)
    if sc.privileged:
        return None
    return default_profile(caps, host.machine)


def apparmor(sc: pb.LinuxContainerSecurityContext, host: HostInfo, warnings: list[str]) -> str:
    """process.apparmorProfile, or "" for none."""
    prof = _profile(sc, "apparmor")
    if prof is None or (sc.privileged and prof.profile_type != pb.SecurityProfile.Localhost):
        return ""
    if prof.profile_type == pb.SecurityProfile.Localhost:
        if not host.apparmor:
            raise FailedPrecondition(
                f"AppArmor is not enabled on this node; cannot apply profile {prof.localhost_ref!r}"
            )
        if not prof.localhost_ref:
            raise InvalidArgument("apparmor profile type Localhost needs a localhost_ref")
        return prof.localhost_ref
    if host.apparmor:
        warnings.append("podling loads no default AppArmor profile: the container runs unconfined")
    return ""
