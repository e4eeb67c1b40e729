"""Checks of the kernel and host: overlayfs, cgroup controllers, forwarding and bridge
netfilter for CNI, free disk space for podling's dirs."""

from __future__ import annotations

from pathlib import Path

from podling.config import Config
from podling.doctor.model import Finding, Host, Level, ok, read_text

GIB = 1 << 30
WARN_FREE = 5 * GIB
ERROR_FREE = 1 * GIB
CONTROLLERS = ("cpu", "memory", "pids")


def check_overlayfs(host: Host, cfg: Config) -> list[Finding]:
    text = read_text(host.proc / "filesystems") or ""
    if any(line.split()[-1:] == ["overlay"] for line in text.splitlines()):
        return [ok("overlayfs", "overlayfs is available")]
    return [
        Finding(
            "warning",
            "overlayfs",
            "overlayfs is not in /proc/filesystems",
            why="podling mounts image layers with overlayfs; without it every container "
            "gets a full copy of its image (the native snapshotter): slow starts, much disk",
            fix="`modprobe overlay` and add `overlay` to /etc/modules-load.d/podling.conf",
        )
    ]


def check_cgroup_controllers(host: Host, cfg: Config) -> list[Finding]:
    """memory, cpu and pids must be usable: in cgroup.controllers on v2, mounted
    hierarchies on v1."""
    root = host.cgroup_root
    if (root / "cgroup.controllers").exists():
        have = set((read_text(root / "cgroup.controllers") or "").split())
    else:
        have = {c for c in CONTROLLERS if (root / c / "cgroup.procs").exists()}
    missing = [c for c in CONTROLLERS if c not in have]
    if not missing:
        return [ok("cgroup-controllers", f"cgroup controllers {', '.join(CONTROLLERS)} usable")]
    return [
        Finding(
            "error",
            "cgroup-controllers",
            f"cgroup controllers not available under {root}: {', '.join(missing)}",
            why="pod and container limits (memory, CPU, process count) cannot be enforced "
            "and the kubelet refuses to run pods without them",
            fix="enable them on the kernel command line (e.g. `cgroup_enable=memory`) or "
            f"mount the missing hierarchies under {root}, then reboot",
        )
    ]


def check_ip_forward(host: Host, cfg: Config) -> list[Finding]:
    value = (read_text(host.proc / "sys/net/ipv4/ip_forward") or "").strip()
    if value == "1":
        return [ok("ip-forward", "net.ipv4.ip_forward = 1")]
    return [
        Finding(
            "warning",
            "ip-forward",
            f"net.ipv4.ip_forward is {value or 'unknown'}, not 1",
            why="pod traffic to other nodes and to the outside is routed by the host; "
            "CNI plugins other than bridge with isGateway do not turn forwarding on",
            fix="`sysctl -w net.ipv4.ip_forward=1` and add `net.ipv4.ip_forward = 1` to "
            "/etc/sysctl.d/99-kubernetes.conf",
        )
    ]


def check_bridge_netfilter(host: Host, cfg: Config) -> list[Finding]:
    knob = host.proc / "sys/net/bridge/bridge-nf-call-iptables"
    value = read_text(knob)
    why = (
        "traffic between pods on the same bridge skips iptables: Service (ClusterIP) "
        "rules of kube-proxy and network policies do not apply to it"
    )
    if value is None:
        return [
            Finding(
                "error",
                "bridge-netfilter",
                "br_netfilter is not loaded (no net.bridge.bridge-nf-call-iptables)",
                why=why,
                fix="`modprobe br_netfilter` and add `br_netfilter` to "
                "/etc/modules-load.d/podling.conf",
            )
        ]
    if value.strip() != "1":
        return [
            Finding(
                "warning",
                "bridge-netfilter",
                f"net.bridge.bridge-nf-call-iptables is {value.strip()}, not 1",
                why=why,
                fix="`sysctl -w net.bridge.bridge-nf-call-iptables=1` and persist it in "
                "/etc/sysctl.d/99-kubernetes.conf",
            )
        ]
    return [ok("bridge-netfilter", "br_netfilter loaded, bridge-nf-call-iptables = 1")]


def check_disk_space(host: Host, cfg: Config) -> list[Finding]:
    """Free space of the filesystems holding the root (images) and state dirs."""
    return [_disk(host, label, Path(d)) for label, d in (("root", cfg.root), ("state", cfg.state))]


def _disk(host: Host, label: str, path: Path) -> Finding:
    existing = _nearest_existing(path)
    free = host.disk_free(existing)
    shown = f"{free / GIB:.1f} GiB free for the {label} dir {path}"
    if free >= WARN_FREE:
        return ok("disk-space", shown)
    level: Level = "error" if free < ERROR_FREE else "warning"
    return Finding(
        level,
        "disk-space",
        shown,
        why="image pulls and container writable layers fail when the disk fills; the "
        "kubelet starts evicting pods under its own thresholds first",
        fix=f"free space on the filesystem of {existing} (`podling rmi --prune` removes "
        "unused images) or move `root`/`state` in the podling config to a larger disk",
    )


def _nearest_existing(path: Path) -> Path:
    """`path`, or its closest existing parent (the dir may not be created yet)."""
    for p in (path, *path.parents):
        if p.exists():
            return p
    return Path(path.anchor or ".")
