"""cgroupfs: create, limit, read and remove cgroups by path, on v1 (hybrid) and v2.

A cgroup "path" is what the OCI spec calls cgroupsPath with the cgroupfs driver, e.g.
"/podling/<pod id>": on cgroup v1 it names a directory in every mounted hierarchy, on
v2 one directory in the unified tree. runc creates containers' cgroups itself; podling
creates only pod cgroups (to hold pod-level limits) and reads stats from both.
"""

from __future__ import annotations

import contextlib
import errno
import time
from dataclasses import dataclass
from pathlib import Path

CGROUP_ROOT = Path("/sys/fs/cgroup")


def is_v2(root: Path = CGROUP_ROOT) -> bool:
    return (root / "cgroup.controllers").exists()


def _dirs(path: str, root: Path) -> list[Path]:
    rel = path.strip("/")
    if is_v2(root):
        return [root / rel]
    return [
        h / rel
        for h in sorted(root.iterdir())
        if h.is_dir() and not h.is_symlink() and (h / "cgroup.procs").exists()
    ]


def create(
    path: str,
    *,
    cpu_shares: int = 0,
    cpu_quota: int = 0,
    cpu_period: int = 0,
    memory_limit: int = 0,
    root: Path = CGROUP_ROOT,
) -> None:
    """Create the cgroup in every hierarchy and apply the limits given (0 = unset).
    All or nothing: if a dir or a limit is refused (OSError), the dirs this call made are
    removed again before the error goes up."""
    made = [m for d in _dirs(path, root) for m in _missing(d)]  # deepest first
    try:
        for d in _dirs(path, root):
            d.mkdir(parents=True, exist_ok=True)
        _limit(path, root, cpu_shares, cpu_quota, cpu_period, memory_limit)
    except OSError:
        for d in made:
            with contextlib.suppress(OSError):
                d.rmdir()
        raise


def _missing(d: Path) -> list[Path]:
    """`d` and its ancestors that do not exist yet, deepest first."""
    out = []
    while not d.exists():
        out.append(d)
        d = d.parent
    return out


def _limit(path: str, root: Path, shares: int, quota: int, period: int, memory: int) -> None:
    if is_v2(root):
        return  # pod-level limits on v2 are not needed on our nodes (v1 hybrid)
    limits = {
        ("cpu", "cpu.shares"): shares,
        ("cpu", "cpu.cfs_period_us"): period,
        ("cpu", "cpu.cfs_quota_us"): quota,
        ("memory", "memory.limit_in_bytes"): memory,
    }
    for (controller, name), value in limits.items():
        if value:
            (root / controller / path.strip("/") / name).write_text(str(value))


def remove(path: str, root: Path = CGROUP_ROOT, timeout: float = 5.0) -> None:
    """Remove the cgroup (and empty children) everywhere; EBUSY is retried briefly, since
    a just-killed process can take a moment to leave. Missing dirs are fine."""
    deadline = time.monotonic() + timeout
    for d in _dirs(path, root):
        if not d.exists():
            continue
        for sub in sorted((p for p in d.rglob("*") if p.is_dir()), key=lambda p: -len(p.parts)):
            _rmdir(sub, deadline)
        _rmdir(d, deadline)


def _rmdir(d: Path, deadline: float) -> None:
    while True:
        try:
            d.rmdir()
            return
        except FileNotFoundError:
            return
        except OSError as e:
            if e.errno != errno.EBUSY or time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def exists(path: str, root: Path = CGROUP_ROOT) -> bool:
    return any(d.exists() for d in _dirs(path, root))


@dataclass(frozen=True)
class CgroupStats:
    cpu_usage_ns: int
    memory_usage: int
    memory_working_set: int
    memory_rss: int
    memory_limit: int
    page_faults: int
    major_page_faults: int


def _read_int(p: Path) -> int:
    try:
        return int(p.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 0


def _read_kv(p: Path) -> dict[str, int]:
    out: dict[str, int] = {}
    try:
        for line in p.read_text().splitlines():
            k, _, v = line.partition(" ")
            out[k] = int(v) if v.strip().isdigit() else 0
    except OSError:
        pass
    return out


def stats(path: str, root: Path = CGROUP_ROOT) -> CgroupStats | None:
    """CPU and memory of the cgroup, or None if it does not exist (any more)."""
    rel = path.strip("/")
    if is_v2(root):
        return _stats_v2(root / rel)
    mem = root / "memory" / rel
    if not mem.exists():
        return None
    st = _read_kv(mem / "memory.stat")
    usage = _read_int(mem / "memory.usage_in_bytes")
    # working set as the kubelet computes it: usage minus inactive file cache
    working = max(0, usage - st.get("total_inactive_file", 0))
    return CgroupStats(
        cpu_usage_ns=_read_int(root / "cpuacct" / rel / "cpuacct.usage"),
        memory_usage=usage,
        memory_working_set=working,
        memory_rss=st.get("total_rss", 0),
        memory_limit=_read_int(mem / "memory.limit_in_bytes"),
        page_faults=st.get("total_pgfault", 0),
        major_page_faults=st.get("total_pgmajfault", 0),
    )


def _stats_v2(d: Path) -> CgroupStats | None:
    if not d.exists():
        return None
    st = _read_kv(d / "memory.stat")
    cpu = _read_kv(d / "cpu.stat")
    usage = _read_int(d / "memory.current")
    limit_text = (d / "memory.max").read_text().strip() if (d / "memory.max").exists() else "0"
    return CgroupStats(
        cpu_usage_ns=cpu.get("usage_usec", 0) * 1000,
        memory_usage=usage,
        memory_working_set=max(0, usage - st.get("inactive_file", 0)),
        memory_rss=st.get("anon", 0),
        memory_limit=0 if limit_text == "max" else int(limit_text or 0),
        page_faults=st.get("pgfault", 0),
        major_page_faults=st.get("pgmajfault", 0),
    )


def pids(path: str, root: Path = CGROUP_ROOT) -> list[int]:
    """Processes in the cgroup and its descendants (from the first hierarchy that has it)."""
    for d in _dirs(path, root):
        if (d / "cgroup.procs").exists():
            found: list[int] = []
            for procs in d.rglob("cgroup.procs"):
                try:
                    found.extend(int(x) for x in procs.read_text().split())
                except OSError:
                    continue  # a child cgroup removed meanwhile
            return found
    return []
