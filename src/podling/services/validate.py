"""Request validation shared by the pod and container services.

Every check raises InvalidArgument with the field's CRI name and what to do, so a bad
request is refused before anything is created.
"""

from __future__ import annotations

import ipaddress
import re

from cri_api.v1 import api_pb2 as pb

from podling.errors import InvalidArgument
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
    for i, m in enumerate(config.mounts):
        if not m.container_path.startswith("/"):
            raise InvalidArgument(f"config.mounts[{i}].container_path must be absolute")
        if not (m.HasField("image") and m.image.image):  # an image volume has no host path
            require(m.host_path, f"config.mounts[{i}].host_path")
