"""The files every container of a pod bind-mounts: /etc/hostname, /etc/resolv.conf,
/etc/hosts, written once per pod into its directory.

- hostname: the pod's hostname and a newline.
- resolv.conf: from the pod's DNS config (nameserver lines, one search line, one options
  line); a copy of the host's when the pod has no DNS config (or an empty one), as
  containerd does.
- hosts: the localhost entries plus "<pod ip> <hostname>" per pod IP; with host network,
  a copy of the host's hosts file, as the kubelet and containerd do.
"""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from podling.errors import Internal, InvalidArgument

# the kubelet's (and the API server's) limits for a pod's DNS search list
MAX_SEARCHES = 32
MAX_SEARCH_CHARS = 2048

_LOCALHOST = """\
127.0.0.1\tlocalhost
::1\tlocalhost ip6-localhost ip6-loopback
fe00::0\tip6-localnet
fe00::0\tip6-mcastprefix
fe00::1\tip6-allnodes
fe00::2\tip6-allrouters
"""


@dataclass(frozen=True)
class DnsSpec:
    """A pod's DNS config (CRI DNSConfig)."""

    servers: tuple[str, ...]
    searches: tuple[str, ...]
    options: tuple[str, ...]


@dataclass(frozen=True)
class PodFiles:
    hostname: Path
    resolv_conf: Path
    hosts: Path


def write_pod_files(
    pod_dir: Path,
    *,
    hostname: str,
    dns: DnsSpec | None,
    host_network: bool,
    pod_ips: Sequence[str],
    host_resolv: Path = Path("/etc/resolv.conf"),
    host_hosts: Path = Path("/etc/hosts"),
) -> PodFiles:
    """Write <pod_dir>/hostname, resolv.conf and hosts (mode 0644), replacing any earlier
    ones. Raises InvalidArgument for a bad hostname or DNS config (nothing is written
    then), Internal if a file cannot be written or the host's copy cannot be read."""
    _check_hostname(hostname)
    resolv = resolv_conf_text(dns, host_resolv)
    hosts = _read(host_hosts) if host_network else hosts_text(hostname, pod_ips)
    files = PodFiles(pod_dir / "hostname", pod_dir / "resolv.conf", pod_dir / "hosts")
    try:
        pod_dir.mkdir(parents=True, exist_ok=True)
        _write(files.hostname, hostname + "\n")
        _write(files.resolv_conf, resolv)
        _write(files.hosts, hosts)
    except OSError as e:
        raise Internal(f"writing the pod's files in {pod_dir}: {e}") from e
    return files


def _check_hostname(hostname: str) -> None:
    if not hostname or len(hostname) > 253 or any(c.isspace() or c == "\0" for c in hostname):
        raise InvalidArgument(
            f"hostname {hostname!r} is invalid: it needs 1 to 253 characters without spaces"
        )


def resolv_conf_text(dns: DnsSpec | None, host_resolv: Path) -> str:
    """resolv.conf for `dns`, or the host's when `dns` is None or empty."""
    if dns is None or not (dns.servers or dns.searches or dns.options):
        return _read(host_resolv) if host_resolv.exists() else ""
    check_dns(dns)
    lines = [f"nameserver {s}" for s in dns.servers]
    if dns.searches:
        lines.append("search " + " ".join(dns.searches))
    if dns.options:
        lines.append("options " + " ".join(dns.options))
    return "\n".join(lines) + "\n"


def check_dns(dns: DnsSpec) -> None:
    """InvalidArgument unless every nameserver is an IP address, the search list is within
    the kubelet's limits, and no entry holds whitespace (it would break the file's lines)."""
    for server in dns.servers:
        try:
            ipaddress.ip_address(server)
        except ValueError:
            raise InvalidArgument(
                f"DNS nameserver {server!r} is not an IP address: resolv.conf takes addresses only"
            ) from None
    if len(dns.searches) > MAX_SEARCHES:
        raise InvalidArgument(
            f"the pod's DNS config has {len(dns.searches)} search domains; at most "
            f"{MAX_SEARCHES} are allowed"
        )
    if len(" ".join(dns.searches)) > MAX_SEARCH_CHARS:
        raise InvalidArgument(
            f"the pod's DNS search list is longer than {MAX_SEARCH_CHARS} characters"
        )
    for kind, values in (("search domain", dns.searches), ("option", dns.options)):
        for value in values:
            if not value or any(c.isspace() or c == "\0" for c in value):
                raise InvalidArgument(f"DNS {kind} {value!r} is empty or holds whitespace")


def hosts_text(hostname: str, pod_ips: Sequence[str]) -> str:
    """The localhost entries, then one "<ip>\\t<hostname>" line per pod IP."""
    lines = [f"{ip}\t{hostname}\n" for ip in pod_ips]
    return "# Kubernetes-managed hosts file (podling).\n" + _LOCALHOST + "".join(lines)


def _read(path: Path) -> str:
    try:
        return path.read_text()
    except OSError as e:
        raise Internal(f"reading the host's {path} for the pod: {e}") from e


def _write(path: Path, text: str) -> None:
    """Atomically replace `path`: a container may already bind-mount the old one, which
    keeps its content (the bind holds the old inode)."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)
