"""The crash-consistency harness's view of what a daemon leaves on the machine and in its
dirs (its footprint), the integrity of its stores, and an emergency cleanup for when it
cannot come back.

Only this harness's own resources are looked at: its bridge's subnet, its cgroup parent,
mounts and processes under its temporary dir.
"""

from __future__ import annotations

import contextlib
import os
import shlex
import signal
import sqlite3
import subprocess
import time
from pathlib import Path

from tests import leaks
from tests.support.daemon import Daemon

NET_PREFIX = "10.93.11."
CGROUP_PARENT = "podling-plcrash0"


def _iptables_mine() -> set[str]:
    rules = leaks.iptables()
    chains = {r.split(" -j ")[1].split()[0] for r in rules if NET_PREFIX in r and " -j " in r} - {
        "ACCEPT",
        "DROP",
        "RETURN",
        "MASQUERADE",
        "DNAT",
        "SNAT",
        "MARK",
    }
    return {r for r in rules if NET_PREFIX in r or r.split()[1] in chains}


def _cgroups() -> set[str]:
    found: set[str] = set()
    seen: set[str] = set()
    for h in sorted(Path("/sys/fs/cgroup").iterdir()):
        top = h / CGROUP_PARENT
        real = os.path.realpath(h)
        if real in seen or not top.is_dir():
            continue
        seen.add(real)
        for dirpath, _dirs, _files in os.walk(top):
            found.add(f"{h.name}:{os.path.relpath(dirpath, h)}")
    return found


def _cgroup_procs() -> set[str]:
    found: set[str] = set()
    top = Path("/sys/fs/cgroup/pids") / CGROUP_PARENT
    for procs in top.glob("**/cgroup.procs"):
        for pid in procs.read_text().split():
            try:
                comm = Path(f"/proc/{pid}/comm").read_text().strip()
            except OSError:
                continue
            found.add(f"{pid} {comm}")
    return found


def _files(d: Path, pattern: str = "*") -> set[str]:
    return {str(p.relative_to(d)) for p in d.glob(pattern)} if d.is_dir() else set()


def snapshots(root: Path) -> set[str]:
    """Snapshot rows (key kind) and numbered dirs that have no row."""
    snaps = root / "snapshots"
    with sqlite3.connect(f"file:{snaps / 'metadata.db'}?mode=ro", uri=True) as db:
        rows = db.execute("SELECT id, key, kind FROM snapshots").fetchall()
    found = {f"{key} {kind}" for _id, key, kind in rows}
    ids = {str(r[0]) for r in rows}
    found |= {f"dir {p.name} (no row)" for p in snaps.iterdir() if p.name.isdigit()} - {
        f"dir {i} (no row)" for i in ids
    }
    return found


def footprint(d: Daemon) -> dict[str, set[str]]:
    """What this daemon has made on the machine and in its dirs (not the daemon itself)."""
    base = str(d.base)
    own = f"{d.proc.pid} " if d.proc is not None else "-"
    return {
        "mounts": {m for m in leaks.mounts() if base in m},
        "processes": {p for p in leaks.processes() if base in p and not p.startswith(own)}
        | _cgroup_procs(),
        "cgroups": _cgroups(),
        "iptables rules": _iptables_mine(),
        "IP allocations": {
            f for f in _files(d.state / "cni" / "ipam", "*/*") if f[-1:].isdigit() or ":" in f
        }
        - {f for f in _files(d.state / "cni" / "ipam", "*/*") if "last_reserved" in f},
        "CNI cache": _files(d.state / "cni" / "cache", "**/*"),
        "bundles": _files(d.state / "containers"),
        "pod dirs": _files(d.state / "pods"),
        "exit files": _files(d.state / "exits"),
        "snapshots": snapshots(d.root),
    }


def diff(before: dict[str, set[str]], after: dict[str, set[str]]) -> list[str]:
    return [f"{k}: {sorted(after[k] - before[k])}" for k in after if after[k] - before[k]]


def store_problems(root: Path) -> list[str]:
    """The metadata store's integrity: SQLite's own check, foreign keys, no half-made
    record, and every reference between pods, containers, images, snapshots and blobs."""
    with sqlite3.connect(f"file:{root / 'metadata.db'}?mode=ro", uri=True) as db:
        bad = [r[0] for r in db.execute("PRAGMA integrity_check") if r[0] != "ok"]
        bad += [f"foreign key: {r}" for r in db.execute("PRAGMA foreign_key_check")]
        for table in ("pods", "containers"):
            rows = db.execute(f"SELECT id FROM {table} WHERE state = 'creating'").fetchall()
            bad += [f"{table} {r[0][:12]} left 'creating'" for r in rows]
        cts = db.execute(
            "SELECT id, json_extract(doc, '$.image_id'), "
            "json_extract(doc, '$.snapshot') FROM containers"
        ).fetchall()
        images = {r[0] for r in db.execute("SELECT id FROM images")}
        layers = db.execute("SELECT image_id, chain_id FROM image_layers").fetchall()
        blobs = db.execute("SELECT image_id, digest FROM image_blobs").fetchall()
    snaps = {s.rsplit(" ", 1)[0]: s.rsplit(" ", 1)[1] for s in snapshots(root) if " " in s}
    for cid, image_id, snap in cts:
        if image_id not in images:
            bad.append(f"container {cid[:12]} names missing image {image_id}")
        if snaps.get(snap) != "active":
            bad.append(f"container {cid[:12]} has no writable snapshot {snap}")
    for image_id, chain in layers:
        if snaps.get(chain) != "committed":
            bad.append(f"image {image_id[:19]} layer {chain[:19]} has no snapshot")
    for image_id, digest in blobs:
        if not (root / "content" / "blobs" / "sha256" / digest.removeprefix("sha256:")).exists():
            bad.append(f"image {image_id[:19]} blob {digest[:19]} is missing")
    return bad


def emergency_cleanup(d: Daemon) -> None:
    """When the daemon cannot come back: remove by hand what it made (this harness's
    cgroup parent, mounts under its dir, rules on its subnet), so no test run leaks."""
    for proc in _cgroup_procs():
        os.kill(int(proc.split()[0]), signal.SIGKILL)
    time.sleep(0.5)
    for m in sorted(leaks.mounts(), key=len, reverse=True):
        point = m.split()[1] if " " in m else m
        if str(d.base) in point:
            subprocess.run(["umount", "-l", point], check=False, capture_output=True)
    out = subprocess.run(["iptables-save", "-t", "nat"], capture_output=True, text=True).stdout
    chains = set()
    for rule in out.splitlines():
        if NET_PREFIX in rule and rule.startswith("-A "):
            args = shlex.split(rule)
            subprocess.run(["iptables", "-t", "nat", "-D", *args[1:]], check=False)
            chains |= {args[1]} if args[1].startswith("CNI-") else set()
    for chain in chains:
        subprocess.run(["iptables", "-t", "nat", "-F", chain], check=False)
        subprocess.run(["iptables", "-t", "nat", "-X", chain], check=False)
    for cg in sorted(_cgroups(), key=len, reverse=True):
        hierarchy, rel = cg.split(":", 1)
        with contextlib.suppress(OSError):
            os.rmdir(Path("/sys/fs/cgroup") / hierarchy / rel)
