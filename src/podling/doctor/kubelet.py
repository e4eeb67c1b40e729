"""Checks of how the kubelet is set up to talk to podling: cgroup driver, CRI endpoint.
(Its sandbox image: doctor/sandbox.py.)"""

from __future__ import annotations

from podling.config import Config
from podling.doctor.model import (
    Finding,
    Host,
    kubelet_config,
    kubelet_flag,
    ok,
    read_text,
    unix_path,
)

# What the kubelet uses when its config names no endpoint (v1.27+).
KUBELET_DEFAULT_ENDPOINT = "unix:///run/containerd/containerd.sock"


def check_cgroup_driver(host: Host, cfg: Config) -> list[Finding]:
    """podling's cgroup driver against the kubelet's `cgroupDriver` and against the host
    (systemd as PID 1 or not)."""
    ours = cfg.runtime.cgroup_driver
    return [_kubelet_driver(host, ours), _host_driver(host, ours, cfg.runtime.cgroup_parent)]


def _kubelet_driver(host: Host, ours: str) -> Finding:
    doc = kubelet_config(host)
    if doc is None:
        return ok("cgroup-driver", f"no kubelet config at {host.kubelet_config}: not compared")
    theirs = str(doc.get("cgroupDriver") or "cgroupfs")  # the kubelet's own default
    if theirs == ours:
        return ok("cgroup-driver", f"kubelet and podling both use the {ours} cgroup driver")
    return Finding(
        "error",
        "cgroup-driver",
        f"the kubelet uses the {theirs} cgroup driver, podling uses {ours}",
        why="the kubelet and the runtime must agree on who manages the pod cgroups: with "
        "different drivers pod cgroups land in different trees, resource accounting is "
        "wrong and pods fail to start",
        fix=f"set `cgroupDriver: {ours}` in {host.kubelet_config} and restart the kubelet",
    )


def _host_driver(host: Host, ours: str, parent: str) -> Finding:
    pid1 = (read_text(host.proc / "1" / "comm") or "").strip()
    if pid1 != "systemd":
        return ok("cgroup-driver", f"systemd is not PID 1 ({pid1 or 'unknown'}): {ours} fits")
    return Finding(
        "warning",
        "cgroup-driver",
        f"systemd is PID 1 but podling manages cgroups with {ours}",
        why="two managers of one cgroup tree: systemd does not know about the pod cgroups "
        "and may reorganise or limit them under memory pressure",
        fix=f"keep the kubelet on `cgroupDriver: {ours}` as well (podling only supports "
        f"{ours}) and keep podling's cgroup_parent ({parent}) out of systemd's slices",
    )


def check_runtime_endpoint(host: Host, cfg: Config) -> list[Finding]:
    """The kubelet's CRI endpoint (kubeadm-flags.env, then config file) against the
    socket podling listens on."""
    found = _kubelet_endpoint(host)
    if found is None:
        title = f"no kubelet config at {host.kubelet_config}: endpoint not compared"
        return [ok("runtime-endpoint", title)]
    endpoint, where = found
    if unix_path(endpoint) == unix_path(cfg.socket):
        return [ok("runtime-endpoint", f"the kubelet talks to podling at {endpoint}")]
    return [
        Finding(
            "error",
            "runtime-endpoint",
            f"the kubelet's runtime endpoint {endpoint} ({where}) is not podling's "
            f"socket {cfg.socket}",
            why="the kubelet would talk to another runtime (or to nothing): no pod runs "
            "under podling and the node stays NotReady",
            fix=_endpoint_fix(host, where, f"unix://{cfg.socket}"),
        )
    ]


def _endpoint_fix(host: Host, where: str, ours: str) -> str:
    if where.endswith("kubeadm-flags.env"):
        return f"set --container-runtime-endpoint={ours} in {where}, then restart the kubelet"
    return (
        f"set `containerRuntimeEndpoint: {ours}` in {host.kubelet_config}, then restart the kubelet"
    )


def _kubelet_endpoint(host: Host) -> tuple[str, str] | None:
    """(endpoint, where it was found); None when there is no kubelet config at all.
    The command-line flag wins over the config file, as in the kubelet."""
    flag = kubelet_flag(host, "container-runtime-endpoint")
    if flag is not None:
        return flag[0], str(flag[1])
    doc = kubelet_config(host)
    if doc is None:
        return None
    value = doc.get("containerRuntimeEndpoint")
    if isinstance(value, str) and value:
        return value, str(host.kubelet_config)
    return KUBELET_DEFAULT_ENDPOINT, f"kubelet default, none set in {host.kubelet_config}"
