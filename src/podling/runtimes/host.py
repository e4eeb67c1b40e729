"""What this node can give a container, read once at start (see spec_types.HostInfo)."""

from __future__ import annotations

from pathlib import Path

from podling.oslib import cgroups
from podling.runtimes.spec_security import ALL_CAPABILITIES
from podling.runtimes.spec_types import HostInfo


def own_capabilities(status: Path = Path("/proc/self/status")) -> frozenset[str]:
    """The capabilities this process holds (CapEff), by name: a container cannot get more;
    root here lacks CAP_SYS_RESOURCE, for one."""
    line = next(x for x in status.read_text().splitlines() if x.startswith("CapEff:"))
    mask = int(line.split()[1], 16)
    return frozenset(name for i, name in enumerate(ALL_CAPABILITIES) if mask >> i & 1)


def host_info(seccomp_profile_root: Path | None = None) -> HostInfo:
    """This node's HostInfo; `seccomp_profile_root` is the configured directory of
    relative seccomp Localhost profiles (None: only absolute refs are accepted)."""
    v2 = cgroups.is_v2()
    swap = v2 or (cgroups.CGROUP_ROOT / "memory" / "memory.memsw.limit_in_bytes").exists()
    return HostInfo(
        capabilities=own_capabilities(),
        cgroup2=v2,
        memory_swap=swap,
        seccomp_profile_root=seccomp_profile_root,
    )
