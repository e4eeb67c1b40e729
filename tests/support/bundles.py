"""Minimal OCI bundles for driving runc/conmon directly in tests (no podling spec code).

    bundle = make_bundle(tmp_path / "b", ["sh", "-c", "exit 3"], cgroup=f"/{CGROUP_PARENT}/{cid}")

The rootfs is /usr/bin/busybox plus applet symlinks; config.json is the smallest spec
runc 1.1.5 accepts with pid/ipc/uts/mount/network namespaces and the usual mounts.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

BUSYBOX = Path("/usr/bin/busybox")
APPLETS = ("sh", "echo", "cat", "sleep", "ls", "id", "true", "false", "printf", "head", "tr")
CGROUP_PARENT = "podling-ct-test"
CGROUP_ROOT = Path("/sys/fs/cgroup")
NAMESPACES = ("pid", "ipc", "uts", "mount", "network")


def new_cid() -> str:
    return f"ctest-{secrets.token_hex(6)}"


def make_rootfs(rootfs: Path) -> None:
    (rootfs / "bin").mkdir(parents=True)
    shutil.copy2(BUSYBOX, rootfs / "bin" / "busybox")
    for applet in APPLETS:
        os.symlink("busybox", rootfs / "bin" / applet)
    for d in ("proc", "dev", "sys", "tmp", "etc", "root"):
        (rootfs / d).mkdir(exist_ok=True)


def _mounts() -> list[dict[str, Any]]:
    return [
        {"destination": "/proc", "type": "proc", "source": "proc"},
        {
            "destination": "/dev",
            "type": "tmpfs",
            "source": "tmpfs",
            "options": ["nosuid", "strictatime", "mode=755", "size=65536k"],
        },
        {
            "destination": "/dev/pts",
            "type": "devpts",
            "source": "devpts",
            "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620"],
        },
        {
            "destination": "/sys",
            "type": "sysfs",
            "source": "sysfs",
            "options": ["nosuid", "noexec", "nodev", "ro"],
        },
    ]


def process(args: Sequence[str], *, terminal: bool = False) -> dict[str, Any]:
    """An OCI `process` object (also what exec_sync takes)."""
    return {
        "terminal": terminal,
        "user": {"uid": 0, "gid": 0},
        "args": list(args),
        "env": ["PATH=/bin", "HOME=/root"],
        "cwd": "/",
        "noNewPrivileges": True,
    }


def config(
    args: Sequence[str],
    *,
    cgroup: str,
    terminal: bool = False,
    memory_limit: int | None = None,
    namespaces: Sequence[str] = NAMESPACES,
) -> dict[str, Any]:
    resources: dict[str, Any] = {"devices": [{"allow": False, "access": "rwm"}]}
    if memory_limit is not None:
        # swap equal to the limit: no swap, so the limit is really hit
        resources["memory"] = {"limit": memory_limit, "swap": memory_limit}
    return {
        "ociVersion": "1.0.2",
        "process": process(args, terminal=terminal),
        "root": {"path": "rootfs", "readonly": False},
        "hostname": "ctest",
        "mounts": _mounts(),
        "linux": {
            "namespaces": [{"type": t} for t in namespaces],
            "cgroupsPath": cgroup,
            "resources": resources,
        },
    }


def make_bundle(
    bundle: Path,
    args: Sequence[str],
    *,
    cgroup: str,
    terminal: bool = False,
    memory_limit: int | None = None,
    namespaces: Sequence[str] = NAMESPACES,
) -> Path:
    """Create BUNDLE/rootfs and BUNDLE/config.json; returns the bundle path."""
    make_rootfs(bundle / "rootfs")
    spec = config(
        args, cgroup=cgroup, terminal=terminal, memory_limit=memory_limit, namespaces=namespaces
    )
    (bundle / "config.json").write_text(json.dumps(spec, indent=1))
    return bundle


def cgroup_dirs(name: str = CGROUP_PARENT) -> list[Path]:
    """Every hierarchy's directory for `name` (a path relative to each hierarchy)."""
    return [h / name for h in CGROUP_ROOT.iterdir() if (h / name).is_dir()]


def remove_cgroup_tree(name: str = CGROUP_PARENT) -> None:
    """rmdir `name` and its children (deepest first) in every hierarchy; only empty
    cgroups can be removed, so a live container makes this raise."""
    for top in cgroup_dirs(name):
        for sub in sorted((p for p in top.rglob("*") if p.is_dir()), key=lambda p: -len(p.parts)):
            sub.rmdir()
        top.rmdir()
