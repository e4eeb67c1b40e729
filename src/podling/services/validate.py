"""Request validation shared by the pod and container services.

Every check raises InvalidArgument with the field's CRI name and what to do, so a bad
request is refused before anything is created.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Sequence

from cri_api.v1 import api_pb2 as pb

from podling.errors import InvalidArgument
from podling.runtimes.spec_resources import check_cpu
from podling.sandbox.cni import PortMapping

# RFC 1123 hostname label, as Kubernetes validates pod hostnames
_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
_PROTOCOLS = {pb.Protocol.TCP: "tcp", pb.Protocol.UDP: "udp", pb.Protocol.SCTP: "sctp"}


def require(value: str, field: str) -> str:
    if not value:
        raise InvalidArgument(f"{field} must not be empty")
    return value


def pod_config(config: pb.PodSandboxConfig) -> None:
    md = config.metadata
    require(md.name, "config.metadata.name")
    require(md.uid, "config.metadata.uid")
    require(md.namespace, "config.metadata.namespace")
    if config.hostname:
        hostname(config.hostname)
    if config.log_directory:
        contained_path(config.log_directory, "config.log_directory", absolute=True)
    memory_limit(config.linux.resources, "config.linux.resources")
    check_cpu(config.linux.resources)
    for i, pm in enumerate(config.port_mappings):
        port_mapping(pm, f"config.port_mappings[{i}]")
    parent = config.linux.cgroup_parent
    if parent and (not parent.startswith("/") or ".." in parent.split("/")):
        raise InvalidArgument(
            f"config.linux.cgroup_parent {parent!r} must be an absolute cgroup path without '..'"
        )
    if config.HasField("dns_config"):
        for s in config.dns_config.servers:
            try:
                ipaddress.ip_address(s)
            except ValueError as e:
                raise InvalidArgument(
                    f"config.dns_config.servers: {s!r} is not an IP address"
                ) from e


PATH_MAX = 4096  # Linux: no longer path can be executed or be a working directory
# An exec-sync timeout above this (about 68 years) overflows conmon's -T; 0 means none.
MAX_EXEC_TIMEOUT = 2**31 - 1


def command(cmd: Sequence[str], field: str) -> None:
    """A command line the runtime can exec: a non-empty program of at most PATH_MAX
    bytes, no NUL anywhere. (runc echoes an unrunnable program in its error; conmon
    deadlocks on an error larger than a pipe buffer, so the bound matters.)"""
    if not cmd or not cmd[0]:
        raise InvalidArgument(f"{field} must name the command to run")
    if any("\x00" in arg for arg in cmd):
        raise InvalidArgument(f"{field} contains a NUL byte")
    if len(cmd[0].encode()) > PATH_MAX:
        raise InvalidArgument(f"{field}[0] is longer than {PATH_MAX} bytes: no such program")


MIN_MEMORY = 6 << 20  # Docker's floor: below it runc's own init cannot start in the cgroup


def memory_limit(res: pb.LinuxContainerResources, field: str) -> None:
    """A memory limit is 0 (none) or at least MIN_MEMORY: a smaller one fails runc itself,
    a negative one the kernel."""
    if res.memory_limit_in_bytes < 0:
        raise InvalidArgument(
            f"{field}.memory_limit_in_bytes {res.memory_limit_in_bytes} is negative: "
            "use 0 for no limit"
        )
    if 0 < res.memory_limit_in_bytes < MIN_MEMORY:
        raise InvalidArgument(
            f"{field}.memory_limit_in_bytes {res.memory_limit_in_bytes} is below the minimum "
            f"of {MIN_MEMORY} bytes (6 MiB)"
        )


def contained_path(path: str, field: str, *, absolute: bool) -> None:
    """`path` stays below its root: absolute (or relative, as asked), no '..', no NUL.

    log_path is relative to the pod's log_directory and container paths are inside the
    container, so a '..' could only ever be used to leave them.
    """
    if "\x00" in path:
        raise InvalidArgument(f"{field} {path!r} contains a NUL byte")
    if path.startswith("/") != absolute:
        kind = "an absolute path" if absolute else "a path relative to the pod's log_directory"
        raise InvalidArgument(f"{field} {path!r} must be {kind}")
    if ".." in path.split("/"):
        raise InvalidArgument(f"{field} {path!r} must not contain '..': it would leave its root")


def hostname(name: str) -> None:
    if len(name) > 64 or not all(_LABEL.match(part) for part in name.split(".")):
        raise InvalidArgument(
            f"config.hostname {name!r} is not a valid hostname (lowercase letters, digits, "
            "'-' and '.', at most 64 characters)"
        )


def port_mapping(pm: pb.PortMapping, field: str) -> PortMapping:
    if not 0 < pm.container_port < 65536:
        raise InvalidArgument(f"{field}.container_port must be 1..65535, got {pm.container_port}")
    if not 0 <= pm.host_port < 65536:
        raise InvalidArgument(f"{field}.host_port must be 0..65535, got {pm.host_port}")
    if pm.protocol not in _PROTOCOLS:
        raise InvalidArgument(f"{field}.protocol {pm.protocol} is not TCP, UDP or SCTP")
    if pm.host_ip:
        try:
            ipaddress.ip_address(pm.host_ip)
        except ValueError as e:
            raise InvalidArgument(f"{field}.host_ip {pm.host_ip!r} is not an IP address") from e
    return PortMapping(pm.host_port, pm.container_port, _PROTOCOLS[pm.protocol], pm.host_ip)


def port_mappings(config: pb.PodSandboxConfig) -> list[PortMapping]:
    """The mappings that need the portmap plugin: those with a host port."""
    out = []
    for i, pm in enumerate(config.port_mappings):
        mapping = port_mapping(pm, f"config.port_mappings[{i}]")
        if mapping.host_port:
            out.append(mapping)
    return out


def container_config(config: pb.ContainerConfig) -> None:
    require(config.metadata.name, "config.metadata.name")
    require(config.image.image, "config.image.image")
    if config.tty and not config.stdin and config.stdin_once:
        raise InvalidArgument("config.stdin_once needs config.stdin")
    if config.log_path:
        contained_path(config.log_path, "config.log_path", absolute=False)
    if config.command:  # without it, args follow the image's entrypoint: any is fine
        command([*config.command, *config.args], "config.command")
    elif any("\x00" in arg for arg in config.args):
        raise InvalidArgument("config.args contains a NUL byte")
    if len(config.working_dir.encode()) > PATH_MAX or "\x00" in config.working_dir:
        raise InvalidArgument(
            f"config.working_dir must be a path of at most {PATH_MAX} bytes without NUL"
        )
    memory_limit(config.linux.resources, "config.linux.resources")
    for i, m in enumerate(config.mounts):
        if not m.container_path.startswith("/"):
            raise InvalidArgument(f"config.mounts[{i}].container_path must be absolute")
        contained_path(m.container_path, f"config.mounts[{i}].container_path", absolute=True)
        if not (m.HasField("image") and m.image.image):  # an image volume has no host path
            require(m.host_path, f"config.mounts[{i}].host_path")
    sc = config.linux.security_context
    for name, paths in (("masked_paths", sc.masked_paths), ("readonly_paths", sc.readonly_paths)):
        for i, path in enumerate(paths):
            # runc would refuse them only inside the new container, as an internal error
            contained_path(path, f"config.linux.security_context.{name}[{i}]", absolute=True)
