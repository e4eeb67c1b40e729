"""Checks that the programs podling runs are installed: conmon, the OCI runtimes of the
configured handlers, the infra binary, and the CNI plugins of the pod network."""

from __future__ import annotations

from pathlib import Path

from podling.config import Config
from podling.doctor.manifests import offered_handlers
from podling.doctor.model import Finding, Host, ok
from podling.errors import PodlingError
from podling.sandbox.cni_config import (
    DefaultNetwork,
    default_config_list,
    find_config_file,
    find_plugin,
    load_config_list,
    plugin_types,
)


def check_runtime_binaries(host: Host, cfg: Config) -> list[Finding]:
    """conmon, then each offered handler's binary (the default first), then the infra
    binary."""
    findings = [_conmon(host, cfg)]
    offered = offered_handlers(cfg, host)
    for name in sorted(offered, key=lambda n: (n != cfg.default_runtime, n)):
        binary = offered[name].binary or name
        role = "default runtime" if name == cfg.default_runtime else "runtime"
        if host.which(binary):
            findings.append(ok("runtime-binaries", f"{role} {name}: {host.which(binary)}"))
            continue
        findings.append(
            Finding(
                "error",
                "runtime-binaries",
                f"the binary {binary!r} of the {role} handler {name} is not installed",
                why=f"pods that use handler {name}"
                + (" (every pod that names no RuntimeClass)" if role != "runtime" else "")
                + " fail to start, and the node reports RuntimeReady=false",
                fix=f"install {binary}, or point [runtimes.{name}] binary at where it is",
            )
        )
    findings.append(_infra(cfg))
    return findings


def _conmon(host: Host, cfg: Config) -> Finding:
    found = host.which(cfg.runtime.conmon)
    if found:
        return ok("runtime-binaries", f"conmon: {found}")
    return Finding(
        "error",
        "runtime-binaries",
        f"conmon ({cfg.runtime.conmon!r}) is not installed",
        why="podling runs every container under conmon: no container can start",
        fix="install conmon (`apt-get install conmon`) or set [runtime] conmon to its path",
    )


def _infra(cfg: Config) -> Finding:
    infra = Path(cfg.runtime.infra_binary)
    if infra.is_file():
        return ok("runtime-binaries", f"infra binary: {infra}")
    return Finding(
        "warning",
        "runtime-binaries",
        f"the infra binary {infra} is missing",
        why="pods that share one PID namespace (shareProcessNamespace) need it as PID 1",
        fix="install catatonit (`apt-get install catatonit`) or set [runtime] infra_binary",
    )


def check_cni(host: Host, cfg: Config) -> list[Finding]:
    """A usable CNI config (or podling's default, written at first use) and its plugins."""
    net = cfg.network
    conf_dir = Path(net.cni_conf_dir)
    path = find_config_file(conf_dir)
    if path is None:
        default = DefaultNetwork(bridge=net.default_bridge, subnet=net.default_subnet)
        config = default_config_list(default, Path("ipam"))
        source = f"podling's default network (written to {conf_dir} at the first pod)"
    else:
        try:
            config = load_config_list(path)
        except PodlingError as e:
            return [Finding("error", "cni", e.message, why=_NO_NETWORK, fix=f"fix {path}")]
        source = f"CNI network {config['name']!r} from {path}"
    bin_dirs = [Path(d) for d in net.cni_bin_dirs]
    types = dict.fromkeys(plugin_types(config))
    missing = [t for t in types if find_plugin(t, bin_dirs) is None]
    if not missing:
        return [ok("cni", f"{source}: all plugins installed")]
    dirs = ", ".join(net.cni_bin_dirs)
    return [
        Finding(
            "error",
            "cni",
            f"{source}: plugin binaries missing from {dirs}: {', '.join(missing)}",
            why=_NO_NETWORK,
            fix="install the CNI plugins (`apt-get install containernetworking-plugins`) "
            "or add their folder to [network] cni_bin_dirs",
        )
    ]


_NO_NETWORK = (
    "pods cannot get a network: RunPodSandbox fails and the node reports NetworkReady=false"
)
