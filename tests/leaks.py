"""What a test may leave behind on the machine, snapshotted before and after each test.

Compared: mounts, named network namespaces, podling cgroups, processes of the tools
podling drives, iptables rules and bridges. Anything new after a test is a leak.
"""

from __future__ import annotations

import functools
import os
import re
import subprocess
from pathlib import Path

WATCHED_PROCS = {"conmon", "podlingd", "runc", "crun", "runsc", "docker-registry", "catatonit"}


def mounts(session_tmp: str = "") -> set[str]:
    """Mounts, less those under another pytest session's temp dir (a concurrent run)."""
    lines = Path("/proc/self/mountinfo").read_text().splitlines()
    found = {" ".join(line.split()[3:5]) for line in lines}
    if session_tmp:
        found = {m for m in found if "/pytest-of-" not in m or session_tmp in m}
    return found


def netns() -> set[str]:
    d = Path("/run/netns")
    return {p.name for p in d.iterdir()} if d.is_dir() else set()


def cgroups() -> set[str]:
    found: set[str] = set()
    for base in Path("/sys/fs/cgroup").glob("*/podling*"):
        found.add(str(base))
    for base in Path("/sys/fs/cgroup").glob("podling*"):
        found.add(str(base))
    return found


def processes(session_tmp: str = "") -> set[str]:
    """Processes of the tools podling drives. Those whose command line names another
    pytest session's temporary dir belong to a concurrent test run, not to us."""
    found: set[str] = set()
    for p in Path("/proc").iterdir():
        if not p.name.isdigit():
            continue
        try:
            if (p / "stat").read_text().rsplit(")", 1)[1].split()[0] == "Z":
                continue  # exited, waiting for its parent (often PID 1) to reap it
            comm = (p / "comm").read_text().strip()
            cmdline = (p / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if "/pytest-of-" in cmdline and session_tmp and session_tmp not in cmdline:
            continue
        if comm in WATCHED_PROCS or "podlingd" in cmdline:
            found.add(f"{p.name} {cmdline.strip()[:120]}")
    found.discard(f"{os.getpid()}")
    return found


def _run(cmd: list[str]) -> str:
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=20).stdout
    except (OSError, subprocess.TimeoutExpired):
        return ""


def iptables() -> set[str]:
    out = _run(["iptables-save"]) if os.geteuid() == 0 else ""
    return {line for line in out.splitlines() if line.startswith("-A")}


def bridges() -> set[str]:
    out = _run(["ip", "-o", "link", "show", "type", "bridge"])
    return {line.split(":")[1].strip() for line in out.splitlines() if ":" in line}


def ip_allocations(session_tmp: str) -> set[str]:
    """host-local IPAM reservations (one file per IP) under this session's temp dirs."""
    if not session_tmp:
        return set()
    found: set[str] = set()
    for ipam in Path(session_tmp).glob("**/ipam"):
        for f in ipam.glob("*/*"):
            if f.name[:1].isdigit() or ":" in f.name:
                found.add(str(f))
    return found


def snapshot(session_tmp: str = "") -> dict[str, set[str]]:
    return {
        "IP allocations": ip_allocations(session_tmp),
        "mounts": mounts(session_tmp),
        "network namespaces": netns(),
        "cgroups": cgroups(),
        "processes": processes(session_tmp),
        "iptables rules": iptables(),
        "bridges": bridges(),
    }


def leaked(
    before: dict[str, set[str]], after: dict[str, set[str]], own_module: Path | None = None
) -> list[str]:
    """What `after` has that `before` had not, by kind. With `own_module`, bridges,
    podling-<bridge> cgroups and iptables rules that belong to another test module (its
    bridge name or subnet is a literal in another file under tests/, not in this one) are
    left out: those come from another test session running at the same time."""
    found = {kind: after[kind] - before[kind] for kind in before}
    if own_module is not None and any(found.values()):
        others = _other_modules_names(own_module)
        found = {
            kind: {x for x in items if not _foreign(kind, x, others)}
            for kind, items in found.items()
        }
    return [f"{kind}: {sorted(items)}" for kind, items in found.items() if items]


_LITERAL = re.compile(r'"(pl[a-z0-9]+|\d+\.\d+\.\d+)\.0/2[0-4]"|"(pl[a-z0-9]+)"')


def _names_in(path: Path) -> set[str]:
    found = set()
    for m in _LITERAL.finditer(path.read_text(errors="replace")):
        found.add(m.group(1) or m.group(2))
    return found


@functools.cache
def _other_modules_names(own: Path) -> set[str]:
    """Bridge names ("pl...") and /2x subnet prefixes ("10.93.7") named by other files."""
    tests = Path(__file__).parent
    mine = _names_in(own)
    others: set[str] = set()
    for f in tests.glob("**/*.py"):
        if f != own:
            others |= _names_in(f)
    return others - mine


def _foreign(kind: str, item: str, others: set[str]) -> bool:
    if kind == "bridges":
        return item in others
    if kind == "cgroups":
        return Path(item).name.removeprefix("podling-") in others
    if kind == "processes":
        return _in_foreign_cgroup(item.split(" ", 1)[0], others)
    if kind == "iptables rules":
        return any(re.search(rf"\b{re.escape(p)}\.\d", item) for p in others if p[0].isdigit())
    return False


def _in_foreign_cgroup(pid: str, others: set[str]) -> bool:
    """A pod process of another module's daemon: its cgroup is under podling-<bridge>."""
    try:
        text = Path(f"/proc/{pid}/cgroup").read_text()
    except OSError:
        return False
    parts = set(re.findall(r"/podling-(pl[a-z0-9]+)", text))
    return bool(parts) and parts <= others
