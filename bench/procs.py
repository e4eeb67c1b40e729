"""Reading processes from /proc: command lines, RSS, PSS, CPU time, cgroup members."""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

CGROUP_FS = Path("/sys/fs/cgroup")
_TICKS = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class Proc:
    pid: int
    ppid: int
    comm: str
    cmdline: str


def processes() -> Iterator[Proc]:
    """Every live (non-zombie) process; those that vanish while read are skipped."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            raw = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        comm = stat[stat.index("(") + 1 : stat.rindex(")")]
        fields = stat[stat.rindex(")") + 2 :].split()
        if fields[0] == "Z":
            continue
        cmd = raw.replace(b"\0", b" ").decode(errors="replace").strip()
        yield Proc(int(entry.name), int(fields[1]), comm, cmd)


def _status_kb(pid: int, path: str, key: str) -> int:
    for line in Path(f"/proc/{pid}/{path}").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    return 0


def rss_mb(pid: int) -> float:
    """Resident set size of one process, MB."""
    return _status_kb(pid, "status", "VmRSS") / 1024


def pss_mb(pid: int) -> float:
    """Proportional set size (shared pages divided among their users), MB."""
    try:
        return _status_kb(pid, "smaps_rollup", "Pss") / 1024
    except OSError:
        return 0.0


def cpu_seconds(pid: int) -> float:
    """User + system CPU of the process and of its children it has waited for."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2 :].split()
    return sum(int(f) for f in fields[11:15]) / _TICKS


def cgroup_dirs(top: str) -> list[Path]:
    """`top` and everything below it in every v1 hierarchy (and the unified one),
    deepest first so they can be removed in order."""
    found: list[Path] = []
    for hierarchy in CGROUP_FS.iterdir():
        root = hierarchy / top
        if root.is_dir():
            found.extend(Path(d) for d, _, _ in os.walk(root))
    return sorted(found, key=lambda p: len(p.parts), reverse=True)


def cgroup_pids(top: str) -> set[int]:
    pids: set[int] = set()
    for d in cgroup_dirs(top):
        try:
            pids.update(int(x) for x in (d / "cgroup.procs").read_text().split())
        except OSError:
            continue
    return pids
