"""Remove everything a bench run may leave behind, even after the harness crashed.

Everything the bench creates is findable without its memory: processes name BASE on
their command line (daemons, conmon, shims, runc, the registry) or live in the bench's
cgroups (containers, pause); mounts are under BASE; bridges, networks and cgroups have
fixed names (settings.NETS). Host dirs that containerd creates outside its root
(/run/containerd for shim sockets, /var/lib/cni for libcni's cache) are removed only when
they did not exist before the run (recorded in BASE/host-dirs).
"""

from __future__ import annotations

import os
import shlex
import shutil
import signal
import subprocess
import time
from pathlib import Path

from bench.procs import cgroup_dirs, cgroup_pids, processes
from bench.settings import BASE, NETS

HOST_DIRS = (Path("/run/containerd"), Path("/var/lib/cni"))


def note_host_dirs(base: Path = BASE) -> None:
    """Record which of HOST_DIRS are absent now, so a sweep may remove them later."""
    absent = [str(d) for d in HOST_DIRS if not d.exists()]
    (base / "host-dirs").write_text("\n".join(absent))


def sweep(base: Path = BASE) -> list[str]:
    """Kill, unmount, delete; returns what was found and removed (for the log)."""
    done: list[str] = []
    done += _kill_all(base)
    done += _unmount_all(base)
    done += _iptables()
    done += _bridges()
    done += _cgroups()
    done += _host_dirs(base)
    if base.exists():
        if _mounts_under(base):
            raise RuntimeError(f"mounts remain under {base}; not removing it: unmount by hand")
        shutil.rmtree(base)
        done.append(f"removed {base}")
    return done


def _ours(base: Path) -> set[int]:
    me = os.getpid()
    pids = {p.pid for p in processes() if str(base) in p.cmdline and p.pid != me}
    for net in NETS.values():
        pids |= cgroup_pids(net.cgroup_root)
    return pids - {me}


def _kill_all(base: Path) -> list[str]:
    killed: set[int] = set()
    deadline = time.monotonic() + 15
    while (pids := _ours(base)) and time.monotonic() < deadline:
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
                killed.add(pid)
            except ProcessLookupError:
                pass
        time.sleep(0.2)
    if pids:
        raise RuntimeError(f"processes {sorted(pids)} survive SIGKILL; check them by hand")
    return [f"killed {len(killed)} processes"] if killed else []


def _mounts_under(base: Path) -> list[str]:
    prefix = str(base) + "/"
    points = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        point = line.split()[4].replace("\\040", " ")
        if point.startswith(prefix) or point == str(base):
            points.append(point)
    return points


def _unmount_all(base: Path) -> list[str]:
    count = 0
    for _ in range(10):  # stacked mounts need several passes
        points = _mounts_under(base)
        if not points:
            break
        for point in sorted(set(points), key=len, reverse=True):
            subprocess.run(["umount", "-l", point], capture_output=True, check=False)
            count += 1
    return [f"unmounted {count} mounts"] if count else []


def _iptables() -> list[str]:
    """Delete rules naming a bench network or subnet, then the chains they jumped to."""
    removed = 0
    for table in ("nat", "filter"):
        out = subprocess.run(["iptables", "-t", table, "-S"], capture_output=True, text=True)
        chains: set[str] = set()
        for line in out.stdout.splitlines():
            ours = any(n.name in line or f" {n.subnet} " in line for n in NETS.values())
            if line.startswith("-A") and ours:
                args = shlex.split(line)
                if "-j" in args:
                    chains.add(args[args.index("-j") + 1])
                subprocess.run(["iptables", "-t", table, "-D", *args[1:]], check=False)
                removed += 1
        for chain in chains - {"ACCEPT", "DROP", "MASQUERADE", "RETURN"}:
            subprocess.run(["iptables", "-t", table, "-F", chain], capture_output=True)
            subprocess.run(["iptables", "-t", table, "-X", chain], capture_output=True)
    return [f"deleted {removed} iptables rules"] if removed else []


def _bridges() -> list[str]:
    done = []
    for net in NETS.values():
        if Path(f"/sys/class/net/{net.bridge}").exists():
            subprocess.run(["ip", "link", "del", net.bridge], check=False)
            done.append(f"deleted bridge {net.bridge}")
    return done


def _cgroups() -> list[str]:
    left: list[Path] = []
    removed = 0
    for _ in range(20):
        left = []
        for net in NETS.values():
            for d in cgroup_dirs(net.cgroup_root):
                try:
                    d.rmdir()
                    removed += 1
                except OSError:
                    left.append(d)
        if not left:
            return [f"removed {removed} cgroups"] if removed else []
        time.sleep(0.25)
    raise RuntimeError(f"cgroups {left[:3]}... cannot be removed; check for processes in them")


def _host_dirs(base: Path) -> list[str]:
    record = base / "host-dirs"
    if not record.exists():
        return []
    done = []
    for line in record.read_text().splitlines():
        path = Path(line)
        if line and path in HOST_DIRS and path.exists():
            shutil.rmtree(path)
            done.append(f"removed {path}")
    return done
