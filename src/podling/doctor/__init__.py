"""`podling doctor`: checks of the node for the classic pitfalls of moving it to podling.

Each check is a function `(Host, Config) -> list[Finding]`; `run_checks` runs them all
and turns a check that crashes into an error finding, so one broken file never hides
the other results. Exit status policy (for the CLI): any "error" finding fails.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

from podling.config import Config
from podling.doctor.binaries import check_cni, check_runtime_binaries
from podling.doctor.containerd import check_containerd_config
from podling.doctor.docker import check_docker_images
from podling.doctor.kernel import (
    check_bridge_netfilter,
    check_cgroup_controllers,
    check_disk_space,
    check_ip_forward,
    check_overlayfs,
)
from podling.doctor.kubelet import check_cgroup_driver, check_runtime_endpoint
from podling.doctor.manifests import check_docker_socket, check_runtime_classes
from podling.doctor.model import LEVELS, Finding, Host, Level
from podling.doctor.sandbox import check_sandbox_image
from podling.errors import PodlingError
from podling.oslib import cgroups

__all__ = [
    "CHECKS",
    "LEVELS",
    "STARTUP_CHECKS",
    "Finding",
    "Host",
    "Level",
    "has_errors",
    "run_checks",
    "system_host",
]

Check = Callable[[Host, Config], list[Finding]]

# name → check, in the order they are reported
CHECKS: dict[str, Check] = {
    "cgroup-driver": check_cgroup_driver,
    "runtime-endpoint": check_runtime_endpoint,
    "docker-socket": check_docker_socket,
    "sandbox-image": check_sandbox_image,
    "runtime-class": check_runtime_classes,
    "runtime-binaries": check_runtime_binaries,
    "overlayfs": check_overlayfs,
    "cgroup-controllers": check_cgroup_controllers,
    "ip-forward": check_ip_forward,
    "bridge-netfilter": check_bridge_netfilter,
    "cni": check_cni,
    "disk-space": check_disk_space,
    "docker-images": check_docker_images,
    "containerd-config": check_containerd_config,
}


# The checks cheap enough for every daemon start: no round trip to the daemon, no scan of
# manifests or of Docker's data root (the kubelet's config file is one small read), no
# registry request (sandbox-image's probe).
STARTUP_CHECKS = (
    "cgroup-driver",
    "runtime-binaries",
    "overlayfs",
    "cgroup-controllers",
    "ip-forward",
    "bridge-netfilter",
    "cni",
    "disk-space",
)


def system_host(
    kubelet_config: Path = Path("/var/lib/kubelet/config.yaml"),
    manifests: Path = Path("/etc/kubernetes/manifests"),
    docker_root: Path = Path("/var/lib/docker"),
    podling_images: Callable[[], list[str] | None] = lambda: None,
    containerd_config: Path = Path("/etc/containerd/config.toml"),
    probe_image: Callable[[str], PodlingError | None] | None = None,
) -> Host:
    """The real node, as the checks see it. Without `probe_image` no check uses the network
    (doctor.probe.registry_probe(cfg) is the real one)."""
    return Host(
        proc=Path("/proc"),
        cgroup_root=cgroups.CGROUP_ROOT,
        kubelet_config=kubelet_config,
        manifests=manifests,
        docker_root=docker_root,
        which=shutil.which,
        disk_free=lambda p: shutil.disk_usage(p).free,
        podling_images=podling_images,
        containerd_config=containerd_config,
        probe_image=probe_image,
    )


def run_checks(host: Host, cfg: Config, only: tuple[str, ...] = ()) -> list[Finding]:
    """Every check's findings (or those of `only`), in CHECKS order."""
    findings: list[Finding] = []
    for name, check in CHECKS.items():
        if only and name not in only:
            continue
        try:
            findings.extend(check(host, cfg))
        except Exception as e:  # a doctor reports a crashed check; it never stops at one
            findings.append(
                Finding(
                    "error",
                    name,
                    f"the check itself failed: {type(e).__name__}: {e}",
                    why="this part of the node could not be checked",
                    fix="report this as a podling bug, with the message above",
                )
            )
    return findings


def has_errors(findings: list[Finding]) -> bool:
    return any(f.level == "error" for f in findings)
